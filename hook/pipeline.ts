// The push pipeline shared by `nixstash daemon` and `nixstash push`: from a few store paths (roots) to a
// cache that holds their closures.
//
//   1. expand the roots' closures in the local store (`nix path-info --json --recursive`, references first);
//   2. set aside paths signed by an upstream key the cache accepts (cache.nixos.org-1 by default): upstream
//      serves them, and their infos go along as proofs with the paths that reference them;
//   3. ask the cache which of the rest it lacks, in batches (one POST /missing per `missingChunk` paths);
//   4. upload what is missing, `concurrency` at a time, each path only after the uploads of its references
//      succeeded (the server refuses a path whose references it lacks: closure completeness) or, for small
//      paths, in the same batch after them (many small paths per request, committed in order);
//   5. report per path (stored, deduplicated, already there, upstream, failed, retry) and per root (done,
//      failed, retry) with the reason.
//
// "failed" means the server (or the local store) refused this path for good, e.g. a NarHash mismatch; paths
// that reference it fail with "reference … was not pushed". "retry" means nothing is wrong with the path
// (server down, 5xx, bad token): the caller tries again later. A pusher is reused across batches; a path
// being uploaded for one batch is awaited, not uploaded again, by another.
import { lstatSync } from "node:fs";
import {
  DEFAULT_STORE_DIR,
  fingerprint,
  type PublicKey,
  parseStorePath,
  verifySignature,
} from "../nix/index.ts";
import { type BatchItemResult, type Client, PushError, type PushPathInfo } from "./client.ts";
import {
  type LocalPathInfo,
  derivationOutputs as localDerivationOutputs,
  invalidPaths as localInvalidPaths,
  pathInfos as localPathInfos,
} from "./local-store.ts";
import { type NarSource, narSource } from "./nar-dump.ts";

/** NAR bytes between two progress events: often enough for a progress line, rare enough to cost nothing. */
const PROGRESS_STEP = 1 << 20;

export type PathOutcomeKind =
  | "stored"
  | "deduplicated"
  | "already-present"
  | "present"
  | "upstream"
  | "failed"
  | "retry";

export interface PathOutcome {
  path: string;
  kind: PathOutcomeKind;
  narSize: number;
  /** failed/retry: the server's error code (or a local one) */
  code?: string;
  /** failed/retry: the server's message (or a local one) */
  reason?: string;
}

export interface RootOutcome {
  path: string;
  kind: "done" | "failed" | "retry";
  /** done: how the root itself got there */
  how?: PathOutcomeKind;
  code?: string;
  reason?: string;
}

export interface BatchPlan {
  roots: readonly string[];
  closure: number;
  upstream: number;
  present: number;
  upload: { path: string; narSize: number }[];
}

export interface BatchReport {
  roots: RootOutcome[];
  /** Every closure path this batch dealt with. */
  paths: PathOutcome[];
}

export interface PushEvents {
  /** These roots are in the cache already, and so their closures: nothing of theirs is looked at or sent. */
  cached?(roots: readonly string[]): void;
  planned?(plan: BatchPlan): void;
  started?(path: string, narSize: number): void;
  /** `bytes` more of the NAR of `path` went out. */
  progress?(path: string, bytes: number): void;
  /** An upload this pusher ran has finished, well or not. */
  finished?(outcome: PathOutcome, ms: number): void;
}

/** What the pipeline needs of the local Nix store (the real one by default). */
export interface LocalStore {
  pathInfos(paths: readonly string[], options: { closure: boolean }): Promise<LocalPathInfo[]>;
  invalidPaths(paths: readonly string[]): Promise<string[]>;
  derivationOutputs(drvs: readonly string[]): Promise<{ outputs: string[]; missing: string[] }>;
  /** The NAR of a path, serialised when the upload reads it (hook/nar-dump.ts). */
  narSource(path: string): NarSource;
  /** Whether the path exists on disk (lstat), a cheap hint of validity; without it, always ask the store. */
  onDisk?(path: string): boolean;
}

export const nixStore: LocalStore = {
  pathInfos: localPathInfos,
  invalidPaths: localInvalidPaths,
  derivationOutputs: localDerivationOutputs,
  narSource,
  onDisk: (path) => lstatSync(path, { throwIfNoEntry: false }) !== undefined,
};

