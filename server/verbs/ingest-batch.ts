// Many small paths in one upload: the same verification as ingestPath, with the per-path costs that do not
// depend on the NAR paid once per batch.
//
// Pushing a closure of small paths one request each cost the server ~3.5 ms of CPU per path here, most of it
// beside the NAR: the request itself, a pending-upload transaction, a commit transaction, the fsyncs waited
// for one path at a time. A batch records its pending uploads in one transaction, receives and stores its
// NARs a few at a time (their fsyncs overlap on the thread pool), and commits every verified path in one
// transaction, in the batch's order, so a path may refer to one before it in the same batch.
//
// Each entry gets its own result: one path's bad NAR, conflict or missing reference refuses that path (and
// those after it that refer to it), not the batch. What is not about one path (storage or database down)
// fails the whole batch, and nothing of it is kept.
import { Readable } from "node:stream";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { AppError, type ErrorCode } from "../errors.ts";
import {
  alreadyPresent,
  type BodyEncoding,
  type CommitInput,
  commitResult,
  discard,
  type IngestResult,
  newNarKey,
  type PathClaim,
  pathToCommit,
  receiveClaimed,
  requiredReferences,
  type UpstreamProof,
} from "./ingest.ts";
import { activeSecretKeys } from "./signing.ts";

/** One path of a batch, as the route parsed it: its claim and NAR body, or what is wrong with its entry. */
export type BatchEntry =
  | {
      storePath: string;
      claim: PathClaim;
      upstream: UpstreamProof[];
      encoding: BodyEncoding;
      body: Buffer;
    }
  | { storePath: string; problem: AppError };

export interface BatchRefusal {
  storePath: string;
  error: ErrorCode;
  /** The HTTP status a single upload of this path would have been answered with. */
  status: number;
  message: string;
}

export type BatchResult = IngestResult | BatchRefusal;

/** NARs of a batch received and stored at once: enough to overlap their fsyncs, few enough to bound memory. */
const RECEIVING_AT_ONCE = 8;

/** A path's refusal, counted as a refused upload is (the batch's own answer is a success). */
function refusal(ctx: Context, storePath: string, error: AppError): BatchRefusal {
  ctx.metrics?.ingestFailures.inc({ api: "batch", reason: error.code });
  return { storePath, error: error.code, status: error.status, message: error.message };
}

export async function ingestBatch({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; entries: AsyncIterable<BatchEntry>; pushedBy: number | null };
}): Promise<BatchResult[]> {
  const { cache } = input;
  // The whole body first: an entry that cannot be framed refuses the batch before anything is stored.
  const entries: BatchEntry[] = [];
  for await (const entry of input.entries) entries.push(entry);

  const results: (BatchResult | undefined)[] = entries.map(() => undefined);
  // Which of the batch's paths the cache has, in one query (one round trip on PostgreSQL, not one per path).
  const present = await ctx.repo.presentHashes(
    cache.id,
    entries.flatMap((entry) => ("claim" in entry ? [entry.claim.storePath.hash] : [])),
  );
  const seen = new Set<string>();
  const toReceive: {
    index: number;
    commit: Omit<CommitInput, "nar">;
    body: Buffer;
    encoding: BodyEncoding;
  }[] = [];
  for (const [index, entry] of entries.entries()) {
    try {
      if ("problem" in entry) throw entry.problem;
      const { claim } = entry;
      if (seen.has(claim.storePath.hash))
        throw new AppError("bad_request", `${claim.storePath.path} appears twice in the batch`);
      seen.add(claim.storePath.hash);
      const required = requiredReferences(cache, claim, entry.upstream);
      const existing = present.has(claim.storePath.hash)
        ? await ctx.repo.path(cache.id, claim.storePath.hash)
        : undefined;
      if (existing) {
        results[index] = alreadyPresent(ctx, cache, claim, existing);
        continue;
      }
      toReceive.push({
        index,
        commit: { cache, claim, required, extraSigs: [], pushedBy: input.pushedBy },
        body: entry.body,
        encoding: entry.encoding,
      });
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      results[index] = refusal(ctx, entry.storePath, error);
    }
  }

  const keys = toReceive.map(() => newNarKey());
  if (keys.length > 0) await ctx.repo.addPendingUploads(keys);
  const owned = new Set<string>();
  try {
    const verified: { index: number; commit: CommitInput }[] = [];
    let next = 0;
    let failed = false;
    const receiveRest = async () => {
      while (next < toReceive.length && !failed) {
        const at = next++;
        const item = toReceive[at]!;
        const storageKey = keys[at]!;
        const { claim } = item.commit;
        try {
          const body = Readable.from([item.body], { objectMode: false });
          const upload = { body, encoding: item.encoding, bodySize: item.body.length };
          const nar = await receiveClaimed(ctx, claim, upload, storageKey);
          verified.push({ index: item.index, commit: { ...item.commit, nar } });
        } catch (error) {
          if (!(error instanceof AppError)) {
            failed = true;
            throw error;
          }
          results[item.index] = refusal(ctx, claim.storePath.path, error);
        }
      }
    };
    // Every receiver has stopped before a failure goes on (and the finally below discards what they wrote).
    const receivers = await Promise.allSettled(
      Array.from({ length: Math.min(RECEIVING_AT_ONCE, toReceive.length) }, receiveRest),
    );
    for (const receiver of receivers) if (receiver.status === "rejected") throw receiver.reason;

    if (verified.length === 0) return results.map((result) => result!);
    // In the batch's order, so that a path is committed after the paths of the batch it refers to.
    verified.sort((a, b) => a.index - b.index);
    // The cache's signing keys, looked up once for the batch.
    const signingKeys = await activeSecretKeys(ctx, cache.id);
    const paths = await Promise.all(verified.map(({ commit }) => pathToCommit(ctx, commit, signingKeys)));
    const outcomes = await ctx.repo.commitPaths(
      verified.map(({ commit }, i) => ({ path: paths[i]!, nar: commit.nar })),
    );
    // The NARs now owned by committed paths, before anything below may throw: the finally deletes the rest.
    for (const [i, { commit }] of verified.entries()) {
      const outcome = outcomes[i]!;
      if (outcome.kind === "committed" && !outcome.deduplicated) owned.add(commit.nar.storageKey);
    }
    for (const [i, { index, commit }] of verified.entries()) {
      try {
        results[index] = await commitResult(ctx, commit, outcomes[i]!);
      } catch (error) {
        if (!(error instanceof AppError)) throw error;
        results[index] = refusal(ctx, commit.claim.storePath.path, error);
      }
    }
  } finally {
    for (const key of keys) if (!owned.has(key)) await discard(ctx, key);
  }
  return results.map((result) => result!);
}
