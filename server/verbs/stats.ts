// Statistics of one cache: what it holds (paths, the NAR bytes they describe, the bytes stored for them and
// what deduplication saves) and how it is used (narinfo hits and misses, NAR downloads and bytes per UTC
// day, as the access log adds them up; see access-log.ts).
//
//   narBytes      sum of NarSize over the cache's paths (what clients unpack)
//   fileBytes     sum of FileSize over its paths (what serving every path once sends)
//   storedBytes   sum of FileSize over the distinct NAR objects its paths use (what the quota counts)
//   dedupSavings  fileBytes - storedBytes (identical NARs stored once within the cache)
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { dayOf } from "./access-log.ts";

const DAY_MS = 86_400_000;

export async function cacheStats({ ctx, input }: { ctx: Context; input: { cache: CacheRow; days: number } }) {
  await ctx.access?.flush();
  const sizes = await ctx.repo.cacheSizes(input.cache.id);
  const since = dayOf(ctx.clock()) - (input.days - 1) * DAY_MS;
  const rows = await ctx.repo.dailyStats(input.cache.id, since);
  const daily = rows.map((r) => ({
    day: new Date(r.day).toISOString().slice(0, 10),
    narinfoHits: r.narinfoHits,
    narinfoMisses: r.narinfoMisses,
    narDownloads: r.narDownloads,
    narBytes: r.narBytes,
  }));
  const total = daily.reduce(
    (t, d) => ({
      narinfoHits: t.narinfoHits + d.narinfoHits,
      narinfoMisses: t.narinfoMisses + d.narinfoMisses,
      narDownloads: t.narDownloads + d.narDownloads,
      narBytes: t.narBytes + d.narBytes,
    }),
    { narinfoHits: 0, narinfoMisses: 0, narDownloads: 0, narBytes: 0 },
  );
  const lookups = total.narinfoHits + total.narinfoMisses;
  return {
    cache: input.cache.name,
    paths: sizes.paths,
    pinnedPaths: sizes.pinnedPaths,
    narBytes: sizes.narBytes,
    fileBytes: sizes.fileBytes,
    nars: sizes.nars,
    storedBytes: sizes.storedBytes,
    dedupSavings: sizes.fileBytes - sizes.storedBytes,
    sharedNars: sizes.sharedNars,
    logs: { count: sizes.logs, bytes: sizes.logBytes },
    quotaBytes: input.cache.quotaBytes,
    quotaUsed: input.cache.quotaBytes ? sizes.storedBytes / input.cache.quotaBytes : null,
    retentionSeconds: input.cache.retentionSeconds,
    days: input.days,
    total: { ...total, hitRate: lookups > 0 ? total.narinfoHits / lookups : null },
    daily,
  };
}
