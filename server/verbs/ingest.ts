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
import { pipeline } from "node:stream/promises";
import { CompressStream, DecompressStream } from "zstd-napi";
import {
  encodeNix32,
  fingerprint,
  formatHash,
  formatListing,
  NarReader,
  NixFormatError,
  parseStorePathBasename,
  type StorePath,
  verifySignature,
} from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { AppError, badRequest, conflict } from "../errors.ts";
import { FeedTap, HashTap, pipeInto, TeeTap } from "../streams.ts";
import { signWithCacheKeys, upstreamKeys } from "./signing.ts";

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

const missingReferences = (cache: CacheRow, missing: string[]) =>
  new AppError(
    "missing_references",
    `references not in cache ${cache.name} (push them first, or send an upstream proof): ${missing.join(" ")}`,
    { missing },
  );

/** Which references must be present in the cache: all but the path itself and those proven upstream. */
function requiredReferences(cache: CacheRow, claim: PathClaim, upstream: UpstreamProof[]): string[] {
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
    if (existing.narHash !== claim.narHash) {
      throw conflict(
        `${claim.storePath.path} is already in cache ${cache.name} with a different NarHash (${existing.narHash})`,
      );
    }
    input.body.resume();
    return {
      storePath: claim.storePath.path,
      status: "already-present",
      narHash: existing.narHash,
      narSize: existing.narSize,
      fileHash: existing.fileHash,
      fileSize: existing.fileSize,
    };
  }
  const present = await ctx.repo.presentHashes(cache.id, required);
  const absent = required.filter((h) => !present.has(h));
  if (absent.length > 0)
    throw missingReferences(
      cache,
      claim.references.filter((r) => absent.some((h) => r.startsWith(h))),
    );

  const storageKey = `nar/${encodeNix32(randomBytes(20))}.nar.zst`;
  await ctx.repo.addPendingUpload(storageKey);
  let committed = false;
  try {
    const verified = await receiveNar(ctx, input, storageKey);
    const fp = fingerprint({ ...claim, storePath: claim.storePath.path }, cache.storeDir);
    const sigs = await signWithCacheKeys(ctx, cache.id, fp);
    const outcome = await ctx.repo.commitPath(
      {
        cacheId: cache.id,
        hash: claim.storePath.hash,
        storePath: claim.storePath.path,
        references: claim.references,
        requiredHashes: required,
        deriver: claim.deriver,
        system: claim.system,
        ca: claim.ca,
        sigs,
        pushedBy: input.pushedBy,
      },
      { ...verified, compression: "zstd", storageKey },
    );
    if (outcome.kind === "missing-references") {
      throw missingReferences(
        cache,
        claim.references.filter((r) => outcome.missing.some((h) => r.startsWith(h))),
      );
    }
    if (outcome.kind === "already-present" && outcome.narHash !== claim.narHash) {
      throw conflict(
        `${claim.storePath.path} is already in cache ${cache.name} with a different NarHash (${outcome.narHash})`,
      );
    }
    committed = outcome.kind === "committed" && !outcome.deduplicated;
    const kept = committed ? verified : await ctx.repo.path(cache.id, claim.storePath.hash);
    return {
      storePath: claim.storePath.path,
      status: committed ? "stored" : outcome.kind === "committed" ? "deduplicated" : "already-present",
      narHash: claim.narHash,
      narSize: claim.narSize,
      fileHash: kept?.fileHash ?? verified.fileHash,
      fileSize: kept?.fileSize ?? verified.fileSize,
    };
  } finally {
    if (!committed) await discard(ctx, storageKey);
  }
}

/** Deletes an object no row will own, then forgets it; if either step fails, cleanup finds it later. */
async function discard(ctx: Context, storageKey: string): Promise<void> {
  try {
    await ctx.storage.delete(storageKey);
    await ctx.repo.removePendingUpload(storageKey);
  } catch (error) {
    ctx.log.warn({ err: error, storageKey }, "could not discard an upload; cleanup will retry");
  }
}

interface VerifiedNar {
  narHash: string;
  narSize: number;
  fileHash: string;
  fileSize: number;
  listing: string;
}

/** Streams the body into storage while validating it; resolves only if it matches the claim. */
async function receiveNar(ctx: Context, input: IngestInput, storageKey: string): Promise<VerifiedNar> {
  const { claim } = input;
  const reader = new NarReader();
  const tooLong = () =>
    new AppError(
      "size_mismatch",
      `NAR is larger than the claimed NarSize ${claim.narSize} of ${claim.storePath.path}`,
    );
  const narTap = new HashTap(claim.narSize, tooLong);
  const feed = new FeedTap((chunk) => reader.update(chunk));
  const fileTap = new HashTap();
  // pipeInto owns every stream: a failure anywhere (client gone, bad NAR, storage down) tears all of them
  // down, and storage.put discards its partial object.
  const store = (output: Readable) => ctx.storage.put(storageKey, output);
  try {
    if (input.encoding === "zstd") {
      // Stored as sent; a decompressed copy feeds the validator on the side.
      const verify = new DecompressStream();
      const verifying = pipeline(verify, narTap, feed, async (source: AsyncIterable<Buffer>) => {
        for await (const _ of source);
      });
      await Promise.all([pipeInto(store, input.body, fileTap, new TeeTap(verify)), verifying]);
    } else {
      const compress = new CompressStream({ compressionLevel: ctx.settings.zstdLevel });
      await pipeInto(store, input.body, narTap, feed, compress, fileTap);
    }
  } catch (error) {
    throw asIngestError(error, claim);
  }
  let summary: ReturnType<NarReader["finish"]>;
  try {
    summary = reader.finish();
  } catch (error) {
    throw asIngestError(error, claim);
  }
  if (summary.narSize !== claim.narSize) {
    throw new AppError(
      "size_mismatch",
      `NarSize mismatch for ${claim.storePath.path}: claimed ${claim.narSize}, got ${summary.narSize}`,
    );
  }
  if (summary.narHash !== claim.narHash) {
    throw new AppError(
      "hash_mismatch",
      `NarHash mismatch for ${claim.storePath.path}: claimed ${claim.narHash}, got ${summary.narHash}`,
    );
  }
  return {
    narHash: summary.narHash,
    narSize: summary.narSize,
    fileHash: formatHash(fileTap.digest()),
    fileSize: fileTap.size,
    listing: formatListing(summary.listing),
  };
}

function asIngestError(error: unknown, claim: PathClaim): Error {
  if (error instanceof AppError) return error;
  if (error instanceof NixFormatError)
    return new AppError("invalid_nar", `invalid NAR for ${claim.storePath.path}: ${error.message}`);
  const { code, message } = error as { code?: string; message?: string };
  if (code === "ECONNRESET" || code === "ERR_STREAM_PREMATURE_CLOSE" || message === "aborted") {
    return badRequest(`upload of ${claim.storePath.path} was cut off before the end of its body`);
  }
  if (code?.startsWith("ZSTD") || /zstd|frame|corrupt|unknown header/i.test(message ?? "")) {
    return badRequest(`body of ${claim.storePath.path} is not valid zstd: ${message}`);
  }
  return error as Error;
}
