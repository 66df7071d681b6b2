// The smaller writes and the batch query of a push: which paths a cache lacks, build logs, realisations.
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { encodeNix32, isStorePathHash } from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { AppError, badRequest } from "../errors.ts";
import { CountTap, pipeInto } from "../streams.ts";
import { discard } from "./ingest.ts";

const MAX_LOG_BYTES = 256 * 1024 * 1024;
const MAX_REALISATION_BYTES = 1024 * 1024;

/** Given store paths, basenames or bare hashes, the ones (as given) whose path this cache lacks. */
export async function findMissing({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; paths: string[] };
}) {
  const hashes = input.paths.map((p) => {
    const base = p.slice(p.lastIndexOf("/") + 1);
    const hash = base.slice(0, 32);
    if (!isStorePathHash(hash) || (base.length > 32 && base[32] !== "-")) {
      throw badRequest(`not a store path, basename or hash: ${JSON.stringify(p)}`);
    }
    return hash;
  });
  const present = await ctx.repo.presentHashes(input.cache.id, hashes);
  return { missing: input.paths.filter((_, i) => !present.has(hashes[i]!)) };
}

export async function putLog({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; drv: string; body: Readable };
}) {
  const storageKey = `log/${encodeNix32(randomBytes(20))}`;
  await ctx.repo.addPendingUpload(storageKey);
  const tap = new CountTap(
    MAX_LOG_BYTES,
    () => new AppError("payload_too_large", `build log larger than ${MAX_LOG_BYTES} bytes`),
  );
  let committed = false;
  try {
    await pipeInto(
      (output) => ctx.storage.put(storageKey, output, { contentType: "text/plain; charset=utf-8" }),
      input.body,
      tap,
    );
    const previous = await ctx.repo.putLog(input.cache.id, input.drv, storageKey, tap.size);
    committed = true;
    if (previous) await ctx.storage.delete(previous).catch(() => {});
  } finally {
    if (!committed) await discard(ctx, storageKey);
  }
}

/** Realisation ids: `sha256:<hex>!<output>` (clients up to 2.34) or `<drv basename>/<output>` (build-trace-v2). */
const REALISATION_ID =
  /^(sha256:[0-9a-f]{64}![A-Za-z0-9+\-._?=]+|[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+\.drv\/[A-Za-z0-9+\-._?=]+)$/;

export async function putRealisation({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; outputId: string; content: string };
}) {
  if (!REALISATION_ID.test(input.outputId)) {
    throw badRequest(
      `invalid realisation id ${JSON.stringify(input.outputId)}: want sha256:<hex>!<output> or <drv>/<output>`,
    );
  }
  if (input.content.length > MAX_REALISATION_BYTES)
    throw new AppError("payload_too_large", "realisation larger than 1 MiB");
  let parsed: unknown;
  try {
    parsed = JSON.parse(input.content);
  } catch {
    throw badRequest("realisation is not valid JSON");
  }
  if (
    typeof parsed !== "object" ||
    parsed === null ||
    typeof (parsed as { outPath?: unknown }).outPath !== "string"
  ) {
    throw badRequest("realisation must be a JSON object with an outPath");
  }
  await ctx.repo.putRealisation(input.cache.id, input.outputId, input.content);
}
