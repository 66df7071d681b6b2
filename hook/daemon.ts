// `nixstash daemon`: drains what the post-build hook records, in the background, and loses nothing.
//
// Loop: move spool records (hook/spool.ts) into the durable queue (hook/queue.ts), take the roots that are
// due, push their closures through the shared pipeline (hook/pipeline.ts), and record each outcome as the
// server gave it. Several batches may run at once (a big upload does not hold back a new build's small
// outputs); uploads across all of them share one concurrency limit. Roots that could not finish for a
// reason that is not theirs (server down, 5xx, token refused) wait with exponential backoff and jitter;
// refused ones are marked failed with the server's reason and block only the paths that reference them.
//
// Staying out of the builds' way (the hook runs inside Nix's build loop, and the daemon shares the builder's
// CPUs): the daemon lowers its own CPU priority (`--nice`, inherited by the Nix commands it runs), and does
// not wake per spool record. The first change in the spool starts a short settle (SETTLE_MS without a record
// created or removed, at most MAX_SETTLE_MS), during which the spool is not watched; then every record is
// read at once, queued in one transaction, and pushed as one batch: one `nix path-info` and one `missing`
// query for a burst of builds instead of one per build. While the server is unreachable, new roots wait
// with the others for one probe of the server (backoff, no local store query, no wake per record) instead of
// each trying on its own.
//
// Crash safety: a path is marked done only after the server answered success. On start, whatever was
// "uploading" goes back to waiting; the server discards a cut upload, and the next attempt asks the server
// what it lacks first, so nothing is lost and nothing already there is sent again. SIGTERM/SIGINT cut the
// running uploads the same way and exit 0. One daemon per state directory (a claim in the queue database).
import { mkdirSync, readdirSync, statSync, watch } from "node:fs";
import { getPriority, setPriority } from "node:os";
import { basename, join } from "node:path";
import { type PublicKey, parsePublicKey } from "../nix/index.ts";
import { backoffDelay } from "./backoff.ts";
import { createClient, PushError } from "./client.ts";
import type { DaemonSettings } from "./config.ts";
import type { Logger } from "./log.ts";
import { createPusher, isSuccess, type LocalStore, nixStore } from "./pipeline.ts";
import { openQueue, type Queue } from "./queue.ts";
import { isSettled, listSpool, readRecord, removeRecord, type SpoolRecord } from "./spool.ts";
import { formatBytes } from "./units.ts";

export interface DaemonOptions {
  settings: DaemonSettings;
  log: Logger;
  /** Aborted by SIGTERM/SIGINT: cut running uploads, leave them waiting, return. */
  signal: AbortSignal;
  store?: LocalStore;
  /** Roots taken per batch. */
  batchSize?: number;
  /** Batches running at once. */
  maxBatches?: number;
  /** Quiet time after a spool change before the spool is read (records of a burst of builds go together). */
  settleMs?: number;
  /** The longest a spool change waits for quiet. */
  maxSettleMs?: number;
}

export const queueFile = (stateDir: string) => join(stateDir, "queue.db");

const UPSTREAM_KEYS_TTL_MS = 10 * 60_000;
const PRUNE_EVERY_MS = 60 * 60_000;
const SETTLE_MS = 200;
/**
 * In a burst of builds finishing less than SETTLE_MS apart, the spool is read this often. Each read (and the
 * batch it starts) costs the hook that runs at that moment a few ms: with reads every second, the hook's p99
 * over 300 calls ~31 ms apart was 11.0 ms against 9.5 without a daemon; with reads every 5 s, 9.5 (medians of
 * ten alternated rounds of measure 7 of issue 7 started by a small process, BENCHMARKS.md session 29). The
 * uploads of such a burst start up to 5 s after its first build, which nothing waits on.
 */
const MAX_SETTLE_MS = 5000;

/**
 * Lowers the CPU priority of every thread of this process to `nice` (Linux keeps a niceness per thread, and
 * V8's threads exist before we run); threads and child processes started later inherit it. Never raises.
 */
