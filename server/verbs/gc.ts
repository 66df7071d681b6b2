// Garbage collection that never breaks a closure.
//
// The rule: a path is collected only when no kept path of the same cache refers to it. Concretely, per cache:
//   roots  = pinned paths, and (with a retention period) paths used within it — "used" is the later of
//            its push and its last narinfo/NAR fetch (access-log.ts); without a retention period every path;
//   kept   = the closure of the roots (everything they reference, transitively);
//   quota  = while the kept paths' stored bytes (distinct NAR objects) exceed the quota, evict the least
//            recently used kept path that no other kept path refers to and no pin's closure contains;
//            what it referenced may become evictable in turn;
//   collected = everything else.
// So the collected set is closed under "is referenced by": whatever the cache still serves has its whole
// closure. Deletion goes referrers first, in transactions that lock their victims against concurrent pushes
// (a push that references a victim either commits first and protects it, or fails as "missing reference")
// and recheck pins and new paths (repo.deletePathsGuarded).
//
// Storage: a NAR object can be shared by paths of several caches (deduplication). When its last path goes it
// is marked unreferenced; the object is deleted only after NAR_GRACE — longer than any presigned URL lives —
// so downloads already redirected to it finish. Orphans — objects of uploads that crashed or were abandoned,
// and staged NARs whose narinfo never came (both recorded as pending uploads) — go after 6 hours
// (cleanup.ts); a `deep` run also lists the bucket and removes objects no row knows about.
//
// One collector at a time across replicas: a lease row in the database (repo.acquireLease), taken with a
// conditional UPDATE, renewed while the run lasts and released at the end; a replica that dies lets it expire.
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Context } from "../context.ts";
import type { CacheRow, PathNode } from "../db/repo.ts";
import { conflict } from "../errors.ts";
import { ABANDONED_AFTER_MS, removeAbandonedUploads } from "./cleanup.ts";
import { keysUnsettled, maintainSignatures } from "./keys.ts";

export const LEASE_NAME = "gc";
const LEASE_TTL_MS = 2 * 60 * 1000;
const BATCH = 200;
/** New paths committed while a run plans are looked for this far back (longer than any push transaction). */
const RECENT_WINDOW_MS = 10 * 60 * 1000;
const LISTED_PATHS = 1000;

/** How long an unreferenced NAR stays in storage: longer than a presigned URL is valid. */
export function narGraceMs(ctx: Context): number {
  return ctx.settings.presignSeconds * 1000 + 15 * 60 * 1000;
}

// ---- the reference graph

export function referenceHashes(node: Pick<PathNode, "hash" | "references">): string[] {
  if (node.references === "") return [];
  return node.references
    .split(" ")
    .map((r) => r.slice(0, 32))
    .filter((h) => h !== node.hash);
}

export function lastUsed(node: PathNode): number {
  return Math.max(node.createdAt, node.lastAccessedAt ?? 0);
}

/** Everything reachable from roots through references (roots included), by hash. */
export function closureOf(roots: Iterable<string>, byHash: Map<string, PathNode>): Set<string> {
  const seen = new Set<string>();
  const stack = [...roots];
  while (stack.length > 0) {
    const hash = stack.pop()!;
    if (seen.has(hash)) continue;
    const node = byHash.get(hash);
    if (!node) continue;
    seen.add(hash);
    for (const ref of referenceHashes(node)) if (!seen.has(ref)) stack.push(ref);
  }
  return seen;
}

/** Orders paths so that each comes before every path it references (referrers first). */
export function referrersFirst(nodes: readonly PathNode[]): PathNode[] {
  const inSet = new Map(nodes.map((n) => [n.hash, n]));
  const referrers = new Map<string, number>();
  for (const n of nodes)
    for (const ref of referenceHashes(n))
      if (inSet.has(ref)) referrers.set(ref, (referrers.get(ref) ?? 0) + 1);
  const ready = nodes.filter((n) => !referrers.get(n.hash));
  const out: PathNode[] = [];
  while (ready.length > 0) {
    const n = ready.pop()!;
    out.push(n);
    for (const ref of referenceHashes(n)) {
      if (!inSet.has(ref)) continue;
      const left = referrers.get(ref)! - 1;
      referrers.set(ref, left);
      if (left === 0) ready.push(inSet.get(ref)!);
    }
  }
  return out;
}

