// Verified pushes: the one way a path enters a cache.
//
// A push is a claim (store path, NarHash, NarSize, references, …) plus a NAR body, plain or zstd. The body is
// streamed once: its bytes are parsed and validated as a NAR (nix/nar.ts), hashed, compressed to zstd if the
// client sent it plain, and written to storage under a fresh key recorded as a pending upload first (so a crash
// leaves an object cleanup can find). Only when NarHash and NarSize match the claim does the server sign the
// fingerprint and commit path + NAR + signature in one transaction (closure completeness re-checked inside it).
// Anything else deletes what was written and answers a 4xx that names the problem.
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import {
  encodeNix32,
  fingerprint,
  parseStorePathBasename,
  type SecretKey,
  type StorePath,
  signFingerprint,
  verifySignature,
} from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow, CommitOutcome, NewNar, NewPath, PathRecord } from "../db/repo.ts";
import { AppError, badRequest, conflict } from "../errors.ts";
import { type ReceivedNar, receiveNar } from "./receive.ts";
import { activeSecretKeys, upstreamKeys } from "./signing.ts";

export interface PathClaim {
  storePath: StorePath;
  narHash: string;
  narSize: number;
  /** Basenames. */
  references: string[];
  deriver: string | null;
  system: string | null;
  ca: string | null;
}

/** A reference the cache lacks, proven to be served upstream by a signature under one of the cache's upstream keys. */
export interface UpstreamProof {
  storePath: string;
  narHash: string;
  narSize: number;
  references: string[];
  sigs: string[];
}

export type BodyEncoding = "none" | "zstd";

export interface IngestInput {
  cache: CacheRow;
  claim: PathClaim;
  upstream: UpstreamProof[];
  body: Readable;
  encoding: BodyEncoding;
  pushedBy: number | null;
}

export interface IngestResult {
  storePath: string;
  status: "stored" | "deduplicated" | "already-present";
  narHash: string;
  narSize: number;
  fileHash: string;
  fileSize: number;
}

const missingReferences = (cache: CacheRow, claim: PathClaim, missingHashes: string[]) => {
  const missing = claim.references.filter((r) => missingHashes.some((h) => r.startsWith(h)));
  return new AppError(
    "missing_references",
    `references not in cache ${cache.name} (push them first, or send an upstream proof): ${missing.join(" ")}`,
    { missing },
  );
};

/** Which references must be present in the cache: all but the path itself and those proven upstream. */
export function requiredReferences(cache: CacheRow, claim: PathClaim, upstream: UpstreamProof[]): string[] {
  const keys = upstreamKeys(cache);
  const proven = new Set<string>();
  for (const proof of upstream) {
    const path = proof.storePath.slice(proof.storePath.lastIndexOf("/") + 1);
    if (!claim.references.includes(path)) continue;
    const fp = fingerprint(proof, cache.storeDir);
    if (proof.sigs.some((sig) => verifySignature(keys, fp, sig))) proven.add(path);
    else
      throw badRequest(
        `upstream proof for ${proof.storePath} has no signature by a trusted upstream key of cache ${cache.name}`,
      );
  }
  return claim.references
    .filter((ref) => ref !== claim.storePath.basename && !proven.has(ref))
    .map((ref) => parseStorePathBasename(ref, cache.storeDir).hash);
}

export async function ingestPath({
  ctx,
  input,
}: {
  ctx: Context;
  input: IngestInput;
}): Promise<IngestResult> {
  const { cache, claim } = input;
  const required = requiredReferences(cache, claim, input.upstream);

  // Cheap refusals before reading a byte of the body.
  const existing = await ctx.repo.path(cache.id, claim.storePath.hash);
  if (existing) {
    const result = alreadyPresent(ctx, cache, claim, existing);
    input.body.resume();
    return result;
  }
  await checkReferencesPresent(ctx, cache, claim, required);

  const storageKey = newNarKey();
  await ctx.repo.addPendingUpload(storageKey);
  let owned = false;
  try {
    const nar = await receiveClaimed(ctx, claim, { body: input.body, encoding: input.encoding }, storageKey);
    const result = await commitClaim({
      ctx,
      input: { cache, claim, required, nar, extraSigs: [], pushedBy: input.pushedBy },
    });
    owned = result.status === "stored";
    return result;
  } finally {
    if (!owned) await discard(ctx, storageKey);
  }
}

/** A fresh storage key for a pushed NAR (what is stored is zstd). */
export const newNarKey = (): string => `nar/${encodeNix32(randomBytes(20))}.nar.zst`;

/** The answer to a claim for a path the cache has: already-present, or a conflict when its NAR differs. */
export function alreadyPresent(
  ctx: Context,
  cache: CacheRow,
  claim: PathClaim,
  existing: PathRecord,
): IngestResult {
  if (existing.narHash !== claim.narHash) throw differentNarHash(cache, claim, existing.narHash);
  ctx.metrics?.ingestPaths.inc({ result: "already-present" });
  return { storePath: claim.storePath.path, status: "already-present", ...pick(existing) };
}

/**
 * Receives a claimed path's NAR into storage under `storageKey` (receive.ts) and checks it against the
 * claim: the NAR row to commit with it. `bodySize` is the body's declared length, when known.
 */
