// End to end with a real Nix 2.8 client and the real server process, on both stacks (SQLite + local dir;
// PostgreSQL + Ceph RGW): build a closure, push it through the native API, substitute it into a fresh store
// trusting only the server's key; a wrong key is refused by Nix; tampered or unauthorised pushes are
// refused by the server and leave nothing behind.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readlinkSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createClient, type PushError } from "../../hook/client.ts";
import { dumpPath, type LocalPathInfo, pathInfos } from "../../hook/local-store.ts";
import { formatHash } from "../../nix/index.ts";
import { buildClosure, type NixEnv, nix, nixEnv, substitute } from "../support/nix-client.ts";
import type { ServerProcess } from "../support/server-process.ts";
import { testTmp } from "../support/services.ts";
import { type RunningStack, STACKS, startStack } from "../support/stack.ts";

const toPushInfo = (info: LocalPathInfo) => ({
  storePath: info.path,
  narHash: info.narHash,
  narSize: info.narSize,
  references: info.references,
  deriver: info.deriver,
});

for (const stack of STACKS) {
  describe(`real Nix client against the server process (${stack})`, () => {
    let s: RunningStack | undefined;
    let server: ServerProcess | undefined;
    let client: NixEnv;
    let closure: Awaited<ReturnType<typeof buildClosure>>;
    let pushToken = "";
    let pullToken = "";

    before(async () => {
      s = await startStack(stack);
      if (!s) return;
      server = s.server;
      pushToken = await s.token(["pull", "push"]);
      pullToken = await s.token(["pull"]);
      client = nixEnv();
      closure = await buildClosure(client);
    });
    after(async () => s?.stop());

    const narinfoStatus = async (storePath: string) =>
      (await fetch(`${server!.url}/main/${storePath.slice(11, 43)}.narinfo`)).status;

    it("prints the nix.conf lines on start", (t) => {
      if (!server) return t.skip("backend unavailable");
      assert.match(server.stdout, new RegExp(`substituters = ${server.url}/main`));
      assert.match(server.publicKey, /^main-1:[A-Za-z0-9+/]{43}=$/);
    });

    it("refuses pushes without a token (401) and with a pull-only token (403)", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const [dep] = await pathInfos([closure.dep]);
      for (const [token, status] of [
        ["", 401],
        [pullToken, 403],
      ] as const) {
        const c = createClient({ server: server.url, cache: "main", token });
        await assert.rejects(
          c.upload(toPushInfo(dep!), dumpPath(dep!.path)),
          (e: PushError) => e.status === status,
        );
      }
      assert.equal(await narinfoStatus(closure.dep), 404);
    });

    it("pushes the closure through the native API, references first", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const c = createClient({ server: server.url, cache: "main", token: pushToken });
      const infos = await pathInfos([closure.top], { closure: true });
      assert.equal(infos.length, 3);
      assert.deepEqual(
        await c.missing(infos.map((i) => i.path)),
        infos.map((i) => i.path),
      );
      for (const info of infos) {
        const result = await c.upload(toPushInfo(info), dumpPath(info.path));
        assert.equal(result.status, "stored");
        assert.equal(result.narSize, info.narSize);
      }
      assert.deepEqual(await c.missing(infos.map((i) => i.path)), []);
    });

    it("substitutes the closure into a fresh store, trusting only the server's key", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const store = mkdtempSync(join(testTmp(), "store-"));
      const result = await substitute(client, {
        store,
        path: closure.top,
        cache: `${server.url}/main`,
        key: server.publicKey,
      });
      assert.equal(result.code, 0, result.stderr);
      const top = join(store, closure.top);
      assert.equal(readFileSync(join(top, "refs"), "utf8").trim(), `${closure.mid} ${closure.dep}`);
      assert.equal(readlinkSync(join(top, "bin/hello")), `${closure.dep}/bin/hello`);
      const dep = join(store, closure.dep);
      assert.equal(readFileSync(join(dep, "bin/hello"), "utf8"), "#!/bin/sh\necho hello from dep\n");
      assert.equal(readFileSync(join(dep, "deep/a/b/c/d/e/f/leaf"), "utf8"), "deep\n");
      assert.equal(readFileSync(join(dep, "share/empty-file"), "utf8"), "");
      assert.ok(existsSync(join(dep, "share/empty-dir")));
      const original = readFileSync(join(closure.dep, "share/random.bin"));
      assert.deepEqual(readFileSync(join(dep, "share/random.bin")), original);
      const verify = await nix(client, "nix", [
        "store",
        "verify",
        "--store",
        store,
        "-r",
        closure.top,
        "--no-trust",
      ]);
      assert.equal(verify.code, 0, verify.stderr);
    });

    it("is refused by Nix when the client trusts a different key", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const store = mkdtempSync(join(testTmp(), "store-"));
      const result = await substitute(client, {
        store,
        path: closure.top,
        cache: `${server.url}/main`,
        key: "main-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
      });
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /signature|signed/i);
      assert.ok(!existsSync(join(store, closure.top)));
    });

    it("refuses tampered uploads with a 4xx and leaves nothing behind", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const extra = await buildClosure(client);
      const [info] = await pathInfos([extra.dep]);
      const before = await s!.objects();
      const c = createClient({ server: server.url, cache: "main", token: pushToken });
      const base = toPushInfo(info!);
      const nar = Buffer.concat(await Readable.from(dumpPath(info!.path)).toArray());
      const other = formatHash(createHash("sha256").update("not this nar").digest());
      const corrupt = Buffer.from(nar);
      corrupt.write("XX", 200);
      const cases: [string, typeof base, Buffer, RegExp][] = [
        ["wrong NarHash", { ...base, narHash: other }, nar, /NarHash mismatch/],
        ["wrong NarSize", { ...base, narSize: base.narSize + 1 }, nar, /NarSize|truncat/i],
        ["smaller NarSize", { ...base, narSize: base.narSize - 8 }, nar, /larger than the claimed NarSize/],
        ["corrupt NAR", base, corrupt, /invalid NAR|mismatch/],
        ["truncated NAR", base, nar.subarray(0, nar.length - 100), /invalid NAR|truncat/i],
      ];
      for (const [name, claim, body, message] of cases) {
        await assert.rejects(
          c.upload(claim, Readable.from([body])),
          (e: PushError) => e.status >= 400 && e.status < 500 && message.test(e.message),
          name,
        );
        assert.equal(await narinfoStatus(info!.path), 404, name);
      }

      // A body cut off mid-stream: the connection dies before Content-Length bytes arrive.
      await new Promise<void>((resolve) => {
        const req = request(`${server!.url}/api/v1/caches/main/paths/${info!.path.slice(11, 43)}`, {
          method: "PUT",
          headers: {
            authorization: `Bearer ${pushToken}`,
            "content-length": String(nar.length),
            "x-nixstash-path-info": JSON.stringify(base),
          },
        });
        req.on("error", () => resolve());
        req.on("response", () => resolve());
        req.write(nar.subarray(0, Math.floor(nar.length / 2)), () => setTimeout(() => req.destroy(), 200));
      });
      // The server notices the cut asynchronously; give it a moment, then nothing may remain.
      for (let i = 0; i < 50 && (await s!.pending()).length > 0; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await s!.pending(), []);
      assert.equal(await narinfoStatus(info!.path), 404);
      assert.deepEqual(await s!.objects(), before);

      // And the honest upload still works afterwards.
      const ok = await c.upload(base, Readable.from([nar]));
      assert.equal(ok.status, "stored");
    });
  });
}
