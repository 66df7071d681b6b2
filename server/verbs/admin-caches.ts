// Cache administration beyond creation: listing, settings, soft delete, restore and purge.
//
// Deleting a cache is two steps, so a typo cannot destroy one: a soft delete (confirmed by repeating the
// name) stops it serving at once — Nix and the API see "no such cache" — while its name stays taken and its
// data stays intact; `restore` undoes it. A purge (also confirmed, and only of a soft-deleted cache) removes
// its paths, keys, logs and realisations in one transaction; NARs no other cache uses are left to the
// garbage collector, which removes them after its grace period (see gc.ts), so downloads in flight finish.
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { badRequest, conflict, notFound } from "../errors.ts";
import { allows, type Principal } from "./auth.ts";
import { CACHE_NAME, type CacheDescription, checkUpstreamKeys, describeCache } from "./caches.ts";
import { discard } from "./ingest.ts";

export interface CacheSettingsPatch {
  public?: boolean | undefined;
  priority?: number | undefined;
  description?: string | undefined;
  upstreamKeys?: string[] | undefined;
  retentionSeconds?: number | null | undefined;
  quotaBytes?: number | null | undefined;
}

export interface CacheListing extends CacheDescription {
  deletedAt: number | null;
}

/** The caches the caller may read: public ones, and private ones its token may pull from. */
export async function listCaches({
  ctx,
  input,
}: {
  ctx: Context;
  input: { principal: Principal | null; includeDeleted: boolean };
}): Promise<CacheListing[]> {
  const rows = await ctx.repo.listCaches({ includeDeleted: input.includeDeleted });
  const out: CacheListing[] = [];
  for (const cache of rows) {
    const p = input.principal;
    const admin = p !== null && allows(p, cache.name, "admin");
    if (cache.deletedAt !== null && !admin) continue;
    if (!cache.public && !(p && allows(p, cache.name, "pull"))) continue;
    out.push({ ...(await describeCache({ ctx, input: { cache } })), deletedAt: cache.deletedAt });
  }
  return out;
}

export async function updateCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; patch: CacheSettingsPatch };
}): Promise<CacheDescription> {
  const { patch } = input;
  if (patch.upstreamKeys) checkUpstreamKeys(patch.upstreamKeys);
  if (Object.values(patch).every((v) => v === undefined)) return describeCache({ ctx, input });
  const updated = await ctx.repo.updateCache(input.cache.id, {
    ...(patch.public !== undefined ? { public: patch.public } : {}),
    ...(patch.priority !== undefined ? { priority: patch.priority } : {}),
    ...(patch.description !== undefined ? { description: patch.description } : {}),
    ...(patch.upstreamKeys !== undefined ? { upstreamKeys: patch.upstreamKeys.join("\n") } : {}),
    ...(patch.retentionSeconds !== undefined ? { retentionSeconds: patch.retentionSeconds } : {}),
    ...(patch.quotaBytes !== undefined ? { quotaBytes: patch.quotaBytes } : {}),
  });
  if (!updated) throw notFound(`no cache named ${input.cache.name}`);
  ctx.log.info({ cache: updated.name, patch }, "cache settings changed");
  return describeCache({ ctx, input: { cache: updated } });
}

/** A cache by name, soft-deleted or not (restore and purge act on deleted ones). */
export async function findAnyCache({ ctx, input }: { ctx: Context; input: { name: string } }) {
  const cache = CACHE_NAME.test(input.name) ? await ctx.repo.anyCacheByName(input.name) : undefined;
  if (!cache) throw notFound(`no cache named ${input.name}`);
  return cache;
}

function checkConfirmation(cache: CacheRow, confirm: string | undefined, what: string) {
  if (confirm !== cache.name) {
    throw badRequest(`to ${what} cache ${cache.name}, confirm with its name: ?confirm=${cache.name}`);
  }
}

export async function softDeleteCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; confirm: string | undefined };
}) {
  const { cache } = input;
  checkConfirmation(cache, input.confirm, "delete");
  if (cache.deletedAt !== null) return { name: cache.name, deletedAt: cache.deletedAt };
  const updated = await ctx.repo.updateCache(cache.id, { deletedAt: ctx.clock() });
  ctx.log.info({ cache: cache.name }, "cache soft-deleted");
  return { name: cache.name, deletedAt: updated?.deletedAt ?? null };
}

export async function restoreCache({ ctx, input }: { ctx: Context; input: { cache: CacheRow } }) {
  if (input.cache.deletedAt === null) throw conflict(`cache ${input.cache.name} is not deleted`);
  const updated = await ctx.repo.updateCache(input.cache.id, { deletedAt: null });
  ctx.log.info({ cache: input.cache.name }, "cache restored");
  return describeCache({ ctx, input: { cache: updated ?? input.cache } });
}

export async function purgeCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; confirm: string | undefined };
}) {
  const { cache } = input;
  checkConfirmation(cache, input.confirm, "purge");
  if (cache.deletedAt === null) {
    throw conflict(
      `cache ${cache.name} must be deleted first (DELETE /api/v1/caches/${cache.name}?confirm=${cache.name})`,
    );
  }
  const result = await ctx.repo.purgeCache(cache.id, ctx.clock());
  for (const key of result.objects) await discard(ctx, key);
  ctx.log.info({ cache: cache.name, paths: result.paths }, "cache purged");
  return { name: cache.name, purgedPaths: result.paths, removedObjects: result.objects.length };
}
