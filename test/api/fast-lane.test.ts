// The fast lane (server/routes/fast-lane.ts) on a real server over real sockets: narinfo and nix-cache-info
// reads answered from the socket exactly as the full server answers them, and every other request — bodies,
// odd syntax, partial heads, pipelined writes, private caches — handed to node:http with nothing lost.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { formatHash } from "../../nix/index.ts";
import { parseConfig } from "../../server/config.ts";
import { createLifecycle } from "../../server/lifecycle.ts";
import type { FastRequest } from "../../server/routes/fast-lane.ts";
import { nixFastReads } from "../../server/routes/nix.ts";
import { sendfileCounts } from "../../server/sendfile.ts";
import { type RunningServer, startServer } from "../../server/start.ts";
import { freshS3 } from "../support/harness.ts";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";
import { testTmp } from "../support/services.ts";

interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
  /** The body's bytes as received. */
  bytes: Buffer;
}

/** One client connection that writes raw bytes and reads HTTP/1.1 responses (Content-Length bodies). */
class RawClient {
  readonly socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  ended = false;
  constructor(port: number) {
    this.socket = net.connect({ host: "127.0.0.1", port, noDelay: true });
    this.socket.on("data", (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    this.socket.on("end", () => {
      this.ended = true;
      this.#wake?.();
    });
    this.socket.on("error", () => {});
  }
  write(data: string | Buffer): void {
    this.socket.write(data);
  }
  /** The next response; `head` when it answers a HEAD (no body follows whatever Content-Length says). */
  async read(opts: { head?: boolean } = {}): Promise<RawResponse> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const end = this.#buffer.indexOf("\r\n\r\n");
      if (end >= 0) {
        const lines = this.#buffer.subarray(0, end).toString("latin1").split("\r\n");
        const headers = new Map<string, string>();
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(":");
          headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
        }
        if (!opts.head && headers.get("transfer-encoding") === "chunked") {
          const body = this.#chunked(end + 4);
          if (body !== undefined)
            return { status: Number(lines[0]!.split(" ")[1]), headers, body, bytes: Buffer.from(body) };
        }
        const length = opts.head ? 0 : Number(headers.get("content-length") ?? 0);
        if (headers.get("transfer-encoding") !== "chunked" && this.#buffer.length >= end + 4 + length) {
          const bytes = Buffer.from(this.#buffer.subarray(end + 4, end + 4 + length));
          this.#buffer = this.#buffer.subarray(end + 4 + length);
          return { status: Number(lines[0]!.split(" ")[1]), headers, body: bytes.toString("utf8"), bytes };
        }
      }
      if (this.ended)
        throw new Error(`connection ended; unparsed: ${JSON.stringify(this.#buffer.toString())}`);
      if (Date.now() > deadline)
        throw new Error(`no response; have ${JSON.stringify(this.#buffer.toString())}`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 50);
      });
    }
  }
  /** A complete chunked body starting at `at` (consumed with its head), or undefined while incomplete. */
  #chunked(at: number): string | undefined {
    const parts: Buffer[] = [];
    let i = at;
    for (;;) {
      const lineEnd = this.#buffer.indexOf("\r\n", i);
      if (lineEnd < 0) return undefined;
      const size = Number.parseInt(this.#buffer.subarray(i, lineEnd).toString("latin1"), 16);
      if (this.#buffer.length < lineEnd + 2 + size + 2) return undefined;
      if (size === 0) {
        this.#buffer = this.#buffer.subarray(lineEnd + 4);
        return Buffer.concat(parts).toString("utf8");
      }
      parts.push(this.#buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
      i = lineEnd + 2 + size + 2;
    }
  }
  async waitEnded(ms = 2000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await sleep(10);
    return this.ended;
  }
  close(): void {
    this.socket.destroy();
  }
}

/** The handoff counters of a server, by reason, from its own /metrics text. */
function handoffsOf(server: RunningServer): Record<string, number> {
  const text = server.ctx.metrics!.registry.render();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^nixstash_fast_lane_handoffs_total\{reason="(\w+)"\} (\d+)$/gm))
    out[m[1]!] = Number(m[2]);
  return out;
}
const total = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);

