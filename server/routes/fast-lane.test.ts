// parseHead, the fast lane's gate: what it takes it must read exactly as node:http would, and everything else
// (left to node:http) must be refused; and streamedBody, how the lane writes a stream it does not hold. The
// lane over real sockets is tested in test/api/fast-lane.test.ts.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { installFastLane, parseHead, streamedBody } from "./fast-lane.ts";

const head = (text: string) => {
  const buffer = Buffer.from(text, "latin1");
  const end = buffer.indexOf("\r\n\r\n");
  assert.ok(end >= 0, "test heads end in CRLF CRLF");
  return parseHead(buffer, end);
};

describe("parseHead", () => {
  it("takes a plain GET or HEAD and reads what the lane needs", () => {
    assert.deepEqual(
      head(
        "GET /main/0123456789abcdfghijklmnpqrsvwxy.narinfo HTTP/1.1\r\nHost: cache:8080\r\nUser-Agent: curl/8.5 Nix/2.8.0\r\n" +
          "Authorization: Basic bml4Onh5eg==\r\nX-Request-Id: abc-1\r\nAccept: */*\r\n\r\n",
      ),
      {
        method: "GET",
        target: "/main/0123456789abcdfghijklmnpqrsvwxy.narinfo",
        authorization: "Basic bml4Onh5eg==",
        requestId: "abc-1",
        userAgent: "curl/8.5 Nix/2.8.0",
        close: false,
        range: false,
      },
    );
    // A Range header is noted (the lane passes such NAR requests on), never read.
    assert.equal(
      head("GET /main/nar/x.nar.zst HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")?.range,
      true,
    );
    const h = head("HEAD /main/nix-cache-info HTTP/1.1\r\nhost:x\r\nCONNECTION:  keep-alive \r\n\r\n");
    assert.equal(h?.method, "HEAD");
    assert.equal(h?.close, false);
    assert.equal(head("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")?.close, true);
    assert.equal(head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")?.close, true);
    assert.equal(head("GET / HTTP/1.1\r\nHost: x\r\nX-Tab:\tvalue\t\r\n\r\n")?.target, "/");
  });

  it("refuses what could carry a body, change the protocol or be read two ways", () => {
    for (const extra of [
      "Content-Length: 0",
      "content-length: 5",
      "Transfer-Encoding: chunked",
      "TRANSFER-ENCODING: identity",
      "Expect: 100-continue",
      "Upgrade: websocket",
      "Connection: upgrade",
      "Connection: keep-alive, Upgrade",
      "Host: second",
      "Authorization: Bearer a\r\nAuthorization: Bearer b",
      "X-Request-Id: a\r\nX-Request-Id: b",
    ]) {
      assert.equal(
        head(`GET /main/nix-cache-info HTTP/1.1\r\nHost: x\r\n${extra}\r\n\r\n`),
        undefined,
        extra,
      );
    }
  });

  it("refuses syntax node:http would reject or read otherwise", () => {
    for (const text of [
      "POST / HTTP/1.1\r\nHost: x\r\n\r\n",
      "get / HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
      "GET / HTTP/2\r\nHost: x\r\n\r\n",
      "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
      "GET http://x/main/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
      'GET /a"b HTTP/1.1\r\nHost: x\r\n\r\n',
      "GET / HTTP/1.1\r\n\r\n", // no Host
      "GET / HTTP/1.1\r\nHost : x\r\n\r\n", // space before the colon
      "GET / HTTP/1.1\r\n Host: x\r\n\r\n", // obs-fold / leading space
      "GET / HTTP/1.1\r\nHost: x\r\n\tfolded: y\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\nX-B: c\r\n\r\n", // bare LF
      "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rX-B: c\r\n\r\n", // bare CR
      "GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\u00e9\r\n\r\n", // not ASCII
      "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n", // NUL
      "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\u007fb\r\n\r\n", // DEL
    ]) {
      assert.equal(head(text), undefined, JSON.stringify(text));
    }
  });
});

describe("installFastLane", () => {
  it("answers in order a client that keeps sending while a slow answer is awaited", async () => {
    const server = http.createServer((_req, res) => res.end("slow lane\n"));
    let calls = 0;
    installFastLane(server, {
      draining: () => false,
      // The first answer takes 300 ms (a database that hangs a while); the others come at once.
      answer: (r) => {
        const answer = {
          status: 200 as const,
          contentType: "text/plain",
          body: `${r.target}\n`,
          requestId: String(calls),
        };
        return calls++ === 0 ? new Promise((resolve) => setTimeout(() => resolve(answer), 300)) : answer;
      },
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    const n = 5000; // ~250 KiB of pipelined requests, past what the lane holds while it waits
    const socket = net.connect({ port, host: "127.0.0.1" });
    let received = "";
    // Every response body ends in a newline: "/rN\n" from the lane, "slow lane\n" from node:http.
    const bodies = () => [...received.matchAll(/\r\n\r\n([^\n]*)\n/g)].map((m) => m[1]!);
    const done = new Promise<void>((resolve) => {
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
        if (bodies().length >= n) resolve();
      });
    });
    let requests = "";
    for (let i = 0; i < n; i++) requests += `GET /r${i} HTTP/1.1\r\nHost: x\r\n\r\n`;
    socket.write(requests);
    await done;
    socket.destroy();
    server.close();
    const all = bodies();
    assert.equal(all.length, n, "one response per request");
    // The lane answers in order until a read ends mid-request; from there node:http answers the rest.
    const fromLane = all.indexOf("slow lane");
    const lane = fromLane < 0 ? all : all.slice(0, fromLane);
    assert.ok(lane.length > 1, "the lane answered past the slow answer");
    assert.ok(
      lane.every((b, i) => b === `/r${i}`),
      "the lane's answers come in request order",
    );
    assert.ok(
      all.slice(lane.length).every((b) => b === "slow lane"),
      "and node:http answers every request after the handoff",
    );
  });
});

describe("a request body handed over to node:http", () => {
  /**
   * A PUT whose first read carries its head and more body than node:http's request buffers take, to a
   * handler that reads nothing for a while: what the server holds must stay within stream buffers (the
   * client waits on the kernel's), however fast the client sends.
   */
  async function heldWhileUnread(withLane: boolean, afterSlowAnswer = false): Promise<number> {
    let held = 0;
    let request: http.IncomingMessage | undefined;
    const server = http.createServer((req, res) => {
      request = req;
      req.on("end", () => res.end("ok\n"));
    });
    if (withLane)
      installFastLane(server, {
        draining: () => false,
        // With afterSlowAnswer, a GET first, answered in 300 ms: the PUT behind it waits in the lane meanwhile.
        answer: () =>
          afterSlowAnswer
            ? new Promise((resolve) =>
                setTimeout(
                  () => resolve({ status: 200, contentType: "text/plain", body: "slow\n", requestId: "1" }),
                  300,
                ),
              )
            : undefined,
      });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    const total = 256 * 1024 * 1024;
    const socket = net.connect({ port, host: "127.0.0.1" });
    await new Promise((resolve) => socket.once("connect", resolve));
    const chunk = Buffer.alloc(1024 * 1024, 1);
    const head =
      (afterSlowAnswer ? "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" : "") +
      `PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${total}\r\n\r\n`;
    // Head and 60 KiB of body in one write: the server's first read takes both.
    socket.write(Buffer.concat([Buffer.from(head, "latin1"), chunk.subarray(0, 60 * 1024)]));
    let sent = 60 * 1024;
    const sampler = setInterval(() => {
      held = Math.max(held, request?.readableLength ?? 0);
    }, 5);
    // The client sends as fast as the server takes it, for one second, while nobody reads the body.
    const until = Date.now() + 1000;
    while (Date.now() < until && sent < total) {
      const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
      sent += piece.length;
      if (!socket.write(piece))
        await Promise.race([
          new Promise((resolve) => socket.once("drain", resolve)),
          new Promise((resolve) => setTimeout(resolve, until - Date.now())),
        ]);
    }
    clearInterval(sampler);
    socket.destroy();
    server.closeAllConnections();
    server.close();
    return held;
  }

  for (const [name, withLane, afterSlowAnswer] of [
    ["node:http alone", false, false],
    ["through the lane", true, false],
    ["through the lane, behind a slow answer", true, true],
  ] as const) {
    it(`stays within stream buffers while nobody reads it (${name})`, async () => {
      const held = await heldWhileUnread(withLane, afterSlowAnswer);
      assert.ok(
        held < 4 * 1024 * 1024,
        `the server held ${(held / 2 ** 20).toFixed(1)} MiB of an unread body`,
      );
    });
  }
});

describe("streamedBody", () => {
  /** A connected pair of sockets on 127.0.0.1: the lane's side and the client's. */
  const socketPair = async (): Promise<{ lane: net.Socket; client: net.Socket; close(): void }> => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const lane = await accepted;
    return {
      lane,
      client,
      close: () => {
        lane.destroy();
        client.destroy();
        server.close();
      },
    };
  };
  const received = (socket: net.Socket, bytes: number) =>
    new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      let got = 0;
      socket.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        got += chunk.length;
        if (got >= bytes) resolve(Buffer.concat(chunks));
      });
    });

  it("writes every byte of a stream to the socket and leaves it open", async () => {
    const pair = await socketPair();
    try {
      const bytes = Buffer.alloc(3 * 1024 * 1024, 7);
      const arrived = received(pair.client, bytes.length);
      const chunks = Array.from({ length: 48 }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536));
      await streamedBody(Readable.from(chunks), bytes.length).writeTo(pair.lane);
      assert.ok((await arrived).equals(bytes));
      assert.equal(pair.lane.destroyed, false, "open for the next response");
    } finally {
      pair.close();
    }
  });

  it("rejects a stream shorter than its size, and a connection closed first (the stream let go)", async () => {
    const pair = await socketPair();
    try {
      await assert.rejects(
        streamedBody(Readable.from([Buffer.alloc(10)]), 11).writeTo(pair.lane),
        /had 10 bytes, not 11/,
      );
      // A stream that never ends: the client hangs up.
      const endless = new Readable({ read() {} });
      endless.push(Buffer.alloc(100));
      const writing = streamedBody(endless, 1000).writeTo(pair.lane);
      pair.client.destroy();
      pair.lane.destroy();
      await assert.rejects(writing, /closed before the body was sent/);
      assert.equal(endless.destroyed, true);
    } finally {
      pair.close();
    }
  });
});