class MinHeap<T> {
  #items: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}
  get size() {
    return this.#items.length;
  }
  push(item: T) {
    const a = this.#items;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(a[i]!, a[parent]!)) break;
      [a[i], a[parent]] = [a[parent]!, a[i]!];
      i = parent;
    }
  }
  pop(): T | undefined {
    const a = this.#items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last !== undefined) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

export interface GcPolicy {
  retentionMs: number | null;
  quotaBytes: number | null;
}

export interface GcPlan {
  /** In deletion order: referrers first. */
  victims: PathNode[];
  reasons: Map<number, "retention" | "quota">;
  storedBytesBefore: number;
  storedBytesAfter: number;
}

function storedBytes(nodes: Iterable<PathNode>): number {
  const nars = new Map<number, number>();
  for (const n of nodes) nars.set(n.narId, n.fileSize);
  let total = 0;
  for (const size of nars.values()) total += size;
  return total;
}

/** What to collect from one cache's paths under a policy (pure; see the header for the rule). */
export function planCollection(nodes: readonly PathNode[], policy: GcPolicy, now: number): GcPlan {
  const byHash = new Map(nodes.map((n) => [n.hash, n]));
  const pinnedClosure = closureOf(
    nodes.filter((n) => n.pinned).map((n) => n.hash),
    byHash,
  );
  const roots = nodes
    .filter((n) => n.pinned || policy.retentionMs === null || lastUsed(n) >= now - policy.retentionMs)
    .map((n) => n.hash);
  const kept = closureOf(roots, byHash);
  const reasons = new Map<number, "retention" | "quota">();
  for (const n of nodes) if (!kept.has(n.hash)) reasons.set(n.id, "retention");

  const narUse = new Map<number, { count: number; size: number }>();
  let keptBytes = 0;
  for (const hash of kept) {
    const n = byHash.get(hash)!;
    const use = narUse.get(n.narId);
    if (use) use.count++;
    else {
      narUse.set(n.narId, { count: 1, size: n.fileSize });
      keptBytes += n.fileSize;
    }
  }
  if (policy.quotaBytes !== null && keptBytes > policy.quotaBytes) {
    const referrerCount = new Map<string, number>();
    for (const hash of kept)
      for (const ref of referenceHashes(byHash.get(hash)!))
        if (kept.has(ref)) referrerCount.set(ref, (referrerCount.get(ref) ?? 0) + 1);
    const heap = new MinHeap<PathNode>(
      (a, b) => lastUsed(a) < lastUsed(b) || (lastUsed(a) === lastUsed(b) && a.id < b.id),
    );
    for (const hash of kept)
      if (!referrerCount.get(hash) && !pinnedClosure.has(hash)) heap.push(byHash.get(hash)!);
    while (keptBytes > policy.quotaBytes && heap.size > 0) {
      const n = heap.pop()!;
      kept.delete(n.hash);
      reasons.set(n.id, "quota");
      const use = narUse.get(n.narId)!;
      if (--use.count === 0) keptBytes -= use.size;
      for (const ref of referenceHashes(n)) {
        if (!kept.has(ref)) continue;
        const left = referrerCount.get(ref)! - 1;
        referrerCount.set(ref, left);
        if (left === 0 && !pinnedClosure.has(ref)) heap.push(byHash.get(ref)!);
      }
    }
  }
  const victims = referrersFirst(nodes.filter((n) => !kept.has(n.hash)));
  return {
    victims,
    reasons,
    storedBytesBefore: storedBytes(nodes),
    storedBytesAfter: storedBytes([...kept].map((h) => byHash.get(h)!)),
  };
}

// ---- deleting paths safely

/**
 * Deletes the given paths of one cache (already in referrers-first order), batch by batch, each batch in a
 * transaction that locks it and protects, with their closures, whatever became pinned or referenced by a
 * path committed since `plannedAt`. Returns what was deleted.
 */
export async function deletePlannedPaths(
  ctx: Context,
  cache: CacheRow,
  graph: readonly PathNode[],
  ordered: readonly PathNode[],
  plannedAt: number,
  options: { allOrNothing?: boolean; shouldStop?: () => boolean } = {},
): Promise<{ deleted: PathNode[]; spared: number; unreferencedNars: number }> {
  const byHash = new Map(graph.map((n) => [n.hash, n]));
  const known = new Set(graph.map((n) => n.id));
  // Paths committed after the graph was read have a creation time (the database's clock, like every
  // createdAt in the graph) no earlier than the newest one read, give or take a transaction's length.
  const newest = graph.reduce((max, n) => Math.max(max, n.createdAt), 0);
  const since = Math.min(plannedAt, newest) - RECENT_WINDOW_MS;
  const spared = new Set<string>();
  const deleted: PathNode[] = [];
  let unreferencedNars = 0;
  const batches = options.allOrNothing ? [ordered] : [];
  if (!options.allOrNothing)
    for (let i = 0; i < ordered.length; i += BATCH) batches.push(ordered.slice(i, i + BATCH));
  for (const batch of batches) {
    if (options.shouldStop?.()) break;
    const live = batch.filter((n) => !spared.has(n.hash));
    if (live.length === 0) continue;
    const result = await ctx.repo.deletePathsGuarded(
      cache.id,
      live.map((n) => n.id),
      since,
      ctx.clock(),
      ({ locked, recent }) => {
        const newRoots: string[] = [];
        for (const n of recent) {
          if (known.has(n.id)) continue;
          byHash.set(n.hash, n);
          newRoots.push(n.hash);
        }
        for (const n of locked) if (n.pinned) newRoots.push(n.hash);
        // Only what the new roots reach through paths this run leaves alone or is about to delete matters.
        for (const hash of closureOf(newRoots, byHash)) spared.add(hash);
        // New roots themselves are not victims; their references are protected by `spared`.
        const chosen = locked.filter((n) => !spared.has(n.hash));
        if (options.allOrNothing && chosen.length !== locked.length) return [];
        return chosen.map((n) => n.id);
      },
    );
    const gone = new Set(result.deleted.map((n) => n.id));
    deleted.push(...live.filter((n) => gone.has(n.id)));
    unreferencedNars += result.unreferencedNars.length;
  }
  return { deleted, spared: ordered.length - deleted.length, unreferencedNars };
}

// ---- reports

export interface CacheGcReport {
  cache: string;
  policy: { retentionSeconds: number | null; quotaBytes: number | null };
  /** Paths collected (or, dry, that would be). */
  collectedPaths: number;
  byReason: { retention: number; quota: number };
  /** NarSize of the collected paths. */
  narBytes: number;
  /** Kept because a push or a pin arrived during the run. */
  spared: number;
  storedBytesBefore: number;
  storedBytesAfter: number;
  /** NAR objects no path of any cache uses any more (they leave storage after the grace period). */
  unreferencedNars: number;
  /** The first collected store paths. */
  paths: string[];
}

export interface StorageGcReport {
  /** NAR objects deleted from storage (unreferenced for longer than the grace period). */
  removedNars: number;
  /** Unreferenced NARs still within their grace period. */
  waitingNars: number;
  graceSeconds: number;
  /** Abandoned uploads and staged NARs removed. */
  removedOrphans: number;
  /** Objects found by a deep scan that no row knows about, removed. */
  removedStrays: number;
  /** Bytes storage gave back (or, dry, would). */
  freedBytes: number;
}

export interface GcReport {
  dryRun: boolean;
  trigger: string;
  startedAt: number;
  finishedAt: number;
  caches: CacheGcReport[];
  signatures: { cache: string; signed: number; stripped: number }[];
  storage: StorageGcReport;
  /** Every path collected and every byte freed, summed. */
  collectedPaths: number;
  freedBytes: number;
}

export async function collectCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; dryRun: boolean; shouldStop?: () => boolean };
}): Promise<CacheGcReport> {
  const { cache } = input;
  const now = ctx.clock();
  const graph = await ctx.repo.pathGraph(cache.id);
  const plan = planCollection(
    graph,
    {
      retentionMs: cache.retentionSeconds === null ? null : cache.retentionSeconds * 1000,
      quotaBytes: cache.quotaBytes,
    },
    now,
  );
  let collected = plan.victims;
  let spared = 0;
  let unreferencedNars = 0;
  if (!input.dryRun && plan.victims.length > 0) {
    const result = await deletePlannedPaths(ctx, cache, graph, plan.victims, now, {
      ...(input.shouldStop ? { shouldStop: input.shouldStop } : {}),
    });
    collected = result.deleted;
    spared = result.spared;
    unreferencedNars = result.unreferencedNars;
  } else if (input.dryRun) {
    // The NARs that would lose their last path in this cache (other caches may still use some).
    const victimIds = new Set(plan.victims.map((n) => n.id));
    const goneHere = new Set(plan.victims.map((n) => n.narId));
    for (const n of graph) if (!victimIds.has(n.id)) goneHere.delete(n.narId);
    unreferencedNars = goneHere.size;
  }
  if (collected.length > 0)
    ctx.log.info({ cache: cache.name, paths: collected.length, dryRun: input.dryRun }, "paths collected");
  return {
    cache: cache.name,
    policy: { retentionSeconds: cache.retentionSeconds, quotaBytes: cache.quotaBytes },
    collectedPaths: collected.length,
    byReason: {
      retention: collected.filter((n) => plan.reasons.get(n.id) === "retention").length,
      quota: collected.filter((n) => plan.reasons.get(n.id) === "quota").length,
    },
    narBytes: collected.reduce((sum, n) => sum + n.narSize, 0),
    spared,
    storedBytesBefore: plan.storedBytesBefore,
    storedBytesAfter: plan.storedBytesAfter,
    unreferencedNars,
    paths: collected.slice(0, LISTED_PATHS).map((n) => n.storePath),
  };
}