export interface PusherOptions {
  client: Client;
  concurrency: number;
  /** The upstream keys whose signatures mark a path as served upstream (asked for once per batch). */
  upstreamKeys: () => Promise<PublicKey[]>;
  /**
   * The upstream keys the cache itself accepts (its description). A root the cache has may lack references
   * there that upstream serves under these keys; it needs nothing from this pusher only if this pusher leaves
   * those keys' paths to upstream too. Without this, every root's closure is looked at.
   */
  cacheUpstreamKeys?: () => Promise<PublicKey[]>;
  zstdLevel?: number;
  store?: LocalStore;
  storeDir?: string;
  /** Aborting stops new uploads and cuts running ones (they come back as "retry"). */
  signal?: AbortSignal;
  missingChunk?: number;
  events?: PushEvents;
}

const SUCCESS = new Set<PathOutcomeKind>([
  "stored",
  "deduplicated",
  "already-present",
  "present",
  "upstream",
]);
export const isSuccess = (outcome: { kind: string }) => SUCCESS.has(outcome.kind as PathOutcomeKind);

/** Errors that say nothing about the path itself: the server is away, overloaded, or refuses the token. */
function isTransient(error: PushError): boolean {
  return error.retryable || error.status === 401 || error.status === 403;
}

function describeError(error: unknown): { code: string; reason: string; transient: boolean } {
  if (error instanceof PushError)
    return { code: error.code, reason: error.message, transient: isTransient(error) };
  return { code: "local_error", reason: (error as Error).message ?? String(error), transient: true };
}

/** The outcome of an upload an error ended: failed when the error is about the path, else worth a retry. */
function errorOutcome(info: LocalPathInfo, error: unknown): PathOutcome {
  const { code, reason, transient } = describeError(error);
  return { path: info.path, narSize: info.narSize, kind: transient ? "retry" : "failed", code, reason };
}

/** The outcome of a path not pushed because a reference was not (`dep`, that reference's outcome). */
function referenceFailed(info: LocalPathInfo, dep: PathOutcome): PathOutcome {
  return {
    path: info.path,
    narSize: info.narSize,
    kind: dep.kind === "failed" ? "failed" : "retry",
    code: "reference_failed",
    reason: `reference ${dep.path} was not pushed: ${dep.reason}`,
  };
}

/**
 * A NAR source whose reads are reported (in steps of PROGRESS_STEP bytes, and the rest at the end) and whose
 * failure is told apart from the upload's own: a dump that fails may mean the path left the store.
 */
function observed(source: NarSource, on: { bytes(n: number): void; failed(error: Error): void }): NarSource {
  return function* counted(scratch) {
    const pieces = source(scratch);
    let unreported = 0;
    try {
      for (let next = pieces.next(); !next.done; next = pieces.next()) {
        unreported += next.value.length;
        if (unreported >= PROGRESS_STEP) {
          on.bytes(unreported);
          unreported = 0;
        }
        yield next.value;
      }
    } catch (error) {
      on.failed(error as Error);
      throw error;
    } finally {
      // Cut off early (the upload failed): the dump closes the file it was reading.
      pieces.return?.();
    }
    if (unreported > 0) on.bytes(unreported);
  };
}

/**
 * NARs up to this size go up in batches, many paths per request (POST /paths): one request, one pending-upload
 * and one commit transaction on the server for all of them, where a request each cost client and server
 * ~6 ms of CPU per small path, ten times what the NAR itself costs. Bigger NARs go one request each, streamed.
 */
const BATCH_PATH_MAX = 1 << 20;
/** A batch closes at this many paths, or NAR bytes; the server takes at most 1000 entries and 32 MiB. */
const BATCH_PATHS_MAX = 64;
const BATCH_BYTES_MAX = 4 << 20;

/** What one upload costs beyond its NAR bytes (its requests, its commit), in NAR bytes. */
const UPLOAD_OVERHEAD_BYTES = 256 * 1024;

/**
 * Upload order, longest chain first. Uploads start as their references are in the cache; when more are ready
 * than may run at once, the one that heads the most work goes first: its weight is its NAR size (plus a fixed
 * cost) and the largest weight among the uploads that refer to it. In plain closure order, the one big NAR
 * of a closure started only after the many small paths queued before it, and the paths that refer to it
 * were left for the end, running one after another while the machine had cores to spare.
 */
