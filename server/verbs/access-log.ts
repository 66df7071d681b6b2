// Records reads cheaply: "last access" of paths (what retention-based garbage collection looks at) and the
// per-day counters of /stats (narinfo hits and misses, NAR downloads and bytes).
//
// Writing a row per narinfo or NAR request would put a database write on the hot read path. Instead each
// process adds reads up in memory and flushes them in one transaction every few seconds (FLUSH_MS), or
// sooner when many distinct paths pile up (MAX_PENDING). A path's last access is therefore the time of the
// flush that carried it, late by at most FLUSH_MS, and a crash loses at most FLUSH_MS of access times and
// counters: both are advisory (retention is measured in days; counters are statistics). Replicas each flush
// their own reads; the updates commute (last write is "now" either way; counters are added).
import type { AccessBatch, Repo } from "../db/repo.ts";

export const FLUSH_MS = 10_000;
const MAX_PENDING = 20_000;
const DAY_MS = 86_400_000;

export interface AccessLog {
  narinfo(cacheId: number, hash: string, found: boolean): void;
  nar(cacheId: number, narId: number, bytes: number): void;
  /** Writes what was recorded so far. */
  flush(): Promise<void>;
  /** Stops the timer after a last flush. */
  stop(): Promise<void>;
}

export function dayOf(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS;
}

export function createAccessLog(deps: {
  repo: Repo;
  clock: () => number;
  onError: (error: unknown) => void;
  flushMs?: number;
}): AccessLog {
  let narinfos = new Map<number, Set<string>>();
  let nars = new Map<number, Set<number>>();
  let counters = new Map<string, AccessBatch["counters"][number]>();
  let pending = 0;
  let flushing: Promise<void> = Promise.resolve();

  // The last counter used, found again without building its key (every read of a busy cache lands here).
  // A flush swaps `counters` for a new map, which makes `last` stale.
  let last: AccessBatch["counters"][number] | undefined;
  let lastIn: Map<string, AccessBatch["counters"][number]> | undefined;
  const counter = (cacheId: number) => {
    const day = dayOf(deps.clock());
    if (last && lastIn === counters && last.cacheId === cacheId && last.day === day) return last;
    const key = `${cacheId}/${day}`;
    let c = counters.get(key);
    if (!c) {
      c = { cacheId, day, narinfoHits: 0, narinfoMisses: 0, narDownloads: 0, narBytes: 0 };
      counters.set(key, c);
    }
    last = c;
    lastIn = counters;
    return c;
  };
  const add = <T>(map: Map<number, Set<T>>, cacheId: number, value: T) => {
    let set = map.get(cacheId);
    if (!set) {
      set = new Set();
      map.set(cacheId, set);
    }
    if (!set.has(value)) {
      set.add(value);
      pending++;
    }
  };

  const flush = (): Promise<void> => {
    flushing = flushing.then(async () => {
      if (narinfos.size === 0 && nars.size === 0 && counters.size === 0) return;
      const batch: AccessBatch = { at: deps.clock(), narinfos, nars, counters: [...counters.values()] };
      narinfos = new Map();
      nars = new Map();
      counters = new Map();
      pending = 0;
      try {
        await deps.repo.recordAccess(batch);
      } catch (error) {
        deps.onError(error);
      }
    });
    return flushing;
  };

  const timer = setInterval(() => void flush(), deps.flushMs ?? FLUSH_MS);
  timer.unref();

  return {
    narinfo(cacheId, hash, found) {
      const c = counter(cacheId);
      if (found) {
        c.narinfoHits++;
        add(narinfos, cacheId, hash);
      } else c.narinfoMisses++;
      if (pending >= MAX_PENDING) void flush();
    },
    nar(cacheId, narId, bytes) {
      const c = counter(cacheId);
      c.narDownloads++;
      c.narBytes += bytes;
      add(nars, cacheId, narId);
      if (pending >= MAX_PENDING) void flush();
    },
    flush,
    async stop() {
      clearInterval(timer);
      await flush();
    },
  };
}