/** Deletes NAR objects unreferenced for longer than the grace period, orphans, and (deep) stray objects. */
export async function collectStorage({
  ctx,
  input,
}: {
  ctx: Context;
  input: { dryRun: boolean; deep: boolean; shouldStop?: () => boolean };
}): Promise<StorageGcReport> {
  const now = ctx.clock();
  const grace = narGraceMs(ctx);
  const cutoff = now - grace;
  const report: StorageGcReport = {
    removedNars: 0,
    waitingNars: 0,
    graceSeconds: Math.round(grace / 1000),
    removedOrphans: 0,
    removedStrays: 0,
    freedBytes: 0,
  };
  if (!input.dryRun) await ctx.repo.markStrayNars(now);
  for (;;) {
    const nars = await ctx.repo.unreferencedNars(500);
    let progressed = false;
    for (const nar of nars) {
      if ((nar.unreferencedAt ?? now) > cutoff) {
        report.waitingNars++;
        continue;
      }
      if (input.dryRun) {
        report.removedNars++;
        report.freedBytes += nar.fileSize;
        continue;
      }
      if (input.shouldStop?.()) return report;
      const key = await ctx.repo.dropUnreferencedNar(nar.id, cutoff);
      if (!key) continue;
      progressed = true;
      try {
        await ctx.storage.delete(key);
        await ctx.repo.removePendingUpload(key);
      } catch (error) {
        ctx.log.warn({ err: error, key }, "could not delete a NAR object; cleanup retries");
      }
      report.removedNars++;
      report.freedBytes += nar.fileSize;
    }
    // Waiting NARs come last (ordered by unreferencedAt), so a page that removed nothing ends the sweep.
    if (!progressed || nars.length < 500 || input.dryRun) break;
    report.waitingNars = 0;
  }

  const abandonedCutoff = now - ABANDONED_AFTER_MS;
  const abandoned = await ctx.repo.pendingUploadsOlderThan(abandonedCutoff);
  for (const { storageKey } of abandoned) {
    const stat = await ctx.storage.stat(storageKey).catch(() => null);
    report.freedBytes += stat?.size ?? 0;
  }
  if (input.dryRun) report.removedOrphans = abandoned.length;
  else report.removedOrphans = (await removeAbandonedUploads({ ctx, input: {} })).removed.length;

  if (input.deep) {
    const known = await ctx.repo.knownStorageKeys();
    for await (const object of ctx.storage.list("")) {
      if (known.has(object.key) || object.modified.getTime() > abandonedCutoff) continue;
      report.removedStrays++;
      report.freedBytes += object.size;
      if (!input.dryRun) await ctx.storage.delete(object.key);
    }
  }
  return report;
}

