// What substituters read. Every answer comes from rows written at ingest: nothing is signed, hashed or
// compressed on the way out. NARs stream from storage as stored, or redirect to a presigned URL.
import type { Readable } from "node:stream";
import { formatNarInfo, type NarInfo } from "../../nix/index.ts";
import { narFileName, parseNarFileName } from "../compression.ts";
import type { Context } from "../context.ts";
import type { CacheRow, NarRow, PathRecord } from "../db/repo.ts";
import { bufferedBody } from "../storage/small-objects.ts";
import type { ByteRange } from "../storage/storage.ts";

export function narUrl(fileHash: string, compression: string): string {
  return `nar/${narFileName(fileHash, compression)}`;
}

export function narInfoOf(record: PathRecord): NarInfo {
  return {
    storePath: record.storePath,
    url: narUrl(record.fileHash, record.compression),
    compression: record.compression,
    fileHash: record.fileHash,
    fileSize: record.fileSize,
    narHash: record.narHash,
    narSize: record.narSize,
    references: record.references === "" ? [] : record.references.split(" "),
    ...(record.deriver ? { deriver: record.deriver } : {}),
    ...(record.system ? { system: record.system } : {}),
    sigs: record.sigs === "" ? [] : record.sigs.split("\n"),
    ...(record.ca ? { ca: record.ca } : {}),
  };
}

export function cacheInfoText(cache: CacheRow): string {
  return `StoreDir: ${cache.storeDir}\nWantMassQuery: 1\nPriority: ${cache.priority}\n`;
}

/**
 * Rendered narinfos, by the record they were rendered from: the repository hands out the same record object
 * while it remembers a path (repo.ts, path), so a hot narinfo is formatted (and encoded, for the fast lane)
 * once, not on every request.
 */
const rendered = new WeakMap<PathRecord, { text: string; bytes?: Buffer }>();

function renderedOf(record: PathRecord): { text: string; bytes?: Buffer } {
  let r = rendered.get(record);
  if (!r) {
    r = { text: formatNarInfo(narInfoOf(record)) };
    rendered.set(record, r);
  }
  return r;
}

export async function narInfoText({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string };
}) {
  const record = await ctx.repo.path(input.cache.id, input.hash);
  ctx.access?.narinfo(input.cache.id, input.hash, record !== undefined);
  return record ? renderedOf(record).text : undefined;
}

/**
 * narInfoText without waiting, as UTF-8: the bytes when the repository remembers the path, null when it
 * remembers there is none, undefined when it does not know.
 */
export function rememberedNarInfo({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string };
}): Buffer | null | undefined {
  const record = ctx.repo.peekPath(input.cache.id, input.hash);
  if (record === undefined) return undefined;
  ctx.access?.narinfo(input.cache.id, input.hash, record !== null);
  if (record === null) return null;
  const r = renderedOf(record);
  r.bytes ??= Buffer.from(r.text);
  return r.bytes;
}

/** The NAR behind a narinfo URL file name such as `<nix32 FileHash>.nar.zst`, if this cache serves it. */
export async function findNar({ ctx, input }: { ctx: Context; input: { cache: CacheRow; file: string } }) {
  const named = parseNarFileName(input.file);
  if ("problem" in named) return undefined;
  const nar = await ctx.repo.narByFileHash(input.cache.id, named.fileHash);
  return nar && nar.compression === named.compression ? nar : undefined;
}

/**
 * A NAR's bytes without waiting, as findNar and openNar would give them: when the repository remembers its
 * row and storage holds its bytes in memory (the read recorded as openNar records it); undefined otherwise.
 */
export function heldNar({ ctx, input }: { ctx: Context; input: { cache: CacheRow; file: string } }) {
  const named = parseNarFileName(input.file);
  if ("problem" in named) return undefined;
  const nar = ctx.repo.peekNarByFileHash(input.cache.id, named.fileHash);
  if (!nar || nar.compression !== named.compression) return undefined;
  const held = ctx.storage.peek(nar.storageKey);
  if (held) ctx.access?.nar(input.cache.id, nar.id, nar.fileSize);
  return held;
}

export type NarBody =
  | { kind: "redirect"; url: string }
  | { kind: "stream"; body: Readable; size: number; range?: { start: number; end: number } };

export async function openNar({
  ctx,
  input,
}: {
  ctx: Context;
  input: { nar: NarRow; range?: ByteRange; cacheId?: number };
}) {
  const { nar, range } = input;
  if (input.cacheId !== undefined) {
    const bytes = range
      ? Math.min(range.end ?? nar.fileSize - 1, nar.fileSize - 1) - range.start + 1
      : nar.fileSize;
    ctx.access?.nar(input.cacheId, nar.id, Math.max(0, bytes));
  }
  // A small NAR this process holds is answered at once: a redirect would cost the client a second request
  // (s3.ts). One it does not hold yet, but would keep, is read from storage once and kept (get keeps it).
  const held = range ? undefined : ctx.storage.peek(nar.storageKey);
  if (held) return { kind: "stream", body: bufferedBody(held), size: held.length } satisfies NarBody;
  const kept = !range && nar.fileSize <= ctx.storage.keepsUpTo;
  if (ctx.settings.redirectNars && !kept) {
    const url = await ctx.storage.presignGet(nar.storageKey, ctx.settings.presignSeconds);
    if (url) return { kind: "redirect", url } satisfies NarBody;
  }
  const body = await ctx.storage.get(nar.storageKey, range);
  if (!body) throw new Error(`NAR ${nar.fileHash} is recorded but missing from storage at ${nar.storageKey}`);
  if (!range) return { kind: "stream", body, size: nar.fileSize } satisfies NarBody;
  const end = Math.min(range.end ?? nar.fileSize - 1, nar.fileSize - 1);
  return {
    kind: "stream",
    body,
    size: end - range.start + 1,
    range: { start: range.start, end },
  } satisfies NarBody;
}

export async function listingText({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string };
}) {
  return ctx.repo.listing(input.cache.id, input.hash);
}

export async function openLog({ ctx, input }: { ctx: Context; input: { cache: CacheRow; drv: string } }) {
  const log = await ctx.repo.log(input.cache.id, input.drv);
  if (!log) return undefined;
  const body = await ctx.storage.get(log.storageKey);
  return body ? { body, size: log.size } : undefined;
}

export async function realisationText({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; outputId: string };
}) {
  return ctx.repo.realisation(input.cache.id, input.outputId);
}
