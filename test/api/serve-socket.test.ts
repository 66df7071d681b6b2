// NAR and log downloads over a real socket, on both stacks (S3 with redirects off, so the bytes flow through
// the server). Under @hono/node-server the route pipes the stored file straight into the socket response
// (server/routes/http.ts sendStream); in-process suites (app.request) never take that path, so this one
// checks what a client sees on the wire: whole bodies, ranges, headers set by middleware, the request's
// status in the metrics, and a client hanging up mid-body leaving the server serving.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { decompress as zstdDecompress } from "zstd-napi";
import { parseNarInfo } from "../../nix/index.ts";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";
import { type RunningStack, STACKS, startStack } from "../support/stack.ts";

for (const stack of STACKS) {
  describe(`NAR downloads over a socket (${stack})`, () => {
    let s: RunningStack | undefined;
    let narUrl = "";
    let smallNarUrl = "";
    let nar: Buffer = Buffer.alloc(0);
    const smallNar = narOf({ dir: { hello: { executable: "#!/bin/sh\necho hello\n" } } });

    before(async () => {
      s = await startStack(stack, { NIXSTASH_S3_REDIRECT: "false" });
      if (!s) return;
      // ~4 MiB of incompressible content, so the stored file spans many read chunks.
      nar = narOf({ dir: { blob: randomBytes(4 * 1024 * 1024).toString("base64"), small: "x" } });
      const token = await s.token(["push"]);
      const pushed = async (name: string, body: Buffer) => {
        const storePath = fakeStorePath(name);
        const push = await fetch(`${s!.server.url}/api/v1/caches/main/paths/${hashOf(storePath)}`, {
          method: "PUT",
          headers: {
            authorization: `Bearer ${token}`,
            "x-nixstash-path-info": JSON.stringify(infoFor(storePath, body)),
            "content-type": "application/x-nix-nar",
          },
          body,
        });
        assert.equal(push.status, 201, await push.text());
        const narinfo = await fetch(`${s!.server.url}/main/${hashOf(storePath)}.narinfo`);
        return `${s!.server.url}/main/${parseNarInfo(await narinfo.text()).url}`;
      };
      narUrl = await pushed("socket-served", nar);
      smallNarUrl = await pushed("socket-served-small", smallNar);
    });
    after(async () => s?.stop());

    it("serves the whole stored file, with the request id and length headers", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const res = await fetch(narUrl, { headers: { "x-request-id": "socket-nar-1" } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-request-id"), "socket-nar-1");
      assert.equal(res.headers.get("content-type"), "application/x-nix-nar");
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(Number(res.headers.get("content-length")), body.length);
      assert.ok(narUrl.endsWith(".nar.zst"), narUrl);
      assert.equal(
        createHash("sha256").update(zstdDecompress(body)).digest("hex"),
        createHash("sha256").update(nar).digest("hex"),
      );
    });

    it("serves a byte range as 206 with Content-Range, and counts it as 206", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const whole = Buffer.from(await (await fetch(narUrl)).arrayBuffer());
      const res = await fetch(narUrl, { headers: { range: "bytes=1000-199999" } });
      assert.equal(res.status, 206);
      assert.equal(res.headers.get("content-range"), `bytes 1000-199999/${whole.length}`);
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), whole.subarray(1000, 200000));
      const metrics = await (await fetch(`${s.server.url}/metrics`)).text();
      assert.match(
        metrics,
        /nixstash_http_requests_total\{method="GET",route="\/:cache\/nar\/:file",status="206"\} 1\b/,
      );
    });

    it("counts every byte it serves in the metrics, small NARs and streamed ones alike", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const served = async () => {
        const text = await (await fetch(`${s!.server.url}/metrics`)).text();
        return Number(/^nixstash_nar_served_bytes_total\{cache="main"\} (\d+)$/m.exec(text)?.[1] ?? 0);
      };
      const before = await served();
      const small = await fetch(smallNarUrl);
      assert.equal(small.status, 200);
      const smallBody = Buffer.from(await small.arrayBuffer());
      assert.equal(Number(small.headers.get("content-length")), smallBody.length);
      assert.deepEqual(zstdDecompress(smallBody), smallNar);
      const large = Buffer.from(await (await fetch(narUrl)).arrayBuffer());
      const part = await fetch(smallNarUrl, { headers: { range: "bytes=10-19" } });
      assert.equal(part.status, 206);
      assert.deepEqual(Buffer.from(await part.arrayBuffer()), smallBody.subarray(10, 20));
      // The request is logged when its response closes, just after the client has the last byte.
      let after = 0;
      for (let i = 0; i < 50 && after !== before + smallBody.length + large.length + 10; i++) {
        after = await served();
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(after - before, smallBody.length + large.length + 10);
    });

    it("keeps serving after a client hangs up mid-body", async (t) => {
      if (!s) return t.skip("backend unavailable");
      await new Promise<void>((resolve, reject) => {
        const req = http.get(narUrl, (res) => {
          res.once("data", () => {
            req.destroy();
            resolve();
          });
        });
        req.on("error", (error) => {
          if ((error as NodeJS.ErrnoException).code !== "ECONNRESET") reject(error);
        });
      });
      const again = await fetch(narUrl);
      assert.equal(again.status, 200);
      assert.equal(
        Buffer.from(await again.arrayBuffer()).length,
        Number(again.headers.get("content-length")),
      );
    });
  });
}