export async function receiveClaimed(
  ctx: Context,
  claim: PathClaim,
  upload: { body: Readable; encoding: BodyEncoding; bodySize?: number },
  storageKey: string,
): Promise<NewNar> {
  const received = await receiveNar({
    ctx,
    input: {
      body: upload.body,
      compression: upload.encoding,
      storageKey,
      narSizeLimit: claim.narSize,
      ...(upload.bodySize === undefined ? {} : { bodySize: upload.bodySize }),
      what: claim.storePath.path,
    },
  });
  checkClaim(claim, received);
  return {
    ...received.stored,
    narHash: received.narHash,
    narSize: received.narSize,
    listing: received.listing,
    storageKey,
  };
}

export interface CommitInput {
  cache: CacheRow;
  claim: PathClaim;
  /** Reference hashes that must be present (see requiredReferences). */
  required: string[];
  /** The verified NAR, as stored. */
  nar: NewNar;
  /** Sig lines to keep beside the cache's own (already verified by the caller). */
  extraSigs: string[];
  pushedBy: number | null;
  stagedNarId?: number | undefined;
}

/**
 * Signs a verified claim with the cache's keys and commits it with its NAR in one transaction. "stored" means
 * the NAR object now belongs to the path; otherwise the caller still owns (and should discard) it.
 */
export async function commitClaim({
  ctx,
  input,
}: {
  ctx: Context;
  input: CommitInput;
}): Promise<IngestResult> {
  const outcome = await ctx.repo.commitPath(await pathToCommit(ctx, input), input.nar);
  return commitResult(ctx, input, outcome);
}

/**
 * The path row of a verified claim, signed with the cache's keys (beside the extra Sig lines kept); `keys`
 * are the cache's active signing keys when the caller has them already (a batch looks them up once).
 */
export async function pathToCommit(ctx: Context, input: CommitInput, keys?: SecretKey[]): Promise<NewPath> {
  const { cache, claim } = input;
  const fp = fingerprint({ ...claim, storePath: claim.storePath.path }, cache.storeDir);
  const own = (keys ?? (await activeSecretKeys(ctx, cache.id))).map((key) => signFingerprint(key, fp));
  const sigs = [...new Set([...own, ...input.extraSigs])];
  return {
    cacheId: cache.id,
    hash: claim.storePath.hash,
    storePath: claim.storePath.path,
    references: claim.references,
    requiredHashes: input.required,
    deriver: claim.deriver,
    system: claim.system,
    ca: claim.ca,
    sigs,
    pushedBy: input.pushedBy,
    stagedNarId: input.stagedNarId,
  };
}

/** What a commit's outcome means for the pusher: the result, or the AppError that names the problem. */
export async function commitResult(
  ctx: Context,
  input: CommitInput,
  outcome: CommitOutcome,
): Promise<IngestResult> {
  const { cache, claim } = input;
  if (outcome.kind === "missing-references") throw missingReferences(cache, claim, outcome.missing);
  if (outcome.kind === "already-present" && outcome.narHash !== claim.narHash) {
    throw differentNarHash(cache, claim, outcome.narHash);
  }
  const stored = outcome.kind === "committed" && !outcome.deduplicated;
  const status = stored ? "stored" : outcome.kind === "committed" ? "deduplicated" : "already-present";
  ctx.metrics?.ingestPaths.inc({ result: status });
  if (stored) ctx.metrics?.ingestStoredBytes.inc(undefined, input.nar.fileSize);
  const kept = stored ? input.nar : await ctx.repo.path(cache.id, claim.storePath.hash);
  return {
    storePath: claim.storePath.path,
    status,
    narHash: claim.narHash,
    narSize: claim.narSize,
    fileHash: kept?.fileHash ?? input.nar.fileHash,
    fileSize: kept?.fileSize ?? input.nar.fileSize,
  };
}

export async function checkReferencesPresent(
  ctx: Context,
  cache: CacheRow,
  claim: PathClaim,
  required: string[],
) {
  const present = await ctx.repo.presentHashes(cache.id, required);
  const absent = required.filter((h) => !present.has(h));
  if (absent.length > 0) throw missingReferences(cache, claim, absent);
}

function pick(record: { narHash: string; narSize: number; fileHash: string; fileSize: number }) {
  const { narHash, narSize, fileHash, fileSize } = record;
  return { narHash, narSize, fileHash, fileSize };
}

export function differentNarHash(cache: CacheRow, claim: PathClaim, stored: string): AppError {
  return conflict(
    `${claim.storePath.path} is already in cache ${cache.name} with a different NarHash (${stored})`,
  );
}

/** Deletes an object no row will own, then forgets it; if either step fails, cleanup finds it later. */
export async function discard(ctx: Context, storageKey: string): Promise<void> {
  try {
    await ctx.storage.delete(storageKey);
    await ctx.repo.removePendingUpload(storageKey);
  } catch (error) {
    ctx.log.warn({ err: error, storageKey }, "could not discard an upload; cleanup will retry");
  }
}

function checkClaim(claim: PathClaim, nar: ReceivedNar): void {
  const path = claim.storePath.path;
  if (nar.narSize !== claim.narSize) {
    throw new AppError(
      "size_mismatch",
      `NarSize mismatch for ${path}: claimed ${claim.narSize}, got ${nar.narSize}`,
    );
  }
  if (nar.narHash !== claim.narHash) {
    throw new AppError(
      "hash_mismatch",
      `NarHash mismatch for ${path}: claimed ${claim.narHash}, got ${nar.narHash}`,
    );
  }
}
