// Pushes from a stock Nix client (`nix copy --to http://…/<cache>`, `nix store copy-log`, `nix store sign`),
// which uploads a path in two requests: PUT nar/<FileHash>.nar.<ext>, then PUT <hash>.narinfo.
//
// The NAR PUT is verified as it streams (decoded, parsed as a NAR, hashed; its FileHash must match its name)
// and staged. The narinfo PUT is checked against the staged facts — Compression, FileHash, FileSize,
// NarHash, NarSize — and against the cache (references present, no different NarHash already there), then
// committed exactly as a native push: signed with the cache's key. The client's own Sig lines are kept only
// if they verify under the cache's or its upstream keys. Nothing a client claims is trusted unchecked.
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import {
  encodeNix32,
  type NarInfo,
  NixFormatError,
  parseNarInfo,
  parsePublicKey,
  parseStorePath,
  verifyNarInfo,
} from "../../nix/index.ts";
import { EXTENSION, parseNarFileName } from "../compression.ts";
import type { Context } from "../context.ts";
import type { CacheRow, NewNar } from "../db/repo.ts";
import { AppError, badRequest } from "../errors.ts";
import { checkReferencesPresent, commitClaim, differentNarHash, discard, type PathClaim } from "./ingest.ts";
import { receiveNar } from "./receive.ts";
import { upstreamKeys } from "./signing.ts";

function parseNarFile(file: string) {
  const named = parseNarFileName(file);
  if ("problem" in named) throw badRequest(named.problem);
  return named;
}

export async function stageNarUpload({
  ctx,
  input,
}: {
  ctx: Context;
  /** bodySize: the PUT's Content-Length, when sent (Nix sends it). */
  input: { cache: CacheRow; file: string; body: Readable; bodySize?: number | undefined };
}): Promise<{ file: string; narHash: string; narSize: number }> {
  const { cache, file } = input;
  const named = parseNarFile(file);
  const storedExtension = named.compression === "none" ? EXTENSION.zstd : EXTENSION[named.compression];
  const storageKey = `nar/${encodeNix32(randomBytes(20))}.nar${storedExtension}`;
  await ctx.repo.addPendingUpload(storageKey);
  let staged = false;
  try {
    const nar = await receiveNar({
      ctx,
      input: {
        body: input.body,
        compression: named.compression,
        storageKey,
        what: `nar/${file}`,
        ...(input.bodySize === undefined ? {} : { bodySize: input.bodySize }),
      },
    });
    if (nar.received.fileHash !== named.fileHash) {
      throw new AppError(
        "hash_mismatch",
        `nar/${file}: its name says FileHash ${named.fileHash}, but its bytes hash to ${nar.received.fileHash}`,
      );
    }
    const replaced = await ctx.repo.stageNar({
      cacheId: cache.id,
      file,
      storageKey,
      receivedCompression: nar.received.compression,
      receivedFileHash: nar.received.fileHash,
      receivedFileSize: nar.received.fileSize,
      compression: nar.stored.compression,
      fileHash: nar.stored.fileHash,
      fileSize: nar.stored.fileSize,
      narHash: nar.narHash,
      narSize: nar.narSize,
      listing: nar.listing,
    });
    staged = true;
    if (replaced) await discard(ctx, replaced);
    return { file, narHash: nar.narHash, narSize: nar.narSize };
  } finally {
    if (!staged) await discard(ctx, storageKey);
  }
}

/** Whether HEAD nar/<file> should say 200: this cache serves it, or has it staged. */
export async function narKnown({ ctx, input }: { ctx: Context; input: { cache: CacheRow; file: string } }) {
  const named = parseNarFileName(input.file);
  if ("problem" in named) return undefined;
  const staged = await ctx.repo.stagedNar(input.cache.id, input.file);
  if (staged) return { size: staged.receivedFileSize };
  const nar = await ctx.repo.narByFileHash(input.cache.id, named.fileHash);
  return nar ? { size: nar.fileSize } : undefined;
}

function mismatch(field: string, claimed: string | number, actual: string | number, what: string): AppError {
  const code = field.endsWith("Size") ? "size_mismatch" : "hash_mismatch";
  return new AppError(
    code,
    `${field} mismatch for ${what}: narinfo says ${claimed}, the uploaded NAR has ${actual}`,
  );
}