export function criticalPathWeights(toUpload: readonly LocalPathInfo[]): Map<string, number> {
  const uploading = new Set(toUpload.map((info) => info.path));
  const dependents = new Map<string, LocalPathInfo[]>();
  for (const info of toUpload)
    for (const ref of info.references) {
      if (ref === info.path || !uploading.has(ref)) continue;
      const list = dependents.get(ref);
      if (list) list.push(info);
      else dependents.set(ref, [info]);
    }
  const weights = new Map<string, number>();
  // Depth first without recursion (a chain may be thousands of paths long): a path is weighed once all its
  // dependents are. A path met again before it is weighed would be a cycle, which store paths cannot form
  // (self-references aside); it counts as weightless rather than looping.
  const entered = new Set<string>();
  for (const start of toUpload) {
    const stack = [start];
    while (stack.length > 0) {
      const info = stack[stack.length - 1]!;
      if (weights.has(info.path)) {
        stack.pop();
        continue;
      }
      entered.add(info.path);
      let waiting = false;
      for (const dependent of dependents.get(info.path) ?? [])
        if (!weights.has(dependent.path) && !entered.has(dependent.path)) {
          stack.push(dependent);
          waiting = true;
        }
      if (waiting) continue;
      let heaviest = 0;
      for (const dependent of dependents.get(info.path) ?? [])
        heaviest = Math.max(heaviest, weights.get(dependent.path) ?? 0);
      weights.set(info.path, info.narSize + UPLOAD_OVERHEAD_BYTES + heaviest);
      stack.pop();
    }
  }
  return weights;
}

/**
 * At most `limit` holders at once; a free place goes to the waiter of highest priority (the earliest among
 * equals). It is handed over on the event loop's next turn, not within the release: what a holder's end
 * makes ready (the uploads that waited for its path) queues first, in the same turn, and can outweigh the
 * waiters that were there before. Handed over at once, the place went to whoever already waited: measure 6 of
 * issue 7 had the 300 MiB path of its workload, whose references ended with a batch, wait ~0.5 s behind a
 * 40 MiB path of little weight that took the place that batch freed.
 */
export function createSemaphore(limit: number) {
  let active = 0;
  const waiters: { priority: number; wake: () => void }[] = [];
  const handOver = () => {
    const next = waiters.shift();
    if (next) next.wake();
    else active--;
  };
  return async (priority = 0): Promise<() => void> => {
    if (active >= limit)
      await new Promise<void>((wake) => {
        let at = waiters.length;
        while (at > 0 && waiters[at - 1]!.priority < priority) at--;
        waiters.splice(at, 0, { priority, wake });
      });
    else active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      setImmediate(handOver);
    };
  };
}