// ---- one collector at a time

const holderId = `${hostname()}/${process.pid}/${randomBytes(4).toString("hex")}`;

/** Runs fn holding the collector lease; refuses (409) while another replica or run holds it. */
export async function withCollectorLease<T>(
  ctx: Context,
  fn: (lost: () => boolean) => Promise<T>,
): Promise<T> {
  const holder = `${holderId}/${randomBytes(3).toString("hex")}`;
  if (!(await ctx.repo.acquireLease(LEASE_NAME, holder, ctx.clock(), LEASE_TTL_MS))) {
    const lease = await ctx.repo.lease(LEASE_NAME);
    throw conflict(
      `a garbage collection is already running (${lease?.holder ?? "another replica"}); try again later`,
      { holder: lease?.holder, until: lease?.expiresAt },
    );
  }
  let lost = false;
  const renew = setInterval(() => {
    ctx.repo
      .acquireLease(LEASE_NAME, holder, ctx.clock(), LEASE_TTL_MS)
      .then((ok) => {
        if (!ok) lost = true;
      })
      .catch(() => {
        lost = true;
      });
  }, LEASE_TTL_MS / 4);
  renew.unref();
  try {
    return await fn(() => lost);
  } finally {
    clearInterval(renew);
    await ctx.repo.releaseLease(LEASE_NAME, holder).catch(() => {});
  }
}