export async function putNarInfo({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; hash: string; text: string; pushedBy: number | null };
}) {
  const { cache } = input;
  let info: NarInfo;
  try {
    info = parseNarInfo(input.text, cache.storeDir);
  } catch (error) {
    if (error instanceof NixFormatError) throw badRequest(`invalid narinfo: ${error.message}`);
    throw error;
  }
  const storePath = parseStorePath(info.storePath, cache.storeDir);
  if (storePath.hash !== input.hash)
    throw badRequest(`narinfo for ${info.storePath} PUT at ${input.hash}.narinfo`);
  const claim: PathClaim = {
    storePath,
    narHash: info.narHash,
    narSize: info.narSize,
    references: info.references,
    deriver: info.deriver ?? null,
    system: info.system ?? null,
    ca: info.ca ?? null,
  };
  const what = storePath.path;
  const trusted = [
    ...(await ctx.repo.signingKeys(cache.id)).map((k) => parsePublicKey(k.publicKey)),
    ...upstreamKeys(cache),
  ];
  const extraSigs = verifyNarInfo(info, trusted, cache.storeDir);

  // A narinfo for a path already here (nix store sign re-PUTs it): it must describe the same thing.
  const existing = await ctx.repo.path(cache.id, storePath.hash);
  if (existing) {
    if (existing.narHash !== info.narHash) throw differentNarHash(cache, claim, existing.narHash);
    if (existing.narSize !== info.narSize) throw mismatch("NarSize", info.narSize, existing.narSize, what);
    const refs = [...info.references].sort().join(" ");
    if (existing.references !== refs) {
      throw badRequest(`References of ${what} differ from those already in cache ${cache.name}`);
    }
    return { storePath: what, status: "already-present" as const };
  }

  const required = claim.references.filter((r) => r !== storePath.basename).map((r) => r.slice(0, 32));
  await checkReferencesPresent(ctx, cache, claim, required);

  if (!info.url.startsWith("nar/")) throw badRequest(`narinfo URL ${info.url} is not under nar/`);
  const file = info.url.slice("nar/".length);
  const named = parseNarFile(file);
  const staged = await ctx.repo.stagedNar(cache.id, file);
  let nar: NewNar;
  if (staged) {
    if (info.compression !== staged.receivedCompression) {
      throw mismatch("Compression", info.compression, staged.receivedCompression, what);
    }
    if (info.fileHash !== undefined && info.fileHash !== staged.receivedFileHash) {
      throw mismatch("FileHash", info.fileHash, staged.receivedFileHash, what);
    }
    if (info.fileSize !== undefined && info.fileSize !== staged.receivedFileSize) {
      throw mismatch("FileSize", info.fileSize, staged.receivedFileSize, what);
    }
    nar = narColumns(staged, staged.listing);
  } else {
    // Not uploaded now: a NAR this cache already serves (Nix skips the PUT when HEAD nar/… says 200).
    const known = await ctx.repo.narByFileHash(cache.id, named.fileHash);
    if (!known)
      throw new AppError("not_found", `${info.url} was never uploaded: PUT the NAR before its narinfo`);
    nar = narColumns(known, "");
  }
  if (info.narSize !== nar.narSize) throw mismatch("NarSize", info.narSize, nar.narSize, what);
  if (info.narHash !== nar.narHash) throw mismatch("NarHash", info.narHash, nar.narHash, what);

  const result = await commitClaim({
    ctx,
    input: { cache, claim, required, nar, extraSigs, pushedBy: input.pushedBy, stagedNarId: staged?.id },
  });
  if (staged && result.status !== "stored") await discard(ctx, staged.storageKey);
  return result;
}

function narColumns(row: Omit<NewNar, "listing">, listing: string): NewNar {
  const { narHash, narSize, compression, fileHash, fileSize, storageKey } = row;
  return { narHash, narSize, compression, fileHash, fileSize, storageKey, listing };
}

/** PUT nix-cache-info: accepted when it agrees with the cache (Nix writes one when it sees none). */
export function checkCacheInfo(cache: CacheRow, text: string): void {
  const storeDir = /^StoreDir: (.*)$/m.exec(text)?.[1]?.trim();
  if (storeDir !== undefined && storeDir !== cache.storeDir) {
    throw badRequest(`cache ${cache.name} has StoreDir ${cache.storeDir}; this client uses ${storeDir}`);
  }
}