export function createPusher(options: PusherOptions) {
  const store = options.store ?? nixStore;
  const storeDir = options.storeDir ?? DEFAULT_STORE_DIR;
  const events = options.events ?? {};
  const acquire = createSemaphore(options.concurrency);
  const missingChunk = options.missingChunk ?? 2000;
  /** Uploads running for any batch, so that two batches never upload the same path at once. */
  const running = new Map<string, Promise<PathOutcome>>();

  const baseName = (path: string) => path.slice(path.lastIndexOf("/") + 1);

  /** Whether a root the cache has needs nothing more: every upstream key the cache accepts is one of ours. */
  async function cachedRootsSuffice(): Promise<boolean> {
    if (!options.cacheUpstreamKeys) return false;
    const [ours, theirs] = await Promise.all([options.upstreamKeys(), options.cacheUpstreamKeys()]);
    const same = (a: PublicKey, b: PublicKey) =>
      a.name === b.name && Buffer.from(a.key).equals(Buffer.from(b.key));
    return theirs.every((key) => ours.some((own) => same(own, key)));
  }

  /** Which of `paths` the cache lacks, `missingChunk` paths a query. */
  async function askMissing(paths: readonly string[]): Promise<string[]> {
    const lacking: string[] = [];
    for (let i = 0; i < paths.length; i += missingChunk)
      lacking.push(...(await options.client.missing(paths.slice(i, i + missingChunk))));
    return lacking;
  }

  function signedUpstream(info: LocalPathInfo, keys: readonly PublicKey[]): boolean {
    if (keys.length === 0 || !info.signatures?.length) return false;
    let fp: string;
    try {
      fp = fingerprint(
        {
          storePath: info.path,
          narHash: info.narHash,
          narSize: info.narSize,
          references: info.references.map(baseName),
        },
        storeDir,
      );
    } catch {
      return false;
    }
    return info.signatures.some((sig) => verifySignature(keys, fp, sig));
  }

  const pushInfo = (info: LocalPathInfo, proofs: PushPathInfo["upstream"]): PushPathInfo => ({
    storePath: info.path,
    narHash: info.narHash,
    narSize: info.narSize,
    references: info.references,
    deriver: info.deriver,
    ca: info.ca,
    upstream: proofs?.length ? proofs : undefined,
  });

  /** Why an upload is not to start now (the batch halted, or the push was stopped), as its outcome. */
  function notNow(info: LocalPathInfo, isHalted: () => string | undefined): PathOutcome | undefined {
    const base = { path: info.path, narSize: info.narSize };
    const halted = isHalted();
    if (halted) return { ...base, kind: "retry", code: "halted", reason: halted };
    if (options.signal?.aborted) return { ...base, kind: "retry", code: "aborted", reason: "stopped" };
    return undefined;
  }

  /** The outcome of a path whose NAR could not be read: gone from the store, or worth another try. */
  async function dumpFailed(info: LocalPathInfo, error: Error): Promise<PathOutcome> {
    const base = { path: info.path, narSize: info.narSize };
    const gone = await store.invalidPaths([info.path]).catch(() => []);
    return gone.length
      ? { ...base, kind: "failed", code: "not_in_store", reason: `${info.path} left the local store` }
      : { ...base, kind: "retry", code: "dump_failed", reason: error.message };
  }

  async function uploadOne(
    info: LocalPathInfo,
    proofs: PushPathInfo["upstream"],
    isHalted: () => string | undefined,
    priority: number,
  ): Promise<PathOutcome> {
    const release = await acquire(priority);
    const base = { path: info.path, narSize: info.narSize };
    try {
      const stop = notNow(info, isHalted);
      if (stop) return stop;
      events.started?.(info.path, info.narSize);
      const began = Date.now();
      let dumpError: Error | undefined;
      const nar = observed(store.narSource(info.path), {
        bytes: (n) => events.progress?.(info.path, n),
        failed: (error) => {
          dumpError = error;
        },
      });
      let outcome: PathOutcome;
      try {
        const result = await options.client.upload(pushInfo(info, proofs), nar, {
          zstdLevel: options.zstdLevel ?? 3,
          signal: options.signal,
        });
        outcome = { ...base, kind: result.status };
      } catch (error) {
        if (dumpError && !options.signal?.aborted) outcome = await dumpFailed(info, dumpError);
        else outcome = errorOutcome(info, error);
      }
      events.finished?.(outcome, Date.now() - began);
      return outcome;
    } finally {
      release();
    }
  }

  // ---- batches of small paths
  interface BatchSlot {
    info: LocalPathInfo;
    proofs: PushPathInfo["upstream"];
    isHalted: () => string | undefined;
    resolve: (outcome: PathOutcome) => void;
  }
  interface Batch {
    slots: BatchSlot[];
    paths: Set<string>;
    bytes: number;
  }
  /** Off once the server has said it takes no batches (one from before them): small paths go one by one. */
  let batching = true;
  /**
   * The batch that small paths join until it gets its place among the uploads. A path may join it while one
   * of its references is in it too: the server commits a batch in order.
   */
  let forming: Batch | undefined;
  const batchable = (info: LocalPathInfo) => batching && info.narSize <= BATCH_PATH_MAX;
  /** Paths that wait for a path to join a batch (so that they may join it too), by the path they wait for. */
  const placementWaiters = new Map<string, (() => void)[]>();
  const whenPlaced = (path: string) =>
    new Promise<void>((resolve) => {
      const list = placementWaiters.get(path);
      if (list) list.push(resolve);
      else placementWaiters.set(path, [resolve]);
    });
  const placed = (path: string) => {
    const list = placementWaiters.get(path);
    placementWaiters.delete(path);
    for (const wake of list ?? []) wake();
  };
  /** Whether `info` can join the forming batch, where `ref` is waiting (else it waits for ref's outcome). */
  const joinsRefInBatch = (info: LocalPathInfo, ref: string) =>
    forming?.paths.has(ref) === true && hasRoom(forming, info);
  const hasRoom = (batch: Batch, info: LocalPathInfo) =>
    batch.slots.length < BATCH_PATHS_MAX && batch.bytes + info.narSize <= BATCH_BYTES_MAX;

  function uploadInBatch(
    info: LocalPathInfo,
    proofs: PushPathInfo["upstream"],
    isHalted: () => string | undefined,
    priority: number,
  ): Promise<PathOutcome> {
    if (!forming || !hasRoom(forming, info)) {
      forming = { slots: [], paths: new Set(), bytes: 0 };
      void sendWhenFree(forming, priority);
    }
    const batch = forming;
    const outcome = new Promise<PathOutcome>((resolve) => {
      batch.slots.push({ info, proofs, isHalted, resolve });
      batch.paths.add(info.path);
      batch.bytes += info.narSize;
    });
    placed(info.path);
    return outcome;
  }

  async function sendWhenFree(batch: Batch, priority: number): Promise<void> {
    let unsupported = false;
    const release = await acquire(priority);
    try {
      // Paths made ready by the same answer (or the same plan) join before it closes.
      await new Promise((resolve) => setImmediate(resolve));
      if (forming === batch) forming = undefined;
      unsupported = await sendBatch(batch.slots);
    } finally {
      release();
    }
    if (unsupported) {
      batching = false;
      // In the batch's order: a path in it may refer to one before it.
      for (const slot of batch.slots) slot.resolve(await uploadOne(slot.info, slot.proofs, slot.isHalted, 0));
    }
  }

  /** Uploads one batch and settles its paths; true (settling nothing) if the server takes no batches. */
  async function sendBatch(slots: BatchSlot[]): Promise<boolean> {
    const live: BatchSlot[] = [];
    for (const slot of slots) {
      const stop = notNow(slot.info, slot.isHalted);
      if (stop) slot.resolve(stop);
      else live.push(slot);
    }
    if (live.length === 0) return false;
    for (const { info } of live) events.started?.(info.path, info.narSize);
    const began = Date.now();
    let results: BatchItemResult[];
    try {
      results = await options.client.uploadBatch(
        live.map(({ info, proofs }) => ({
          info: pushInfo(info, proofs),
          nar: observed(store.narSource(info.path), {
            bytes: (n) => events.progress?.(info.path, n),
            failed: () => {},
          }),
        })),
        { zstdLevel: options.zstdLevel ?? 3, signal: options.signal },
      );
    } catch (error) {
      if (error instanceof PushError && error.code === "batch_unsupported") return true;
      for (const { info, resolve } of live) {
        const outcome = errorOutcome(info, error);
        events.finished?.(outcome, Date.now() - began);
        resolve(outcome);
      }
      return false;
    }
    const settled = new Map<string, PathOutcome>();
    for (const [i, { info, resolve }] of live.entries()) {
      const one = results[i]!;
      let outcome: PathOutcome;
      if ("result" in one) outcome = { path: info.path, narSize: info.narSize, kind: one.result.status };
      else if ("sourceError" in one) outcome = await dumpFailed(info, one.sourceError);
      else {
        // Refused for a reference refused earlier in the same batch: said as a path pushed alone says it.
        const ref = info.references.map((r) => settled.get(r)).find((o) => o && !isSuccess(o));
        outcome =
          one.refused.code === "missing_references" && ref
            ? referenceFailed(info, ref)
            : errorOutcome(info, one.refused);
      }
      settled.set(info.path, outcome);
      events.finished?.(outcome, Date.now() - began);
      resolve(outcome);
    }
    return false;
  }

  /** Pushes the closures of `roots`; never throws for a problem with a path, the server or the store. */
  async function push(roots: readonly string[]): Promise<BatchReport> {
    const rootOutcomes = new Map<string, RootOutcome>();
    const pathOutcomes = new Map<string, PathOutcome>();
    const report = (): BatchReport => ({
      roots: roots.map((r) => rootOutcomes.get(r)!),
      paths: [...pathOutcomes.values()],
    });
    const settleAll = (kind: "retry" | "failed", code: string, reason: string) => {
      for (const r of roots) if (!rootOutcomes.has(r)) rootOutcomes.set(r, { path: r, kind, code, reason });
    };

    const valid: string[] = [];
    for (const root of new Set(roots)) {
      try {
        parseStorePath(root, storeDir);
        valid.push(root);
      } catch (error) {
        rootOutcomes.set(root, {
          path: root,
          kind: "failed",
          code: "invalid_path",
          reason: (error as Error).message,
        });
      }
    }

    // A root the cache has comes with its whole closure: the server takes a path only after its references
    // (or their upstream proofs), and its garbage collection never breaks a closure. So the roots are asked
    // about first, in one small query, and those the cache has are done without asking the local store for
    // their closures (a Nix command, ~25 ms of start-up and the closure's size in JSON): a push of what is
    // already there, or the daemon's batch of builds another builder pushed first, costs one request. Not
    // when this pusher wants paths in the cache that the cache leaves to upstream (`--upstream-keys none`
    // against a cache that trusts cache.nixos.org): then the closures are looked at, as below.
    let lacking: string[];
    try {
      lacking = (await cachedRootsSuffice()) ? await askMissing(valid) : valid;
    } catch (error) {
      const { code, reason } = describeError(error);
      settleAll("retry", code, reason);
      return report();
    }
    const lacks = new Set(lacking);
    const toExpand = valid.filter((root) => lacks.has(root));
    const cached = valid.filter((root) => !lacks.has(root));
    for (const root of cached) rootOutcomes.set(root, { path: root, kind: "done", how: "present" });
    if (cached.length > 0) events.cached?.(cached);
    if (toExpand.length === 0) return report();

    let infos: LocalPathInfo[] | undefined;
    try {
      // One Nix command in the usual case (~25 ms of Nix start-up each). The validity check comes first
      // only when a root is not on disk (`nix path-info` would try to substitute an invalid path, from
      // the network), or after path-info refused, to tell the roots that left the store from the others.
      let refused: unknown;
      if (toExpand.every((root) => store.onDisk?.(root) ?? false)) {
        try {
          infos = await store.pathInfos(toExpand, { closure: true });
        } catch (error) {
          refused = error ?? new Error("nix path-info failed");
        }
      }
      if (infos === undefined) {
        const invalid = new Set(await store.invalidPaths(toExpand));
        if (refused !== undefined && invalid.size === 0) throw refused;
        for (const root of invalid)
          rootOutcomes.set(root, {
            path: root,
            kind: "failed",
            code: "not_in_store",
            reason: `${root} is not a valid path in the local store (never built here, or garbage-collected)`,
          });
        infos = await store.pathInfos(
          toExpand.filter((r) => !invalid.has(r)),
          { closure: true },
        );
      }
    } catch (error) {
      settleAll("retry", "local_error", `cannot query the local store: ${(error as Error).message}`);
      return report();
    }
    if (infos.length === 0) return report();

    let keys: PublicKey[];
    const byPath = new Map(infos.map((info) => [info.path, info]));
    const upstream = new Set<string>();
    let missing: Set<string>;
    try {
      keys = await options.upstreamKeys();
      for (const info of infos) if (signedUpstream(info, keys)) upstream.add(info.path);
      const candidates = infos.filter((info) => !upstream.has(info.path)).map((info) => info.path);
      missing = new Set(await askMissing(candidates));
    } catch (error) {
      const { code, reason } = describeError(error);
      settleAll("retry", code, reason);
      return report();
    }

    const toUpload = infos.filter((info) => missing.has(info.path));
    for (const info of infos) {
      if (upstream.has(info.path))
        pathOutcomes.set(info.path, { path: info.path, kind: "upstream", narSize: info.narSize });
      else if (!missing.has(info.path))
        pathOutcomes.set(info.path, { path: info.path, kind: "present", narSize: info.narSize });
    }
    events.planned?.({
      roots,
      closure: infos.length,
      upstream: upstream.size,
      present: infos.length - upstream.size - toUpload.length,
      upload: toUpload.map((info) => ({ path: info.path, narSize: info.narSize })),
    });

    const weights = criticalPathWeights(toUpload);
    // A failure that is not the path's fault (server gone) stops this batch from starting more uploads.
    let halted: string | undefined;
    const tasks = new Map<string, Promise<PathOutcome>>();
    /** Outcomes of this push's tasks as they settle (before anything awaiting them resumes). */
    const outcomes = new Map<string, PathOutcome>();
    const task = (info: LocalPathInfo): Promise<PathOutcome> => {
      let promise = tasks.get(info.path);
      if (promise) return promise;
      promise = (async (): Promise<PathOutcome> => {
        const refs = info.references.filter((ref) => ref !== info.path && missing.has(ref));
        // Each reference pushed, or (for a small path) waiting in the batch this path is about to join; checked
        // again after any wait, until one pass over them waited for nothing, so joining follows at once.
        for (let waited = true; waited; ) {
          waited = false;
          for (const ref of refs) {
            const pending = task(byPath.get(ref)!);
            const known = outcomes.get(ref);
            if (known) {
              if (!isSuccess(known)) return referenceFailed(info, known);
              continue;
            }
            if (batchable(info) && joinsRefInBatch(info, ref)) continue;
            waited = true;
            const refInfo = byPath.get(ref)!;
            if (batchable(info) && batchable(refInfo)) {
              // Woken as soon as the reference joins a batch, which this path may then join too: a chain of
              // small paths goes up in one batch, not one round trip per link.
              await Promise.race([pending, whenPlaced(ref)]);
              continue;
            }
            const dep = await pending;
            if (!isSuccess(dep)) return referenceFailed(info, dep);
          }
        }
        let upload = running.get(info.path);
        if (!upload) {
          const proofs = info.references
            .filter((ref) => upstream.has(ref) && ref !== info.path)
            .map((ref) => {
              const proof = byPath.get(ref)!;
              return {
                storePath: proof.path,
                narHash: proof.narHash,
                narSize: proof.narSize,
                references: proof.references,
                sigs: proof.signatures ?? [],
              };
            });
          const send = batchable(info) ? uploadInBatch : uploadOne;
          upload = send(info, proofs, () => halted, weights.get(info.path) ?? 0).finally(() =>
            running.delete(info.path),
          );
          running.set(info.path, upload);
        }
        const outcome = await upload;
        if (outcome.kind === "retry" && !halted) halted = outcome.reason;
        return outcome;
      })();
      void promise.then((outcome) => {
        outcomes.set(info.path, outcome);
        placed(info.path); // wakes (and forgets) whoever still waits for it to join a batch
      });
      tasks.set(info.path, promise);
      return promise;
    };
    for (const outcome of await Promise.all(toUpload.map(task))) pathOutcomes.set(outcome.path, outcome);

    // A root is done when its whole closure is; otherwise it takes the worst outcome within (failed > retry).
    const worst = new Map<string, PathOutcome | undefined>();
    const worstIn = (path: string): PathOutcome | undefined => {
      if (worst.has(path)) return worst.get(path);
      worst.set(path, undefined); // cycle guard (self-references)
      const own = pathOutcomes.get(path);
      let result = own && !isSuccess(own) ? own : undefined;
      if (own?.kind !== "upstream")
        for (const ref of byPath.get(path)?.references ?? []) {
          if (result?.kind === "failed") break;
          const dep = ref === path ? undefined : worstIn(ref);
          if (dep && (!result || dep.kind === "failed")) result = dep;
        }
      worst.set(path, result);
      return result;
    };
    for (const root of valid) {
      if (rootOutcomes.has(root)) continue;
      const bad = worstIn(root);
      const own = pathOutcomes.get(root);
      if (!bad) rootOutcomes.set(root, { path: root, kind: "done", how: own?.kind ?? "present" });
      else
        rootOutcomes.set(root, {
          path: root,
          kind: bad.kind === "failed" ? "failed" : "retry",
          code: bad.code ?? "error",
          reason: bad.path === root ? (bad.reason ?? "") : `${bad.path}: ${bad.reason}`,
        });
    }
    return report();
  }

  return { push };
}

export type Pusher = ReturnType<typeof createPusher>;
