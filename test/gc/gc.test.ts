// Garbage collection on both stacks, in-process, against fake closures and a controlled clock: the
// planner's rule (pure), retention, quota (LRU over closure roots), pins, closures kept whole at every
// step, NARs shared across caches, the grace period before storage deletes, orphans, dry runs, the lease.
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import type { PathNode } from "../../server/db/repo.ts";
import { createAccessLog } from "../../server/verbs/access-log.ts";
import { deletePlannedPaths, LEASE_NAME, narGraceMs, planCollection } from "../../server/verbs/gc.ts";
import { type AdminHarness, adminHarness, HARNESS_STACKS, hashOf } from "../admin/support.ts";

const DAY = 86_400_000;

describe("planCollection (pure)", () => {
  let id = 0;
  const node = (name: string, refs: PathNode[] = [], o: Partial<PathNode> = {}): PathNode => {
    id++;
    const hash = `${String(id).padStart(2, "0")}${"a".repeat(30)}`;
    return {
      id,
      hash,
      storePath: `/nix/store/${hash}-${name}`,
      narSize: 100,
      references: refs.map((r) => r.storePath.slice(11)).join(" "),
      narId: id,
      fileSize: 100,
      createdAt: 0,
      lastAccessedAt: null,
      pinned: false,
      ...o,
    };
  };
  it("collects only what no kept path refers to, and evicts LRU roots first under a quota", () => {
    const dep = node("dep", [], { lastAccessedAt: 10 * DAY });
    const mid = node("mid", [dep]);
    const top = node("top", [mid, dep]);
    const pinnedDep = node("pdep");
    const pinned = node("pinned", [pinnedDep], { pinned: true });
    const fresh = node("fresh", [], { createdAt: 10 * DAY });
    const all = [dep, mid, top, pinnedDep, pinned, fresh];
    const retention = planCollection(all, { retentionMs: DAY, quotaBytes: null }, 10.5 * DAY);
    assert.deepEqual(
      retention.victims.map((n) => n.storePath.slice(44)),
      ["top", "mid"],
    );
    const quota = planCollection(all, { retentionMs: null, quotaBytes: 300 }, 10.5 * DAY);
    // top is the least recently used root; then mid becomes a root; the pinned closure never goes.
    assert.deepEqual(
      quota.victims.map((n) => n.storePath.slice(44)),
      ["top", "mid", "dep"],
    );
    assert.equal(quota.storedBytesAfter, 300);
    const shared = node("self-ref", [], {});
    shared.references = `${shared.storePath.slice(11)}`;
    assert.equal(
      planCollection([shared], { retentionMs: DAY, quotaBytes: null }, 10 * DAY).victims.length,
      1,
    );
  });
});

