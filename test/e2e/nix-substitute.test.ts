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
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { createLocalStorage } from "../../server/storage/local.ts";
import type { Storage } from "../../server/storage/storage.ts";
import { freshPostgres, freshS3 } from "../support/harness.ts";
import { buildClosure, type NixEnv, nix, nixEnv } from "../support/nix-client.ts";
import { type ServerProcess, startServerProcess } from "../support/server-process.ts";
import { testTmp } from "../support/services.ts";

const toPushInfo = (info: LocalPathInfo) => ({
  storePath: info.path,
  narHash: info.narHash,
  narSize: info.narSize,
  references: info.references,
  deriver: info.deriver,
});

for (const stack of ["sqlite+local", "postgres+s3"] as const) {
  describe(`real Nix client against the server process (${stack})`, () => {
    let server: ServerProcess | undefined;
    let storage: Storage;
    let databaseUrl = "";
    const cleanups: (() => Promise<void>)[] = [];
    let client: NixEnv;
    let closure: Awaited<ReturnType<typeof buildClosure>>;
    let pushToken = "";
    let pullToken = "";

    before(async () => {
      const dataDir = mkdtempSync(join(testTmp(), `e2e-${stack}-`));
      const env: Record<string, string> = { NIXSTASH_DATA_DIR: dataDir };
      if (stack === "postgres+s3") {
        const pg = await freshPostgres();
        const s3 = await freshS3();
        if (!pg || !s3) return;
        cleanups.push(pg.drop);
        env.NIXSTASH_DATABASE_URL = pg.url;
        Object.assign(env, s3.env);
        storage = s3.storage;
        databaseUrl = pg.url;
      } else {
        storage = createLocalStorage({ root: join(dataDir, "storage") });
        databaseUrl = `sqlite:${join(dataDir, "nixstash.db")}`;
      }
      server = await startServerProcess(env);
      const mk = async (permissions: string[]) => {
        const res = await fetch(`${server!.url}/api/v1/tokens`, {
          method: "POST",
          headers: { authorization: `Bearer ${server!.adminToken}` },
          body: JSON.stringify({ name: permissions.join("+"), caches: ["main"], permissions }),
        });
        assert.equal(res.status, 201);
        return ((await res.json()) as { token: string }).token;
      };
      pushToken = await mk(["pull", "push"]);
      pullToken = await mk(["pull"]);
      client = nixEnv();
      closure = await buildClosure(client);
    });
    after(async () => {
      await server?.stop();
      for (const f of cleanups) await f();
    });

    const objects = async () => {
      const keys: string[] = [];
      for await (const o of storage.list("")) keys.push(o.key);
      return keys.sort();
    };

    const pending = async () => {
      const db = await openDatabase(databaseUrl);
      try {
        return await createRepo(db).pendingUploadsOlderThan(Date.now() + 60_000);
      } finally {
        await db.close();
      }
    };

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
      const result = await nix(client, "nix-store", [
        "--store",
        store,
        "--realise",
        closure.top,
        "--option",
        "substituters",
        `${server.url}/main`,
        "--option",
        "trusted-public-keys",
        server.publicKey,
      ]);
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
      const result = await nix(client, "nix-store", [
        "--store",
        store,
        "--realise",
        closure.top,
        "--option",
        "substituters",
        `${server.url}/main`,
        "--option",
        "trusted-public-keys",
        "main-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
      ]);
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /signature|signed/i);
      assert.ok(!existsSync(join(store, closure.top)));
    });

    it("refuses tampered uploads with a 4xx and leaves nothing behind", async (t) => {
      if (!server) return t.skip("backend unavailable");
      const extra = await buildClosure(client);
      const [info] = await pathInfos([extra.dep]);
      const before = await objects();
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
      for (let i = 0; i < 50 && (await pending()).length > 0; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await pending(), []);
      assert.equal(await narinfoStatus(info!.path), 404);
      assert.deepEqual(await objects(), before);

      // And the honest upload still works afterwards.
      const ok = await c.upload(base, Readable.from([nar]));
      assert.equal(ok.status, "stored");
    });
  });
}
