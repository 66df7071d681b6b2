// Paths of a cache, for administrators: list and search (keyset paging, newest first), show one, pin and
// unpin (a pin keeps the path and its closure through every garbage collection), and delete one.
//
// Deleting never breaks a closure either: a path other paths of the cache refer to is refused (409, naming
// them) unless the caller asks for its referrers to go too (`referrers: true`), in which case the path and
// everything that refers to it, transitively, go together, referrers first, in one transaction. A pinned
// path, or one a pin's closure contains, is refused: unpin first.
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { conflict, notFound } from "../errors.ts";
import { closureOf, deletePlannedPaths, referenceHashes, referrersFirst } from "./gc.ts";
import { narInfoOf } from "./serve.ts";

export async function listPaths({
  ctx,
  input,
}: {
  ctx: Context;
  input: {
    cache: CacheRow;
    search?: string | undefined;
    pinned?: boolean | undefined;
    cursor?: number | undefined;
    limit: number;
  };
}) {
  const rows = await ctx.repo.listPaths(input.cache.id, {
    search: input.search,
    pinned: input.pinned,
    before: input.cursor,
    limit: input.limit + 1,
  });
  const page = rows.slice(0, input.limit);
  return {
    paths: page.map(({ id: _id, ...row }) => row),
    next: rows.length > input.limit ? String(page[page.length - 1]!.id) : null,
  };
}

export async function showPath({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string; showPusher: boolean };
}) {
  const detail = await ctx.repo.pathDetail(input.cache.id, input.hash);
  if (!detail) throw notFound(`cache ${input.cache.name} has no path ${input.hash}`);
  const info = narInfoOf(detail);
  let pushedBy: { id: number; name: string } | null = null;
  if (input.showPusher && detail.pushedBy !== null) {
    const token = await ctx.repo.tokenById(detail.pushedBy);
    pushedBy = { id: detail.pushedBy, name: token?.name ?? "(deleted token)" };
  }
  return {
    hash: detail.hash,
    storePath: info.storePath,
    narinfo: {
      url: info.url,
      compression: info.compression,
      fileHash: info.fileHash,
      fileSize: info.fileSize,
      narHash: info.narHash,
      narSize: info.narSize,
      references: info.references,
      deriver: info.deriver ?? null,
      system: info.system ?? null,
      ca: info.ca ?? null,
      sigs: info.sigs,
    },
    pinned: detail.pinned,
    createdAt: detail.createdAt,
    lastAccessedAt: detail.lastAccessedAt,
    ...(input.showPusher ? { pushedBy } : {}),
  };
}

export async function setPin({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string; pinned: boolean };
}) {
  if (!(await ctx.repo.setPinned(input.cache.id, input.hash, input.pinned)))
    throw notFound(`cache ${input.cache.name} has no path ${input.hash}`);
  ctx.log.info({ cache: input.cache.name, hash: input.hash, pinned: input.pinned }, "pin changed");
  return { hash: input.hash, pinned: input.pinned };
}

export async function deletePath({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string; referrers: boolean };
}) {
  const { cache } = input;
  const plannedAt = ctx.clock();
  const graph = await ctx.repo.pathGraph(cache.id);
  const byHash = new Map(graph.map((n) => [n.hash, n]));
  const target = byHash.get(input.hash);
  if (!target) throw notFound(`cache ${cache.name} has no path ${input.hash}`);

  const referrersOf = new Map<string, string[]>();
  for (const n of graph)
    for (const ref of referenceHashes(n)) {
      const list = referrersOf.get(ref);
      if (list) list.push(n.hash);
      else referrersOf.set(ref, [n.hash]);
    }
  const doomed = new Set<string>([target.hash]);
  const stack = [target.hash];
  while (stack.length > 0)
    for (const r of referrersOf.get(stack.pop()!) ?? [])
      if (!doomed.has(r)) {
        doomed.add(r);
        stack.push(r);
      }
  const referrers = [...doomed].filter((h) => h !== target.hash).map((h) => byHash.get(h)!.storePath);
  if (referrers.length > 0 && !input.referrers) {
    throw conflict(
      `${target.storePath} is referenced by ${referrers.length} other path(s) of cache ${cache.name}; ` +
        "delete them first, or ask for its referrers to be deleted too (referrers=true)",
      { referrers: referrers.slice(0, 100) },
    );
  }
  const pinnedClosure = closureOf(
    graph.filter((n) => n.pinned).map((n) => n.hash),
    byHash,
  );
  const protectedOnes = [...doomed].filter((h) => pinnedClosure.has(h)).map((h) => byHash.get(h)!.storePath);
  if (protectedOnes.length > 0) {
    throw conflict(
      `refusing to delete pinned paths or paths a pin keeps alive: ${protectedOnes.slice(0, 20).join(" ")}`,
      {
        pinned: protectedOnes.slice(0, 100),
      },
    );
  }
  const ordered = referrersFirst([...doomed].map((h) => byHash.get(h)!));
  const result = await deletePlannedPaths(ctx, cache, graph, ordered, plannedAt, { allOrNothing: true });
  if (result.deleted.length === 0)
    throw conflict(
      `${target.storePath} was pinned or referenced by a new path meanwhile; nothing was deleted`,
    );
  ctx.log.info({ cache: cache.name, paths: result.deleted.length }, "paths deleted");
  return {
    deleted: result.deleted.map((n) => n.storePath),
    narBytes: result.deleted.reduce((sum, n) => sum + n.narSize, 0),
    unreferencedNars: result.unreferencedNars,
  };
}
