// Garbage collection against real data with a real Nix 2.8 client, on both stacks: closures built by Nix
// and pushed through the native API; a collection with retention, then one with a quota; after each, every
// closure the cache still serves substitutes into a fresh store (trusting only the cache's key), the pinned
// closure survives, collected paths are gone, and — once the grace period has passed — the bytes the
// collector reports freed are exactly what storage lost.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "../../hook/client.ts";
import { dumpPath, pathInfos } from "../../hook/local-store.ts";
import { createAccessLog } from "../../server/verbs/access-log.ts";
import { narGraceMs } from "../../server/verbs/gc.ts";
import {
  type AdminHarness,
  adminHarness,
  HARNESS_STACKS,
  hashOf,
  serveHarness,
  substituteFresh,
} from "../admin/support.ts";
import { buildClosure, type NixEnv, nixEnv } from "../support/nix-client.ts";

const DAY = 86_400_000;

for (const stack of HARNESS_STACKS) {
  describe(`garbage collection with a real Nix client (${stack.db} + ${stack.storage})`, () => {
    let a: AdminHarness | undefined;
    let server: { url: string; close(): Promise<void> } | undefined;
    let client: NixEnv;
    let key = "";
    let offset = 0;
    const closures: Awaited<ReturnType<typeof buildClosure>>[] = [];
    let access: ReturnType<typeof createAccessLog>;

    before(async () => {
      a = await adminHarness(stack);
      if (!a) return;
      a.h.ctx.clock = () => Date.now() + offset;
      access = createAccessLog({
        repo: a.h.ctx.repo,
        clock: () => a!.h.ctx.clock(),
        onError: () => {},
        flushMs: 3_600_000,
      });
      a.h.ctx.access = access;
      server = await serveHarness(a.h);
      client = nixEnv();
      key = (await a.json<{ publicKey: string }>("/api/v1/caches/main")).publicKey;
      const push = createClient({ server: server.url, cache: "main", token: a.admin });
      for (let i = 0; i < 3; i++) {
        const closure = await buildClosure(client);
        closures.push(closure);
        for (const info of await pathInfos([closure.top], { closure: true })) {
          await push.upload(
            {
              storePath: info.path,
              narHash: info.narHash,
              narSize: info.narSize,
              references: info.references,
            },
            dumpPath(info.path),
          );
        }
      }
    });
    after(async () => {
      await access?.stop();
      await server?.close();
      await a?.h.cleanup();
    });

    const served = async () =>
      (await a!.json<{ paths: { storePath: string }[] }>("/api/v1/caches/main/paths?limit=1000")).paths.map(
        (p) => p.storePath,
      );
    const substitutes = async (path: string) => {
      const r = await substituteFresh(client, { url: `${server!.url}/main`, path, key });
      return r.code === 0 && existsSync(join(r.store, path)) ? "ok" : r.stderr;
    };
    /** Every path still served substitutes, with its closure, into a fresh store. */
    const everyServedPathSubstitutes = async () => {
      for (const path of await served()) assert.equal(await substitutes(path), "ok", path);
    };

    it("collects by retention and quota without breaking a closure; pins survive; freed = lost", async (t) => {
      if (!a || !server) return t.skip("backend unavailable");
      const [used, idle, pinned] = closures as [
        (typeof closures)[0],
        (typeof closures)[0],
        (typeof closures)[0],
      ];
      await a.json(`/api/v1/caches/main/paths/${hashOf(pinned.top)}/pin`, { method: "PUT" });
      await a.json("/api/v1/caches/main", { method: "PATCH", json: { retentionSeconds: DAY / 1000 } });
      assert.equal((await served()).length, 9);

      // Two days later, a real client substitutes `used` (its narinfo and NAR fetches count as access).
      offset += 2 * DAY;
      assert.equal(await substitutes(used.top), "ok");
      await access.flush();
      const bytes0 = await a.storedBytes();

      const retention = await a.json<{ caches: { paths: string[] }[] }>("/api/v1/caches/main/gc", {
        method: "POST",
        json: {},
      });
      assert.deepEqual(retention.caches[0]!.paths.sort(), [idle.top, idle.mid, idle.dep].sort());
      assert.equal(
        (await substitutes(idle.top)) === "ok",
        false,
        "a collected closure no longer substitutes",
      );
      assert.deepEqual(
        (await served()).sort(),
        [used.top, used.mid, used.dep, pinned.top, pinned.mid, pinned.dep].sort(),
      );
      await everyServedPathSubstitutes();

      // A quota smaller than what is left: the unpinned closure goes, whole; the pinned one stays.
      const stats = await a.json<{ storedBytes: number }>("/api/v1/caches/main/stats");
      await a.json("/api/v1/caches/main", {
        method: "PATCH",
        json: { quotaBytes: Math.floor(stats.storedBytes / 2) },
      });
      const quota = await a.json<{ caches: { paths: string[] }[] }>("/api/v1/caches/main/gc", {
        method: "POST",
        json: {},
      });
      assert.equal(quota.caches[0]!.paths[0], used.top, "the root goes first");
      assert.deepEqual(quota.caches[0]!.paths.sort(), [used.top, used.mid, used.dep].sort());
      assert.deepEqual((await served()).sort(), [pinned.top, pinned.mid, pinned.dep].sort());
      await everyServedPathSubstitutes();
      assert.equal(await a.storedBytes(), bytes0, "NARs stay through the grace period");

      // After the grace period the objects go, and the report's freed bytes are what storage lost.
      offset += narGraceMs(a.h.ctx) + 60_000;
      const sweep = await a.json<{ freedBytes: number; storage: { removedNars: number } }>("/api/v1/gc", {
        method: "POST",
        json: {},
      });
      assert.equal(sweep.storage.removedNars, 6);
      assert.equal(sweep.freedBytes, bytes0 - (await a.storedBytes()));
      assert.ok(sweep.freedBytes > 2 * 300 * 1024 * 0.9, "the two random 300 KiB files were freed");
      await everyServedPathSubstitutes();
    });
  });
}