export function lowerPriority(nice: number): string | undefined {
  if (nice <= 0) return undefined;
  let threads: number[] = [0];
  try {
    threads = readdirSync("/proc/self/task").map(Number);
  } catch {
    // not Linux: the process as a whole
  }
  let failure: string | undefined;
  for (const thread of threads) {
    try {
      if (getPriority(thread) < nice) setPriority(thread, nice);
    } catch (error) {
      failure ??= (error as Error).message;
    }
  }
  return failure;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export async function runDaemon(options: DaemonOptions): Promise<void> {
  const { settings, log } = options;
  const lowered = lowerPriority(settings.nice);
  if (lowered) log.warn({ nice: settings.nice, err: lowered }, "cannot lower the daemon's CPU priority");
  const batchSize = options.batchSize ?? 500;
  const maxBatches = options.maxBatches ?? 4;
  mkdirSync(settings.spoolDir, { recursive: true, mode: 0o755 });
  const queue = openQueue(queueFile(settings.stateDir));
  try {
    queue.lock(process.pid, isAlive);
  } catch (error) {
    queue.close();
    throw error;
  }
  try {
    const recovered = queue.recover();
    if (recovered > 0) log.info({ paths: recovered }, "resuming uploads cut short by the last stop or crash");
    queue.prune(Date.now() - settings.keepDoneMs);
    await loop(options, queue, batchSize, maxBatches);
  } finally {
    queue.unlock(process.pid);
    queue.close();
  }
  log.info("daemon stopped");
}

async function loop(options: DaemonOptions, queue: Queue, batchSize: number, maxBatches: number) {
  const { settings, log, signal } = options;
  const client = createClient(settings);

  let configuredKeys: PublicKey[] | undefined;
  if (settings.upstreamKeys) configuredKeys = settings.upstreamKeys.map((key) => parsePublicKey(key));
  let serverKeys: { keys: PublicKey[]; at: number } | undefined;
  /** The cache's own upstream keys (its description), asked again after UPSTREAM_KEYS_TTL_MS. */
  const cacheUpstreamKeys = async (): Promise<PublicKey[]> => {
    if (serverKeys && Date.now() - serverKeys.at < UPSTREAM_KEYS_TTL_MS) return serverKeys.keys;
    const keys = await client.upstreamKeys((text, error) =>
      log.warn({ key: text, err: error }, "ignoring an upstream key of the server that does not parse"),
    );
    if (!serverKeys && !configuredKeys)
      log.info({ upstreamKeys: keys.map((k) => k.name) }, "paths signed by these keys are left to upstream");
    serverKeys = { keys, at: Date.now() };
    return keys;
  };
  const upstreamKeys = async (): Promise<PublicKey[]> => configuredKeys ?? (await cacheUpstreamKeys());

  const pusher = createPusher({
    client,
    concurrency: settings.concurrency,
    upstreamKeys,
    cacheUpstreamKeys,
    zstdLevel: settings.zstdLevel,
    ...(options.store ? { store: options.store } : {}),
    signal,
    events: {
      cached(roots) {
        log.info({ roots: roots.length }, "already in the cache, with their closures");
      },
      planned(plan) {
        const bytes = plan.upload.reduce((sum, p) => sum + p.narSize, 0);
        log.info(
          {
            roots: plan.roots.length,
            closure: plan.closure,
            upstream: plan.upstream,
            present: plan.present,
            upload: plan.upload.length,
            size: formatBytes(bytes),
          },
          "batch planned",
        );
      },
      started(path, narSize) {
        queue.markUploading(path, narSize);
        log.info({ path, size: formatBytes(narSize) }, "uploading");
      },
      finished(outcome, ms) {
        if (isSuccess(outcome)) {
          queue.markDone(outcome.path, outcome.kind, outcome.narSize);
          const rate = ms > 0 ? `${formatBytes((outcome.narSize * 1000) / ms)}/s` : undefined;
          log.info(
            { path: outcome.path, status: outcome.kind, size: formatBytes(outcome.narSize), ms, rate },
            "pushed",
          );
        } else if (outcome.kind === "failed") {
          queue.markFailed(outcome.path, outcome.code ?? "error", outcome.reason ?? "", outcome.narSize);
          log.error({ path: outcome.path, code: outcome.code, reason: outcome.reason }, "refused");
        } else {
          queue.releaseUploading(outcome.path, outcome.reason ?? "");
          log.warn({ path: outcome.path, reason: outcome.reason }, "upload interrupted; will retry");
        }
      },
    },
  });

  const busy = new Set<string>();
  const batches = new Set<Promise<void>>();

  // The server as last seen: while it is unreachable, roots are not tried one batch at a time (each would
  // query the local store first); one probe per backoff step decides for all of them.
  let serverDown: { failures: number; until: number; reason: string } | undefined;
  const markServerDown = (reason: string) => {
    const failures = (serverDown?.failures ?? 0) + 1;
    const delay = backoffDelay(failures, { baseMs: settings.retryBaseMs, maxMs: settings.retryMaxMs });
    serverDown = { failures, until: Date.now() + delay, reason };
  };
  /** Whether batches may start: the server was not seen down, or a probe now reaches it. */
  const serverReachable = async (): Promise<boolean> => {
    if (!serverDown) return true;
    if (Date.now() < serverDown.until) return false;
    try {
      await client.describe();
    } catch (error) {
      if (error instanceof PushError && error.code === "unreachable") {
        markServerDown(error.message);
        return false;
      }
      // Any other answer (a refused token, a 5xx) comes from the server: let the batches meet it.
    }
    log.info({ after: `${serverDown.failures} probe(s)` }, "server reachable again");
    serverDown = undefined;
    return true;
  };

  async function runBatch(roots: string[]) {
    try {
      const report = await pusher.push(roots);
      const now = Date.now();
      // The server is away: these roots wait with every other for the next probe (one wake, not one per root).
      const unreachable = report.roots.find((r) => r.kind === "retry" && r.code === "unreachable");
      if (unreachable && !signal.aborted && !serverDown) markServerDown(unreachable.reason ?? "");
      const retrying: { path: string; delay: number; reason: string }[] = [];
      // One transaction (one fsync) for the whole batch's outcome, not one per root.
      queue.transaction(() => {
        // Paths held back by a refused reference never started an upload: record them failed as well.
        for (const path of report.paths)
          if (path.kind === "failed" && path.code === "reference_failed")
            queue.markFailed(path.path, path.code, path.reason ?? "", path.narSize);
        for (const root of report.roots) {
          if (root.kind === "done") {
            queue.markDone(root.path, root.how ?? "present");
          } else if (root.kind === "failed") {
            // Members already logged their refusal; log the root only if it was not itself uploaded.
            queue.markFailed(root.path, root.code ?? "error", root.reason ?? "");
            if (
              root.code === "reference_failed" ||
              root.code === "not_in_store" ||
              root.code === "invalid_path"
            )
              log.error({ path: root.path, reason: root.reason }, "not pushed");
          } else if (signal.aborted) {
            queue.releaseUploading(root.path, "daemon stopped");
          } else {
            const attempts = (queue.get(root.path)?.attempts ?? 0) + 1;
            const delay =
              root.code === "unreachable" && serverDown
                ? Math.max(0, serverDown.until - now)
                : backoffDelay(attempts, { baseMs: settings.retryBaseMs, maxMs: settings.retryMaxMs });
            queue.reschedule(root.path, now + delay, root.reason ?? "");
            retrying.push({ path: root.path, delay, reason: root.reason ?? "" });
          }
        }
      });
      const done = report.roots.filter((r) => r.kind === "done").length;
      if (done > 0) log.info({ roots: done }, "batch done");
      if (!unreachable && done > 0) serverDown = undefined;
      if (retrying.length > 0) {
        const first = retrying[0]!;
        log.warn(
          {
            roots: retrying.length,
            reason: first.reason,
            retryIn: `${(Math.min(...retrying.map((r) => r.delay)) / 1000).toFixed(1)}s`,
          },
          "waiting to retry",
        );
      }
    } catch (error) {
      // A bug or a broken queue database: keep the roots waiting and say so loudly.
      log.error({ err: error, roots: roots.length }, "batch crashed; its paths stay queued");
      for (const root of roots)
        queue.reschedule(
          root,
          Date.now() + settings.retryMaxMs,
          `internal error: ${(error as Error).message}`,
        );
    } finally {
      for (const root of roots) busy.delete(root);
    }
  }

  const store = options.store ?? nixStore;
  /** Names of records this daemon removed, so that the watcher does not take their removal for news. */
  const removed = new Set<string>();
  /**
   * Moves spool records into the queue; a record leaves the spool only once its paths are committed. All
   * waiting records go in one transaction, with one store query for all their derivations.
   */
  const ingest = async () => {
    const records: { record: SpoolRecord; paths: string[]; derivations: string[] }[] = [];
    for (const record of listSpool(settings.spoolDir)) {
      let parsed: ReturnType<typeof readRecord>;
      try {
        parsed = readRecord(record);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT")
          log.error({ file: record.file, err: error }, "cannot read a spool record");
        continue;
      }
      // Still being written (the next change wakes us again), unless it has been still for long.
      if (!isSettled(record, parsed)) continue;
      if (parsed.invalid.length > 0)
        log.warn(
          { file: record.file, lines: parsed.invalid },
          "ignoring spool lines that are not store paths",
        );
      records.push({ record, paths: parsed.paths, derivations: parsed.derivations });
    }
    if (records.length === 0) return;

    // Nix 2.8.0 gave the hook no output paths, only the derivation: ask the store now, once for all.
    const derivations = [...new Set(records.flatMap((r) => r.derivations))];
    let outputs: string[] | undefined = [];
    if (derivations.length > 0) {
      try {
        const answer = await store.derivationOutputs(derivations);
        outputs = answer.outputs;
        const { missing } = answer;
        if (missing.length > 0)
          log.error(
            { derivations: missing },
            "derivations no longer in the store; their outputs cannot be queued (push them by hand)",
          );
      } catch (error) {
        log.warn({ err: error }, "cannot query derivation outputs; will try again");
        outputs = undefined;
      }
    }
    // Records that need the store's answer stay in the spool until it comes.
    const ready = records.filter((r) => r.derivations.length === 0 || outputs);
    const found = [...ready.flatMap((r) => r.paths), ...(outputs ?? [])];
    queue.enqueue(found); // one transaction
    for (const { record } of ready) {
      try {
        removed.add(basename(record.file));
        removeRecord(record);
      } catch (error) {
        log.error({ file: record.file, err: error }, "cannot remove a spool record (it will be read again)");
      }
    }
    if (ready.length > 0) log.info({ records: ready.length, paths: found.length }, "queued from the spool");
  };

  let wake: (() => void) | undefined;
  /** Set by a poke that came while the loop was busy, so that it does not sleep through it. */
  let poked = false;
  const poke = () => {
    poked = true;
    wake?.();
  };
  signal.addEventListener("abort", poke);
  const settleMs = options.settleMs ?? SETTLE_MS;
  const maxSettleMs = options.maxSettleMs ?? MAX_SETTLE_MS;
  let settling: ReturnType<typeof setTimeout> | undefined;
  let settleStarted = 0;
  let settleMtime = 0;
  /** The spool directory's modification time: it moves whenever a record is created or removed. */
  const spoolMtime = () => {
    try {
      return statSync(settings.spoolDir).mtimeMs;
    } catch {
      return 0;
    }
  };
  // The watcher is armed only while the spool is quiet. Each event it delivers wakes this process, and
  // every wake-up costs the hook that caused it, inside Nix's build loop: a niced process that only watched
  // the spool (a timer reset per event) raised the hook's p50 from ~6.2 to ~6.7 ms and its p99 from ~8.5 to
  // ~9.5 ms, 300 calls ~31 ms apart, six alternated rounds (BENCHMARKS.md, session 29). So the first event
  // closes it, and the spool's modification time is looked at every settleMs until it stays still for one
  // (or maxSettleMs have passed); then the watcher is armed again, before the spool is read, so that a record
  // written meanwhile is either read now or announced by the next event. A burst of builds wakes the daemon
  // a few times a second, not several times a record.
  let watcher: ReturnType<typeof watch> | undefined;
  const arm = () => {
    if (watcher) return;
    try {
      watcher = watch(settings.spoolDir, spoolChanged);
      watcher.on("error", () => {});
    } catch (error) {
      log.warn({ err: error }, `cannot watch the spool; polling every ${settings.pollMs / 1000}s`);
    }
  };
  const settle = () => {
    const mtime = spoolMtime();
    const waited = Date.now() - settleStarted;
    if (mtime !== settleMtime && waited < maxSettleMs) {
      settleMtime = mtime;
      settling = setTimeout(settle, Math.min(settleMs, maxSettleMs - waited));
      return;
    }
    settling = undefined;
    arm();
    poke();
  };
  /** A record arrived: wait for a quiet moment (or at most maxSettleMs), then read the spool once. */
  function spoolChanged(_event: string, name: string | Buffer | null) {
    const file = name?.toString();
    // Writers' temporary files, and the records we removed ourselves, are no news.
    if (file !== undefined && (file.startsWith(".") || removed.delete(file))) return;
    if (settling !== undefined) return;
    watcher?.close();
    watcher = undefined;
    settleStarted = Date.now();
    settleMtime = spoolMtime();
    settling = setTimeout(settle, Math.min(settleMs, maxSettleMs));
  }
  arm();

  log.info(
    {
      server: settings.server,
      cache: settings.cache,
      spool: settings.spoolDir,
      state: settings.stateDir,
      jobs: settings.concurrency,
    },
    "daemon started",
  );
  let lastPrune = Date.now();
  try {
    while (!signal.aborted) {
      poked = false;
      // While records are still arriving, the settle timer will wake us for all of them at once.
      if (settling === undefined) {
        try {
          removed.clear();
          await ingest();
        } catch (error) {
          log.error({ err: error }, "cannot read the spool");
        }
      }
      const dueNow = (queue.nextDueAt(busy) ?? Number.POSITIVE_INFINITY) <= Date.now();
      if (batches.size < maxBatches && dueNow && !(await serverReachable())) {
        // The server is away: what is due waits for the next probe, with the reason, without a batch.
        const held = queue.due(Number.MAX_SAFE_INTEGER, busy);
        const down = serverDown!;
        if (held.length > 0) {
          queue.transaction(() => {
            for (const root of held) queue.reschedule(root, down.until, down.reason);
          });
          log.warn(
            {
              roots: held.length,
              reason: down.reason,
              retryIn: `${(Math.max(0, down.until - Date.now()) / 1000).toFixed(1)}s`,
            },
            "waiting to retry",
          );
        }
      } else {
        while (batches.size < maxBatches) {
          const roots = queue.due(batchSize, busy);
          if (roots.length === 0) break;
          for (const root of roots) busy.add(root);
          const batch = runBatch(roots).finally(() => {
            batches.delete(batch);
            poke();
          });
          batches.add(batch);
        }
      }
      if (Date.now() - lastPrune > PRUNE_EVERY_MS) {
        queue.prune(Date.now() - settings.keepDoneMs);
        lastPrune = Date.now();
      }
      const next = queue.nextDueAt(busy);
      let sleep = settings.pollMs;
      if (next !== undefined && batches.size < maxBatches)
        sleep = Math.max(10, Math.min(sleep, next - Date.now()));
      if (poked) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, sleep);
        function done() {
          clearTimeout(timer);
          wake = undefined;
          resolve();
        }
        wake = done;
      });
    }
  } finally {
    watcher?.close();
    if (settling !== undefined) clearTimeout(settling);
    signal.removeEventListener("abort", poke);
    await Promise.allSettled([...batches]);
  }
}