const get = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: nixstash\r\n${extra}\r\n`;

describe("fast lane (narinfo and nix-cache-info straight from the socket)", () => {
  let server: RunningServer;
  let port = 0;
  let admin = "";
  let pullToken = "";
  const storePath = fakeStorePath("fast-lane-1.0");
  const nar = narOf({ dir: { bin: { dir: { hello: { executable: "#!/bin/sh\necho hi\n" } } } } });
  const narinfoPath = `/main/${hashOf(storePath)}.narinfo`;
  const privatePath = `/secret/${hashOf(storePath)}.narinfo`;
  const missingPath = `/main/${hashOf(fakeStorePath("absent"))}.narinfo`;

  const handoffs = () => handoffsOf(server);
  const api = async (path: string, init: RequestInit & { token?: string } = {}) => {
    const headers = new Headers(init.headers);
    if (init.token) headers.set("authorization", `Bearer ${init.token}`);
    return fetch(`${server.url}${path}`, { ...init, headers });
  };
  /** Pushes one path through the native API (201 stored; 200 when its NAR was stored for another cache). */
  const push = (cache: string, path: string, bytes: Buffer) =>
    api(`/api/v1/caches/${cache}/paths/${hashOf(path)}`, {
      method: "PUT",
      token: admin,
      headers: { "x-nixstash-path-info": JSON.stringify(infoFor(path, bytes)) },
      body: bytes,
    });
  /** The same request answered by the Hono app in-process: what the full server says. */
  const slowLane = (path: string, init: RequestInit = {}) =>
    import("../../server/app.ts").then(({ createApp }) => createApp(server.ctx).request(path, init));

  before(async () => {
    const dir = mkdtempSync(join(testTmp(), "fast-lane-"));
    server = await startServer(
      parseConfig({ NIXSTASH_DATA_DIR: dir, NIXSTASH_LISTEN: "127.0.0.1:0", NIXSTASH_LOG_LEVEL: "silent" }),
    );
    port = Number(new URL(server.url).port);
    admin = server.bootstrap.adminToken!;
    const pushed = async (cache: string) => {
      const res = await push(cache, storePath, nar);
      // 201 stored; 200 when the NAR was already stored for another cache (deduplicated).
      assert.ok(res.status === 201 || res.status === 200, await res.text());
    };
    await pushed("main");
    const created = await api("/api/v1/caches", {
      method: "POST",
      token: admin,
      body: JSON.stringify({ name: "secret", public: false }),
    });
    assert.equal(created.status, 201, await created.text());
    await pushed("secret");
    const token = await api("/api/v1/tokens", {
      method: "POST",
      token: admin,
      body: JSON.stringify({ name: "reader", caches: ["secret"], permissions: ["pull"] }),
    });
    assert.equal(token.status, 201);
    pullToken = ((await token.json()) as { token: string }).token;
  });
  after(async () => {
    await server?.close();
  });

  it("answers narinfo GET and HEAD and nix-cache-info itself, as the full server would", async () => {
    const before = handoffs();
    const c = new RawClient(port);
    try {
      c.write(get(narinfoPath));
      const fast = await c.read();
      const slow = await slowLane(narinfoPath);
      assert.equal(fast.status, 200);
      assert.equal(fast.body, await slow.text());
      assert.match(fast.body, new RegExp(`^StorePath: ${storePath}\n`));
      assert.equal(fast.headers.get("content-type"), slow.headers.get("content-type"));
      assert.equal(fast.headers.get("content-length"), String(Buffer.byteLength(fast.body)));
      assert.match(fast.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
      assert.match(fast.headers.get("date") ?? "", /GMT$/);
      assert.equal(fast.headers.get("connection"), "keep-alive");

      c.write(`HEAD ${narinfoPath} HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-42\r\n\r\n`);
      const head = await c.read({ head: true });
      assert.equal(head.status, 200);
      assert.equal(head.body, "");
      assert.equal(head.headers.get("content-length"), fast.headers.get("content-length"));
      assert.equal(head.headers.get("x-request-id"), "trace-42");

      c.write(get("/main/nix-cache-info"));
      const info = await c.read();
      assert.equal(info.status, 200);
      assert.equal(info.headers.get("content-type"), "text/x-nix-cache-info");
      assert.equal(info.body, await (await slowLane("/main/nix-cache-info")).text());

      c.write(get(missingPath));
      const missing = await c.read();
      assert.equal(missing.status, 404);
      assert.equal(missing.body, "not found\n");
      assert.equal(
        missing.headers.get("content-type"),
        (await slowLane(missingPath)).headers.get("content-type"),
      );
      // All four on the lane: the connection was never handed over.
      assert.equal(total(handoffs()), total(before));
    } finally {
      c.close();
    }
  });

  it("meters and records lane answers like any other request", async () => {
    const metric = (name: string, labels: string) => {
      const line = server.ctx
        .metrics!.registry.render()
        .split("\n")
        .find((l) => l.startsWith(`${name}{${labels}} `));
      return Number(line?.split(" ")[1] ?? 0);
    };
    const hits = () => metric("nixstash_narinfo_requests_total", 'cache="main",result="hit"');
    const misses = () => metric("nixstash_narinfo_requests_total", 'cache="main",result="miss"');
    const requests = () =>
      metric("nixstash_http_requests_total", 'method="GET",route="/:cache/<hash>.narinfo",status="200"');
    const [h0, m0, r0] = [hits(), misses(), requests()];
    const t0 = Date.now();
    const c = new RawClient(port);
    try {
      c.write(get(narinfoPath) + get(narinfoPath) + get(missingPath));
      for (const status of [200, 200, 404]) assert.equal((await c.read()).status, status);
    } finally {
      c.close();
    }
    assert.equal(hits() - h0, 2);
    assert.equal(misses() - m0, 1);
    assert.equal(requests() - r0, 2);
    // The read counts for retention: the access log carries it to the path's last access.
    assert.ok(server.ctx.access, "the server records reads");
    await server.ctx.access.flush();
    const cache = await server.ctx.repo.cacheByName("main");
    const detail = await server.ctx.repo.pathDetail(cache!.id, hashOf(storePath));
    assert.ok((detail?.lastAccessedAt ?? 0) >= t0, `last access ${detail?.lastAccessedAt} before ${t0}`);
  });

  it("hands a keep-alive connection to the full server at its first other request, losing nothing", async () => {
    const before = handoffs();
    const c = new RawClient(port);
    try {
      c.write(get(narinfoPath));
      assert.equal((await c.read()).status, 200);
      // A PUT with a body, sent in two writes: node:http takes the connection from here on.
      const body = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
      c.write(
        `PUT /main/nix-cache-info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${admin}\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
      );
      await sleep(30);
      c.write(body.slice(10));
      assert.equal((await c.read()).status, 200);
      c.write(get(narinfoPath));
      const after = await c.read();
      assert.equal(after.status, 200);
      assert.match(after.body, /^StorePath: /);
      assert.equal((handoffs().declined ?? 0) - (before.declined ?? 0), 0);
      assert.equal(total(handoffs()) - total(before), 1);
      assert.equal((handoffs().not_fast ?? 0) - (before.not_fast ?? 0), 1);
    } finally {
      c.close();
    }
  });

  it("answers pipelined requests in order, across the handoff", async () => {
    const c = new RawClient(port);
    try {
      c.write(
        get(narinfoPath) +
          get("/main/nix-cache-info") +
          get("/healthz") +
          get(missingPath) +
          `HEAD ${narinfoPath} HTTP/1.1\r\nHost: x\r\n\r\n` +
          get(narinfoPath),
      );
      const statuses: number[] = [];
      const bodies: string[] = [];
      for (const head of [false, false, false, false, true, false]) {
        const r = await c.read({ head });
        statuses.push(r.status);
        bodies.push(r.body);
      }
      assert.deepEqual(statuses, [200, 200, 200, 404, 200, 200]);
      assert.equal(bodies[2], "ok\n");
      assert.equal(bodies[5], bodies[0]);
    } finally {
      c.close();
    }
  });

  it("hands over a head that arrives in pieces", async () => {
    const before = handoffs();
    const c = new RawClient(port);
    try {
      const request = get(narinfoPath, "User-Agent: slow\r\n");
      c.write(request.slice(0, 20));
      // The rest goes once the lane has seen the first piece alone (a fixed pause was not enough on a busy
      // machine: both pieces arrived together and the lane answered a whole head).
      const deadline = Date.now() + 2000;
      while ((handoffs().partial ?? 0) === (before.partial ?? 0) && Date.now() < deadline) await sleep(5);
      c.write(request.slice(20));
      const r = await c.read();
      assert.equal(r.status, 200);
      assert.match(r.body, /^StorePath: /);
      assert.equal((handoffs().partial ?? 0) - (before.partial ?? 0), 1);
    } finally {
      c.close();
    }
  });

  it("leaves every request it does not fully understand to node:http", async () => {
    const cases: { request: string; status: number }[] = [
      // Bodies, or the promise of one: never answered from the lane, so nothing can be smuggled past it.
      { request: `GET ${narinfoPath} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`, status: 200 },
      {
        request: `GET ${narinfoPath} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
        status: 200,
      },
      {
        request: `GET ${narinfoPath} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n`,
        status: 400,
      },
      // Syntax node:http refuses: bare LF, no Host, a space before the colon, non-ASCII.
      { request: `GET ${narinfoPath} HTTP/1.1\nHost: x\n\n`, status: 400 },
      { request: `GET ${narinfoPath} HTTP/1.1\r\n\r\n`, status: 400 },
      { request: `GET ${narinfoPath} HTTP/1.1\r\nHost : x\r\n\r\n`, status: 400 },
      { request: `GET ${narinfoPath} HTTP/1.1\r\nHost: x\r\nX-Name: caf\u00e9\r\n\r\n`, status: 200 },
      // Other targets and methods: the Hono app's answers.
      { request: get(`/main/${hashOf(storePath)}.narinfo?x=1`), status: 200 },
      { request: get(`/main/${hashOf(storePath)}.ls`), status: 200 },
      { request: `POST ${narinfoPath} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`, status: 404 },
      { request: get("/nope/nix-cache-info"), status: 404 },
    ];
    for (const { request, status } of cases) {
      const c = new RawClient(port);
      try {
        c.write(Buffer.from(request, request.includes("\u00e9") ? "utf8" : "latin1"));
        const r = await c.read().catch((error: Error) => {
          throw new Error(`${JSON.stringify(request)}: ${error.message}`);
        });
        assert.equal(r.status, status, `${JSON.stringify(request)} → ${r.status} ${r.body}`);
        if (status === 200 && request.includes(".narinfo")) assert.match(r.body, /^StorePath: /);
      } finally {
        c.close();
      }
    }
    // HTTP/1.0: node:http answers and closes, as it does for 1.0 clients without keep-alive.
    const c = new RawClient(port);
    try {
      c.write(`GET ${narinfoPath} HTTP/1.0\r\nHost: x\r\n\r\n`);
      const r = await c.read();
      assert.equal(r.status, 200);
      assert.ok(await c.waitEnded(), "an HTTP/1.0 connection is closed after its response");
    } finally {
      c.close();
    }
  });

  it("serves a private cache to its token and refuses everyone else with the full server's messages", async () => {
    const basic = `Basic ${Buffer.from(`nix:${pullToken}`).toString("base64")}`;
    const before = handoffs();
    const c = new RawClient(port);
    try {
      c.write(
        get(privatePath, `Authorization: ${basic}\r\n`) +
          get("/secret/nix-cache-info", `Authorization: Bearer ${pullToken}\r\n`),
      );
      const ok = await c.read();
      assert.equal(ok.status, 200);
      assert.match(ok.body, /^StorePath: /);
      assert.equal((await c.read()).status, 200);
      assert.equal(total(handoffs()), total(before), "a valid token stays on the lane");
    } finally {
      c.close();
    }
    for (const authorization of [
      undefined,
      "Bearer nxs_not-a-token",
      `Basic ${Buffer.from("nix:wrong").toString("base64")}`,
    ]) {
      const d = new RawClient(port);
      try {
        d.write(get(privatePath, authorization ? `Authorization: ${authorization}\r\n` : ""));
        const r = await d.read();
        assert.equal(r.status, 401, `${authorization}: ${r.body}`);
        assert.equal(r.headers.get("www-authenticate"), 'Basic realm="nixstash"');
        const slow = await slowLane(privatePath, authorization ? { headers: { authorization } } : {});
        assert.equal(r.body, await slow.text());
      } finally {
        d.close();
      }
    }
  });

  it("sends NARs from local storage itself, small ones whole and large ones by the kernel, in order", async () => {
    // A NAR of random bytes stays large once compressed: sent with sendfile after its head.
    const big = fakeStorePath("fast-lane-big");
    const bigNar = narOf({ dir: { blob: randomBytes(3 * 1024 * 1024).toString("base64") } });
    const stored = await push("main", big, bigNar);
    assert.equal(stored.status, 201, await stored.text());
    const narUrlOf = async (path: string) =>
      `/main/${/^URL: (.*)$/m.exec(await (await slowLane(path)).text())![1]}`;
    const smallUrl = await narUrlOf(narinfoPath);
    const bigUrl = await narUrlOf(`/main/${hashOf(big)}.narinfo`);
    const served = () => {
      const line = server.ctx
        .metrics!.registry.render()
        .split("\n")
        .find((l) => l.startsWith('nixstash_nar_served_bytes_total{cache="main"} '));
      return Number(line?.split(" ")[1] ?? 0);
    };
    const [before, bytesBefore, kernelBefore] = [handoffs(), served(), sendfileCounts.started];
    const c = new RawClient(port);
    try {
      // Pipelined in one write: each answer waits for the one before, the large one included.
      c.write(get(smallUrl) + get(bigUrl) + get(narinfoPath) + get(bigUrl));
      const [small, large, info, again] = [await c.read(), await c.read(), await c.read(), await c.read()];
      // Metered as the route meters them (before the comparisons below, which meter their own reads).
      assert.equal(served() - bytesBefore, small.bytes.length + 2 * large.bytes.length);
      assert.equal(sendfileCounts.started - kernelBefore, 2, "the large one went out by sendfile, twice");
      for (const [fast, url] of [
        [small, smallUrl],
        [large, bigUrl],
      ] as const) {
        const slow = await slowLane(url);
        assert.equal(fast.status, 200);
        assert.ok(fast.bytes.equals(Buffer.from(await slow.arrayBuffer())), `${url}: the same bytes`);
        for (const name of ["content-type", "content-length", "accept-ranges", "cache-control"])
          assert.equal(fast.headers.get(name), slow.headers.get(name), `${url}: ${name}`);
      }
      assert.ok(large.bytes.length > 3 * 1024 * 1024);
      assert.equal(info.status, 200);
      assert.match(info.body, /^StorePath: /);
      assert.ok(again.bytes.equals(large.bytes));
      assert.equal(total(handoffs()), total(before), "the connection stayed in the lane");

      // A range, a HEAD (a pusher's question) and an unknown NAR are the route's: the connection moves.
      c.write(get(bigUrl, "Range: bytes=10-19\r\n"));
      const range = await c.read();
      assert.equal(range.status, 206);
      assert.ok(range.bytes.equals(large.bytes.subarray(10, 20)));
      assert.equal(total(handoffs()), total(before) + 1);
    } finally {
      c.close();
    }
    for (const request of [
      `HEAD ${bigUrl} HTTP/1.1\r\nHost: x\r\n\r\n`,
      get(`/main/nar/${"0".repeat(52)}.nar.zst`),
    ]) {
      const other = new RawClient(port);
      try {
        const moved = total(handoffs());
        other.write(request);
        const r = await other.read({ head: request.startsWith("HEAD") });
        assert.equal(r.status, request.startsWith("HEAD") ? 200 : 404);
        assert.equal(total(handoffs()), moved + 1);
      } finally {
        other.close();
      }
    }
  });

  it("answers a NAR it remembers and holds in memory at once, without a promise", async () => {
    const narUrl = `/main/${/^URL: (.*)$/m.exec(await (await slowLane(narinfoPath)).text())![1]}`;
    const c = new RawClient(port);
    try {
      // A substituter's pair: the narinfo (its row carries the NAR's), then the NAR (now held in memory).
      c.write(get(narinfoPath) + get(narUrl));
      assert.equal((await c.read()).status, 200);
      const sent = await c.read();
      assert.equal(sent.status, 200);
      const lifecycle = createLifecycle();
      const answer = nixFastReads(server.ctx, { lifecycle, recorder: () => {} });
      const request: FastRequest = {
        method: "GET",
        target: narUrl,
        authorization: undefined,
        requestId: undefined,
        userAgent: undefined,
        remoteAddress: undefined,
        range: false,
      };
      const now = answer(request);
      assert.ok(now && !(now instanceof Promise), "answered before the call returns");
      assert.equal(now.status, 200);
      assert.deepEqual(
        { active: lifecycle.active, begun: lifecycle.begun },
        { active: 0, begun: 1 },
        "never in flight, but activity (trim-when-quiet.ts waits for a quiet second)",
      );
      const narinfoNow = answer({ ...request, target: narinfoPath });
      assert.ok(narinfoNow && !(narinfoNow instanceof Promise), "a remembered narinfo, at once too");
      assert.deepEqual({ active: lifecycle.active, begun: lifecycle.begun }, { active: 0, begun: 2 });
      assert.ok(Buffer.isBuffer(now.body) && now.body.equals(sent.bytes), "the bytes the socket got");
      assert.equal(now.headers?.["cache-control"], sent.headers.get("cache-control"));
      // A caller with credentials is identified first (a promise), as is a cache that is not public.
      const withToken = answer({ ...request, authorization: `Bearer ${pullToken}` });
      assert.ok(withToken instanceof Promise);
      await withToken;
      const secret = answer({ ...request, target: narUrl.replace("/main/", "/secret/") });
      assert.ok(secret instanceof Promise);
      assert.equal(await secret, undefined, "anonymous on a private cache: the route's 401");
    } finally {
      c.close();
    }
  });

  it("stops serving a path the moment it is deleted, and serves a new push at once", async () => {
    const gone = fakeStorePath("fast-lane-gone");
    const goneNar = narOf({ dir: { file: "to be deleted\n" } });
    const gonePath = `/main/${hashOf(gone)}.narinfo`;
    const c = new RawClient(port);
    try {
      // Absent, then pushed: visible on the very next read (misses are never remembered).
      c.write(get(gonePath));
      assert.equal((await c.read()).status, 404);
      const pushed = await push("main", gone, goneNar);
      assert.equal(pushed.status, 201, await pushed.text());
      c.write(get(gonePath) + get(gonePath));
      const served = await c.read();
      assert.equal(served.status, 200);
      assert.equal((await c.read()).status, 200, "served again (now from memory)");
      const narUrl = `/main/${/^URL: (.*)$/m.exec(served.body)![1]}`;
      c.write(get(narUrl) + get(narUrl));
      assert.equal((await c.read()).status, 200);
      assert.equal((await c.read()).status, 200, "the NAR row is remembered too");
      const deleted = await api(`/api/v1/caches/main/paths/${hashOf(gone)}`, {
        method: "DELETE",
        token: admin,
      });
      assert.ok(deleted.ok, await deleted.text());
      // Remembered a moment ago, forgotten by the deletion: the narinfo and its NAR.
      c.write(get(gonePath) + get(narUrl));
      assert.equal((await c.read()).status, 404);
      assert.equal((await c.read()).status, 404);
    } finally {
      c.close();
    }
  });

  it("closes after a Connection: close request, and ignores what follows it", async () => {
    const c = new RawClient(port);
    try {
      c.write(get(narinfoPath, "Connection: close\r\n") + get(narinfoPath));
      const r = await c.read();
      assert.equal(r.status, 200);
      assert.equal(r.headers.get("connection"), "close");
      assert.ok(await c.waitEnded(), "the server ends the connection");
      await assert.rejects(c.read(), /connection ended/);
    } finally {
      c.close();
    }
  });

  it("answers a client that half-closes after its request", async () => {
    const c = new RawClient(port);
    try {
      c.socket.end(get(narinfoPath));
      const r = await c.read();
      assert.equal(r.status, 200);
      assert.ok(await c.waitEnded());
    } finally {
      c.close();
    }
  });
});

describe("fast lane on S3 storage (small NARs from memory, others redirected)", () => {
  let server: RunningServer | undefined;
  let port = 0;
  let s3: Awaited<ReturnType<typeof freshS3>>;
  let drop: (() => Promise<void>) | undefined;
  const dataDir = mkdtempSync(join(testTmp(), "fast-lane-s3-"));
  /** (Re)starts the server on the same database and bucket: a server that holds nothing in memory yet. */
  const start = async (env: Record<string, string> = {}) => {
    await server?.close();
    server = await startServer(
      parseConfig({
        ...s3!.env,
        NIXSTASH_DATA_DIR: dataDir,
        NIXSTASH_LISTEN: "127.0.0.1:0",
        NIXSTASH_LOG_LEVEL: "silent",
        ...env,
      }),
    );
    port = Number(new URL(server.url).port);
  };
  before(async () => {
    s3 = await freshS3();
    if (!s3) return;
    drop = async () => {
      for await (const o of s3!.storage.list("")) await s3!.storage.delete(o.key);
    };
    await start();
  });
  after(async () => {
    await server?.close();
    await drop?.();
  });
  /** Pushes one path through the native API (201 stored); its narinfo as the server then serves it. */
  const pushed = async (path: string, bytes: Buffer) => {
    const res = await fetch(`${server!.url}/api/v1/caches/main/paths/${hashOf(path)}`, {
      method: "PUT",
      headers: {
        // Written at the first start (a restarted server has no token to show).
        authorization: `Bearer ${readFileSync(join(dataDir, "admin-token"), "utf8").trim()}`,
        "x-nixstash-path-info": JSON.stringify(infoFor(path, bytes)),
      },
      body: bytes,
    });
    assert.equal(res.status, 201, await res.text());
    return (await fetch(`${server!.url}/main/${hashOf(path)}.narinfo`)).text();
  };
  const field = (info: string, name: string) => new RegExp(`^${name}: (.*)$`, "m").exec(info)![1]!;
  /** What a narinfo's FileHash says of these bytes. */
  const fileHashOf = (bytes: Buffer) => formatHash(createHash("sha256").update(bytes).digest());

  it("answers a small NAR it holds and redirects a large one, keeping the connection, as the route would", async (t) => {
    if (!server) return t.skip("S3 unavailable");
    const smallPath = fakeStorePath("s3-lane-small");
    const smallInfo = await pushed(smallPath, narOf(Buffer.from("small and kept")));
    const bigInfo = await pushed(
      fakeStorePath("s3-lane-big"),
      narOf({ dir: { blob: randomBytes(256 * 1024).toString("base64") } }),
    );
    const smallUrl = `/main/${field(smallInfo, "URL")}`;
    const bigUrl = `/main/${field(bigInfo, "URL")}`;
    const narinfoPath = `/main/${hashOf(smallPath)}.narinfo`;
    const handoffs = () => total(handoffsOf(server!));
    const slowLane = (path: string) =>
      import("../../server/app.ts").then(({ createApp }) => createApp(server!.ctx).request(path));

    const before = handoffs();
    const c = new RawClient(port);
    try {
      c.write(get(smallUrl) + get(bigUrl) + get(narinfoPath));
      const [small, big, info] = [await c.read(), await c.read(), await c.read()];
      assert.equal(handoffs(), before, "the connection stayed in the lane");
      assert.equal(info.status, 200);

      // The small NAR: its stored bytes, with the route's headers, from memory (no redirect).
      assert.equal(small.status, 200);
      assert.equal(small.bytes.length, Number(field(smallInfo, "FileSize")));
      assert.equal(fileHashOf(small.bytes), field(smallInfo, "FileHash"));
      const slowSmall = await slowLane(smallUrl);
      assert.equal(slowSmall.status, 200, "the route answers it from memory too");
      assert.ok(small.bytes.equals(Buffer.from(await slowSmall.arrayBuffer())));
      for (const name of ["content-type", "content-length", "cache-control"])
        assert.equal(small.headers.get(name), slowSmall.headers.get(name), name);

      // The large one: the route's redirect (the same presigned URL), to its bytes in the bucket.
      assert.equal(big.status, 302);
      const slowBig = await slowLane(bigUrl);
      assert.equal(slowBig.status, 302);
      assert.equal(big.headers.get("location"), slowBig.headers.get("location"));
      assert.equal(big.headers.get("content-type"), undefined);
      const fetched = Buffer.from(await (await fetch(big.headers.get("location")!)).arrayBuffer());
      assert.equal(fileHashOf(fetched), field(bigInfo, "FileHash"));
    } finally {
      c.close();
    }
  });

  it("keeps a small NAR in the database: a server that did not receive it answers it, never redirects it", async (t) => {
    if (!server) return t.skip("S3 unavailable");
    const info = await pushed(fakeStorePath("s3-lane-inline"), narOf(Buffer.from("a row, not an object")));
    const cache = await server!.ctx.repo.cacheByName("main");
    const row = await server!.ctx.repo.narByFileHash(cache!.id, field(info, "FileHash"));
    assert.equal(await s3!.storage.stat(row!.storageKey), null, "nothing in the bucket");
    assert.ok(await server!.ctx.repo.inlineObjects.stat(row!.storageKey), "a row in the database");
    // Restarted with no memory for small objects: still answered, from the row, and not redirected.
    await start({ NIXSTASH_S3_MEMORY_MB: "0" });
    const c = new RawClient(port);
    try {
      c.write(get(`/main/${field(info, "URL")}`));
      const sent = await c.read();
      assert.equal(sent.status, 200);
      assert.equal(fileHashOf(sent.bytes), field(info, "FileHash"));
    } finally {
      c.close();
      await start();
    }
  });

  it("reads a small NAR it does not hold from the bucket once and keeps it; with no memory it redirects it", async (t) => {
    if (!server) return t.skip("S3 unavailable");
    // A small NAR in the bucket, as one pushed with NIXSTASH_S3_INLINE_KB=0 (or before there were rows) is.
    await start({ NIXSTASH_S3_INLINE_KB: "0" });
    const info = await pushed(fakeStorePath("s3-lane-read-through"), narOf(Buffer.from("read through once")));
    const url = `/main/${field(info, "URL")}`;
    const fileHash = field(info, "FileHash");
    const fetchRaw = async () => {
      const c = new RawClient(port);
      try {
        c.write(get(url));
        return await c.read();
      } finally {
        c.close();
      }
    };

    // A server that did not receive it (a replica, or after a restart) reads it from the bucket, not redirects.
    await start({ NIXSTASH_S3_INLINE_KB: "0" });
    const first = await fetchRaw();
    assert.equal(first.status, 200);
    assert.equal(fileHashOf(first.bytes), fileHash);
    // ... and keeps it: removed from the bucket behind the server's back, it is still answered.
    const cache = await server!.ctx.repo.cacheByName("main");
    const row = await server!.ctx.repo.narByFileHash(cache!.id, fileHash);
    await s3!.storage.delete(row!.storageKey);
    const again = await fetchRaw();
    assert.equal(again.status, 200);
    assert.ok(again.bytes.equals(first.bytes));

    // With no memory for small objects, it redirects like any other NAR.
    await start({ NIXSTASH_S3_MEMORY_MB: "0", NIXSTASH_S3_INLINE_KB: "0" });
    const redirected = await fetchRaw();
    assert.equal(redirected.status, 302);
    assert.match(
      redirected.headers.get("location") ?? "",
      new RegExp(row!.storageKey.replace(/[.]/g, "\\.")),
    );
  });

  it("sends a large NAR from its disk copy once it has one, in the lane, with the route's headers", async (t) => {
    if (!server) return t.skip("S3 unavailable");
    const info = await pushed(
      fakeStorePath("s3-lane-disk"),
      narOf({ dir: { blob: randomBytes(512 * 1024).toString("base64") } }),
    );
    await start({ NIXSTASH_S3_DISK_CACHE: join(dataDir, "disk-cache") });
    const url = `/main/${field(info, "URL")}`;
    const first = new RawClient(port);
    try {
      first.write(get(url));
      const through = await first.read();
      assert.equal(through.status, 200, "no copy yet: sent from the bucket's one GET that makes the copy");
      assert.equal(fileHashOf(through.bytes), field(info, "FileHash"));
    } finally {
      first.close();
    }
    await server!.diskCache!.settled();
    const before = total(handoffsOf(server!));
    const c = new RawClient(port);
    try {
      c.write(get(url));
      const sent = await c.read();
      assert.equal(sent.status, 200);
      assert.equal(sent.bytes.length, Number(field(info, "FileSize")));
      assert.equal(fileHashOf(sent.bytes), field(info, "FileHash"));
      const slow = await import("../../server/app.ts").then(({ createApp }) =>
        createApp(server!.ctx).request(url),
      );
      assert.equal(slow.status, 200, "the route sends the copy too");
      assert.ok(sent.bytes.equals(Buffer.from(await slow.arrayBuffer())));
      for (const name of ["content-type", "content-length", "cache-control"])
        assert.equal(sent.headers.get(name), slow.headers.get(name), name);
      assert.equal(total(handoffsOf(server!)), before, "the connection stayed in the lane");
      // What /metrics says of the disk cache.
      const metrics = await (await fetch(`${server!.url}/metrics`)).text();
      const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(metrics)?.[1]);
      assert.equal(value("nixstash_s3_disk_cache_copies"), 1);
      assert.equal(value("nixstash_s3_disk_cache_bytes"), sent.bytes.length);
      assert.equal(value("nixstash_s3_disk_cache_copies_made_total"), 1);
      assert.equal(value("nixstash_s3_disk_cache_copy_failures_total"), 0);
    } finally {
      c.close();
      await start();
    }
  });
});

describe("fast lane and shutdown", () => {
  it("closes idle lane connections when the server stops", async () => {
    const dir = mkdtempSync(join(testTmp(), "fast-lane-stop-"));
    const server = await startServer(
      parseConfig({ NIXSTASH_DATA_DIR: dir, NIXSTASH_LISTEN: "127.0.0.1:0", NIXSTASH_LOG_LEVEL: "silent" }),
    );
    const port = Number(new URL(server.url).port);
    const idle = new RawClient(port);
    idle.write(get("/main/nix-cache-info"));
    assert.equal((await idle.read()).status, 200);
    const started = Date.now();
    assert.equal(await server.close(), true);
    // Well under the 5 s keep-alive timeout: the idle connection was closed, not waited out.
    assert.ok(Date.now() - started < 2000, `close took ${Date.now() - started} ms`);
    assert.ok(await idle.waitEnded(), "the idle lane connection was closed");
    idle.close();
  });
});