export interface GcRequest {
  /** One cache, or every live cache. */
  cache?: CacheRow | undefined;
  dryRun: boolean;
  deep?: boolean | undefined;
  trigger: "api" | "schedule" | "cli";
}

/**
 * A whole collection under the lease: paths of one cache (or of every cache with a retention period or a
 * quota), signatures of caches whose keys changed recently, then storage. Recorded in gc_runs.
 */
export async function runCollection({ ctx, input }: { ctx: Context; input: GcRequest }): Promise<GcReport> {
  return withCollectorLease(ctx, async (lost) => {
    const startedAt = ctx.clock();
    const caches = input.cache
      ? [input.cache]
      : (await ctx.repo.listCaches()).filter((c) => c.retentionSeconds !== null || c.quotaBytes !== null);
    const reports: CacheGcReport[] = [];
    for (const cache of caches) {
      if (lost()) break;
      reports.push(await collectCache({ ctx, input: { cache, dryRun: input.dryRun, shouldStop: lost } }));
    }
    const signatures: GcReport["signatures"] = [];
    if (!input.dryRun) {
      for (const cache of input.cache ? [input.cache] : await ctx.repo.listCaches()) {
        if (lost()) break;
        if (!keysUnsettled(await ctx.repo.allSigningKeys(cache.id), ctx.clock())) continue;
        const pass = await maintainSignatures({ ctx, input: { cache } });
        if (pass.signed || pass.stripped)
          signatures.push({ cache: cache.name, signed: pass.signed, stripped: pass.stripped });
      }
    }
    const storage = await collectStorage({
      ctx,
      input: { dryRun: input.dryRun, deep: input.deep ?? false, shouldStop: lost },
    });
    const report: GcReport = {
      dryRun: input.dryRun,
      trigger: input.trigger,
      startedAt,
      finishedAt: ctx.clock(),
      caches: reports,
      signatures,
      storage,
      collectedPaths: reports.reduce((sum, r) => sum + r.collectedPaths, 0),
      freedBytes: storage.freedBytes,
    };
    await ctx.repo.addGcRun({
      cacheName: input.cache?.name ?? null,
      trigger: input.trigger,
      dryRun: input.dryRun,
      startedAt,
      finishedAt: report.finishedAt,
      report: JSON.stringify(report),
    });
    if (!input.dryRun)
      ctx.log.info(
        { collectedPaths: report.collectedPaths, freedBytes: report.freedBytes, trigger: input.trigger },
        "garbage collection done",
      );
    return report;
  });
}

export async function listGcRuns({
  ctx,
  input,
}: {
  ctx: Context;
  input: { limit: number; cache?: string | undefined };
}): Promise<(GcReport & { id: number; cache: string | null })[]> {
  const rows = await ctx.repo.listGcRuns(input.limit, input.cache);
  return rows.map((row) => ({ id: row.id, cache: row.cacheName, ...(JSON.parse(row.report) as GcReport) }));
}