for (const stack of HARNESS_STACKS) {
  describe(`garbage collection (${stack.db} + ${stack.storage})`, () => {
    let a: AdminHarness | undefined;
    let offset = 0;
    const advance = (ms: number) => {
      offset += ms;
    };
    before(async () => {
      a = await adminHarness(stack);
      if (!a) return;
      a.h.ctx.clock = () => Date.now() + offset;
    });
    after(async () => a?.h.cleanup());

    /** Every path the cache serves has every reference served too. */
    const assertClosuresWhole = async (cache: string) => {
      const list = await a!.json<{ paths: { storePath: string; hash: string }[] }>(
        `/api/v1/caches/${cache}/paths?limit=1000`,
      );
      for (const p of list.paths) {
        const text = await (await a!.req(`/${cache}/${p.hash}.narinfo`)).text();
        const refs = /^References: (.*)$/m.exec(text)![1]!.split(" ").filter(Boolean);
        for (const ref of refs) {
          const res = await a!.req(`/${cache}/${ref.slice(0, 32)}.narinfo`);
          assert.equal(res.status, 200, `${p.storePath} references ${ref}, which is gone`);
        }
        const url = /^URL: (.*)$/m.exec(text)![1]!;
        assert.equal((await a!.req(`/${cache}/${url}`)).status, 200, `NAR of ${p.storePath}`);
      }
      return list.paths.map((p) => p.storePath);
    };

    it("collects by retention and quota, keeps pinned closures, frees what storage loses", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const access = createAccessLog({
        repo: a.h.ctx.repo,
        clock: () => a!.h.ctx.clock(),
        onError: () => {},
        flushMs: 3_600_000,
      });
      a.h.ctx.access = access;
      const touch = async (cache: string, path: string) => {
        assert.equal((await a!.req(`/${cache}/${hashOf(path)}.narinfo`)).status, 200);
        await access.flush();
      };
      await a.json("/api/v1/caches", {
        method: "POST",
        json: { name: "gc", retentionSeconds: 86400 },
        status: 201,
      });
      await a.json("/api/v1/caches", { method: "POST", json: { name: "twin" }, status: 201 });
      const shared = await a.push("gc", "shared", [], 30_000);
      const a1 = await a.push("gc", "a1", [], 20_000);
      const a2 = await a.push("gc", "a2", [a1, shared], 20_000);
      const a3 = await a.push("gc", "a3", [a2, a1], 20_000);
      const b1 = await a.push("gc", "b1", [], 20_000);
      const b2 = await a.push("gc", "b2", [b1, shared], 20_000);
      const c1 = await a.push("gc", "c1", [], 20_000);
      const c2 = await a.push("gc", "c2", [c1], 20_000);
      await a.json(`/api/v1/caches/gc/paths/${hashOf(c2)}/pin`, { method: "PUT" });
      // The same NAR content in another cache: stored once, kept while "twin" uses it.
      const twinNar = await a.json<{ narinfo: { narHash: string } }>(`/api/v1/caches/gc/paths/${hashOf(b1)}`);
      void twinNar;

      advance(2 * DAY);
      await touch("gc", a1);
      advance(3_600_000);
      await touch("gc", b2);

      const bytes0 = await a.storedBytes();
      const dry = await a.json<{ collectedPaths: number; caches: { paths: string[] }[] }>(
        "/api/v1/caches/gc/gc",
        {
          method: "POST",
          json: { dryRun: true },
        },
      );
      assert.deepEqual(dry.caches[0]!.paths.sort(), [a2, a3].sort());
      assert.equal((await a.req(`/gc/${hashOf(a3)}.narinfo`)).status, 200, "a dry run deletes nothing");

      const run = await a.json<{
        collectedPaths: number;
        caches: { paths: string[]; byReason: Record<string, number> }[];
        storage: { removedNars: number; waitingNars: number };
      }>("/api/v1/caches/gc/gc", { method: "POST", json: {} });
      assert.deepEqual(run.caches[0]!.paths, [a3, a2], "referrers first");
      assert.equal(run.caches[0]!.byReason.retention, 2);
      assert.equal(run.storage.removedNars, 0, "NARs wait for the grace period");
      assert.equal(await a.storedBytes(), bytes0);
      let kept = await assertClosuresWhole("gc");
      assert.deepEqual(kept.sort(), [shared, a1, b1, b2, c1, c2].sort());

      // Quota: the stored bytes of c (pinned) and b, so a1 (least recently used root) goes.
      const sizes = await a.json<{ storedBytes: number }>("/api/v1/caches/gc/stats");
      const a1Size = (
        await a.json<{ narinfo: { fileSize: number } }>(`/api/v1/caches/gc/paths/${hashOf(a1)}`)
      ).narinfo.fileSize;
      await a.json("/api/v1/caches/gc", {
        method: "PATCH",
        json: { retentionSeconds: null, quotaBytes: sizes.storedBytes - a1Size },
      });
      const quota = await a.json<{ caches: { paths: string[]; byReason: Record<string, number> }[] }>(
        "/api/v1/caches/gc/gc",
        {
          method: "POST",
          json: {},
        },
      );
      assert.deepEqual(quota.caches[0]!.paths, [a1]);
      assert.equal(quota.caches[0]!.byReason.quota, 1);
      // A quota below the pinned closure evicts everything else, but never the pin's closure.
      await a.json("/api/v1/caches/gc", { method: "PATCH", json: { quotaBytes: 1 } });
      const hard = await a.json<{ caches: { paths: string[] }[] }>("/api/v1/caches/gc/gc", {
        method: "POST",
        json: {},
      });
      assert.deepEqual(
        hard.caches[0]!.paths.slice(0, 1),
        [b2],
        "the referrer goes before what it references",
      );
      assert.deepEqual(hard.caches[0]!.paths.slice(1).sort(), [b1, shared].sort());
      kept = await assertClosuresWhole("gc");
      assert.deepEqual(kept.sort(), [c1, c2].sort());

      // Storage gives the bytes back only after the grace period; then freed bytes = what storage lost.
      const before = await a.storedBytes();
      advance(narGraceMs(a.h.ctx) + 60_000);
      const late = await a.json<{ freedBytes: number; storage: { removedNars: number } }>("/api/v1/gc", {
        method: "POST",
        json: {},
      });
      assert.equal(late.storage.removedNars, 6);
      assert.equal(late.freedBytes, before - (await a.storedBytes()));
      assert.ok(late.freedBytes > 6 * 20_000);
      await assertClosuresWhole("gc");
      await access.stop();
      a.h.ctx.access = undefined;
    });

    it("keeps a NAR another cache still uses", async (t) => {
      if (!a) return t.skip("backend unavailable");
      await a.json("/api/v1/caches", {
        method: "POST",
        json: { name: "left", retentionSeconds: 3600 },
        status: 201,
      });
      await a.json("/api/v1/caches", { method: "POST", json: { name: "right" }, status: 201 });
      const p = await a.push("left", "twin", [], 10_000);
      // Push the very same path (same NAR) into "right": deduplicated.
      const text = await (await a.req(`/left/${hashOf(p)}.narinfo`)).text();
      const url = /^URL: (.*)$/m.exec(text)![1]!;
      const nar = Buffer.from(await (await a.req(`/left/${url}`)).arrayBuffer());
      const info = await a.json<{ narinfo: { narHash: string; narSize: number } }>(
        `/api/v1/caches/left/paths/${hashOf(p)}`,
      );
      const { decompress } = await import("zstd-napi");
      const res = await a.req(`/api/v1/caches/right/paths/${hashOf(p)}`, {
        method: "PUT",
        headers: {
          "x-nixstash-path-info": JSON.stringify({
            storePath: p,
            narHash: info.narinfo.narHash,
            narSize: info.narinfo.narSize,
            references: [],
          }),
        },
        body: decompress(nar),
      });
      assert.equal(((await res.json()) as { status: string }).status, "deduplicated");
      advance(2 * 3_600_000);
      await a.json("/api/v1/caches/left/gc", { method: "POST", json: {} });
      advance(narGraceMs(a.h.ctx) + 60_000);
      const sweep = await a.json<{ storage: { removedNars: number } }>("/api/v1/gc", {
        method: "POST",
        json: {},
      });
      assert.equal(sweep.storage.removedNars, 0);
      assert.equal((await a.req(`/left/${hashOf(p)}.narinfo`)).status, 404);
      assert.equal(
        (await a.req(`/right/${url}`)).status,
        200,
        "the shared NAR is still served by the other cache",
      );
    });

    it("removes orphans (abandoned uploads, and with deep, stray objects) and reports their bytes", async (t) => {
      if (!a) return t.skip("backend unavailable");
      offset = 0;
      await a.h.ctx.repo.addPendingUpload("nar/abandoned.nar.zst");
      await a.h.ctx.storage.put("nar/abandoned.nar.zst", Readable.from([Buffer.alloc(1234, 1)]));
      await a.h.ctx.storage.put("nar/stray.nar.zst", Readable.from([Buffer.alloc(4321, 2)]));
      const before = await a.storedBytes();
      // Not yet 6 hours old: left alone.
      const early = await a.json<{ storage: { removedOrphans: number; removedStrays: number } }>(
        "/api/v1/gc",
        {
          method: "POST",
          json: { deep: true },
        },
      );
      assert.equal(early.storage.removedOrphans + early.storage.removedStrays, 0);
      advance(7 * 3_600_000);
      const dry = await a.json<{ freedBytes: number }>("/api/v1/gc", {
        method: "POST",
        json: { deep: true, dryRun: true },
      });
      assert.equal(dry.freedBytes, 1234 + 4321);
      assert.equal(await a.storedBytes(), before);
      const run = await a.json<{
        freedBytes: number;
        storage: { removedOrphans: number; removedStrays: number };
      }>("/api/v1/gc", { method: "POST", json: { deep: true } });
      assert.equal(run.storage.removedOrphans, 1);
      assert.equal(run.storage.removedStrays, 1);
      assert.equal(run.freedBytes, before - (await a.storedBytes()));
      const runs = await a.json<{ runs: { trigger: string; dryRun: boolean }[] }>("/api/v1/gc/runs?limit=2");
      assert.equal(runs.runs[0]!.dryRun, false);
      assert.equal(runs.runs[1]!.dryRun, true);
    });

    it("spares a victim that a push made during the run refers to, with its closure", async (t) => {
      if (!a) return t.skip("backend unavailable");
      await a.json("/api/v1/caches", {
        method: "POST",
        json: { name: "race", retentionSeconds: 3600 },
        status: 201,
      });
      const dep = await a.push("race", "race-dep");
      const mid = await a.push("race", "race-mid", [dep]);
      const top = await a.push("race", "race-top", [mid]);
      const cache = (await a.h.ctx.repo.cacheByName("race"))!;
      const plannedAt = a.h.ctx.clock() + 2 * 3_600_000;
      const graph = await a.h.ctx.repo.pathGraph(cache.id);
      const plan = planCollection(graph, { retentionMs: 3_600_000, quotaBytes: null }, plannedAt);
      assert.equal(plan.victims.length, 3);
      // Between planning and deleting, a builder pushes a path that references mid.
      const late = await a.push("race", "race-late", [mid]);
      const result = await deletePlannedPaths(a.h.ctx, cache, graph, plan.victims, a.h.ctx.clock());
      assert.deepEqual(
        result.deleted.map((n) => n.storePath),
        [top],
      );
      assert.equal(result.spared, 2);
      const left = (await a.json<{ paths: { storePath: string }[] }>("/api/v1/caches/race/paths")).paths.map(
        (p) => p.storePath,
      );
      assert.deepEqual(left.sort(), [late, mid, dep].sort());
      await assertClosuresWhole("race");
    });

    it("lets one collector run at a time across replicas", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const now = a.h.ctx.clock();
      assert.ok(await a.h.ctx.repo.acquireLease(LEASE_NAME, "other-replica", now, 60_000));
      const res = await a.req("/api/v1/gc", { method: "POST", json: { dryRun: true } });
      assert.equal(res.status, 409);
      assert.match(await res.text(), /other-replica/);
      assert.equal(await a.h.ctx.repo.acquireLease(LEASE_NAME, "third", now, 60_000), false);
      // An expired lease is taken over.
      assert.ok(await a.h.ctx.repo.acquireLease(LEASE_NAME, "third", now + 61_000, 60_000));
      await a.h.ctx.repo.releaseLease(LEASE_NAME, "third");
      await a.json("/api/v1/gc", { method: "POST", json: { dryRun: true } });
    });
  });
}
