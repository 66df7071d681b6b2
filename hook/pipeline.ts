// The push pipeline shared by `nixstash daemon` and `nixstash push`: from a few store paths (roots) to a
// cache that holds their closures.
//
//   1. expand the roots' closures in the local store (`nix path-info --json --recursive`, references first);
//   2. set aside paths signed by an upstream key the cache accepts (cache.nixos.org-1 by default): upstream
//      serves them, and their infos go along as proofs with the paths that reference them;
//   3. ask the cache which of the rest it lacks, in batches (one POST /missing per `missingChunk` paths);
//   4. upload what is missing, `concurrency` at a time, each path only after the uploads of its references
//      succeeded (the server refuses a path whose references it lacks: closure completeness);
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
import { type Client, PushError, type PushPathInfo } from "./client.ts";
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
 * equals).
 */
export function createSemaphore(limit: number) {
  let active = 0;
  const waiters: { priority: number; wake: () => void }[] = [];
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
      const next = waiters.shift();
      if (next) next.wake();
      else active--;
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

  async function uploadOne(
    info: LocalPathInfo,
    proofs: PushPathInfo["upstream"],
    isHalted: () => string | undefined,
    priority: number,
  ): Promise<PathOutcome> {
    const release = await acquire(priority);
    const base = { path: info.path, narSize: info.narSize };
    try {
      const halted = isHalted();
      if (halted) return { ...base, kind: "retry", code: "halted", reason: halted };
      if (options.signal?.aborted) return { ...base, kind: "retry", code: "aborted", reason: "stopped" };
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
        const result = await options.client.upload(
          {
            storePath: info.path,
            narHash: info.narHash,
            narSize: info.narSize,
            references: info.references,
            deriver: info.deriver,
            ca: info.ca,
            upstream: proofs?.length ? proofs : undefined,
          },
          nar,
          { zstdLevel: options.zstdLevel ?? 3, signal: options.signal },
        );
        outcome = { ...base, kind: result.status };
      } catch (error) {
        if (dumpError && !options.signal?.aborted) {
          const gone = await store.invalidPaths([info.path]).catch(() => []);
          outcome = gone.length
            ? { ...base, kind: "failed", code: "not_in_store", reason: `${info.path} left the local store` }
            : { ...base, kind: "retry", code: "dump_failed", reason: dumpError.message };
        } else {
          const { code, reason, transient } = describeError(error);
          outcome = { ...base, kind: transient ? "retry" : "failed", code, reason };
        }
      }
      events.finished?.(outcome, Date.now() - began);
      return outcome;
    } finally {
      release();
    }
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

    let infos: LocalPathInfo[] | undefined;
    try {
      // One Nix command in the usual case (~25 ms of Nix start-up each). The validity check comes first
      // only when a root is not on disk (`nix path-info` would try to substitute an invalid path, from
      // the network), or after path-info refused, to tell the roots that left the store from the others.
      let refused: unknown;
      if (valid.every((root) => store.onDisk?.(root) ?? false)) {
        try {
          infos = await store.pathInfos(valid, { closure: true });
        } catch (error) {
          refused = error ?? new Error("nix path-info failed");
        }
      }
      if (infos === undefined) {
        const invalid = new Set(await store.invalidPaths(valid));
        if (refused !== undefined && invalid.size === 0) throw refused;
        for (const root of invalid)
          rootOutcomes.set(root, {
            path: root,
            kind: "failed",
            code: "not_in_store",
            reason: `${root} is not a valid path in the local store (never built here, or garbage-collected)`,
          });
        infos = await store.pathInfos(
          valid.filter((r) => !invalid.has(r)),
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
      missing = new Set();
      for (let i = 0; i < candidates.length; i += missingChunk)
        for (const path of await options.client.missing(candidates.slice(i, i + missingChunk)))
          missing.add(path);
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
    const task = (info: LocalPathInfo): Promise<PathOutcome> => {
      let promise = tasks.get(info.path);
      if (promise) return promise;
      promise = (async (): Promise<PathOutcome> => {
        for (const ref of info.references) {
          if (ref === info.path || !missing.has(ref)) continue;
          const dep = await task(byPath.get(ref)!);
          if (!isSuccess(dep))
            return {
              path: info.path,
              kind: dep.kind === "failed" ? "failed" : "retry",
              narSize: info.narSize,
              code: "reference_failed",
              reason: `reference ${ref} was not pushed: ${dep.reason}`,
            };
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
          upload = uploadOne(info, proofs, () => halted, weights.get(info.path) ?? 0).finally(() =>
            running.delete(info.path),
          );
          running.set(info.path, upload);
        }
        const outcome = await upload;
        if (outcome.kind === "retry" && !halted) halted = outcome.reason;
        return outcome;
      })();
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
