// `nixstash daemon`: drains what the post-build hook records, in the background, and loses nothing.
//
// Loop: move spool records (hook/spool.ts) into the durable queue (hook/queue.ts), take the roots that are
// due, push their closures through the shared pipeline (hook/pipeline.ts), and record each outcome as the
// server gave it. Several batches may run at once (a big upload does not hold back a new build's small
// outputs); uploads across all of them share one concurrency limit. Roots that could not finish for a
// reason that is not theirs (server down, 5xx, token refused) wait with exponential backoff and jitter;
// refused ones are marked failed with the server's reason and block only the paths that reference them.
//
// Crash safety: a path is marked done only after the server answered success. On start, whatever was
// "uploading" goes back to waiting; the server discards a cut upload, and the next attempt asks the server
// what it lacks first, so nothing is lost and nothing already there is sent again. SIGTERM/SIGINT cut the
// running uploads the same way and exit 0. One daemon per state directory (a claim in the queue database).
import { mkdirSync, watch } from "node:fs";
import { join } from "node:path";
import { type PublicKey, parsePublicKey } from "../nix/index.ts";
import { backoffDelay } from "./backoff.ts";
import { createClient } from "./client.ts";
import type { DaemonSettings } from "./config.ts";
import type { Logger } from "./log.ts";
import { createPusher, isSuccess, type LocalStore, nixStore } from "./pipeline.ts";
import { openQueue, type Queue } from "./queue.ts";
import { listSpool, readRecord, removeRecord } from "./spool.ts";
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
}

export const queueFile = (stateDir: string) => join(stateDir, "queue.db");

const UPSTREAM_KEYS_TTL_MS = 10 * 60_000;
const PRUNE_EVERY_MS = 60 * 60_000;

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
  const upstreamKeys = async (): Promise<PublicKey[]> => {
    if (configuredKeys) return configuredKeys;
    if (serverKeys && Date.now() - serverKeys.at < UPSTREAM_KEYS_TTL_MS) return serverKeys.keys;
    const description = await client.describe();
    const keys: PublicKey[] = [];
    for (const text of description.upstreamKeys) {
      try {
        keys.push(parsePublicKey(text));
      } catch (error) {
        log.warn({ key: text, err: error }, "ignoring an upstream key of the server that does not parse");
      }
    }
    if (!serverKeys)
      log.info({ upstreamKeys: keys.map((k) => k.name) }, "paths signed by these keys are left to upstream");
    serverKeys = { keys, at: Date.now() };
    return keys;
  };

  const pusher = createPusher({
    client,
    concurrency: settings.concurrency,
    upstreamKeys,
    zstdLevel: settings.zstdLevel,
    ...(options.store ? { store: options.store } : {}),
    signal,
    events: {
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

  async function runBatch(roots: string[]) {
    try {
      const report = await pusher.push(roots);
      const now = Date.now();
      // Paths held back by a refused reference never started an upload: record them failed as well.
      for (const path of report.paths)
        if (path.kind === "failed" && path.code === "reference_failed")
          queue.markFailed(path.path, path.code, path.reason ?? "", path.narSize);
      const retrying: { path: string; delay: number; reason: string }[] = [];
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
          const delay = backoffDelay(attempts, { baseMs: settings.retryBaseMs, maxMs: settings.retryMaxMs });
          queue.reschedule(root.path, now + delay, root.reason ?? "");
          retrying.push({ path: root.path, delay, reason: root.reason ?? "" });
        }
      }
      const done = report.roots.filter((r) => r.kind === "done").length;
      if (done > 0) log.info({ roots: done }, "batch done");
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
  /** Moves spool records into the queue; a record leaves the spool only once its paths are queued. */
  const ingest = async () => {
    let records = 0;
    let paths = 0;
    for (const record of listSpool(settings.spoolDir)) {
      let parsed: ReturnType<typeof readRecord>;
      try {
        parsed = readRecord(record);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT")
          log.error({ file: record.file, err: error }, "cannot read a spool record");
        continue;
      }
      if (parsed.invalid.length > 0)
        log.warn(
          { file: record.file, lines: parsed.invalid },
          "ignoring spool lines that are not store paths",
        );
      const found = [...parsed.paths];
      if (parsed.derivations.length > 0) {
        // Nix 2.8.0 gave the hook no output paths, only the derivation: ask the store now.
        try {
          const { outputs, missing } = await store.derivationOutputs(parsed.derivations);
          found.push(...outputs);
          if (missing.length > 0)
            log.error(
              { file: record.file, derivations: missing },
              "derivations no longer in the store; their outputs cannot be queued (push them by hand)",
            );
        } catch (error) {
          log.warn({ file: record.file, err: error }, "cannot query derivation outputs; will try again");
          continue;
        }
      }
      queue.enqueue(found);
      try {
        removeRecord(record);
      } catch (error) {
        log.error({ file: record.file, err: error }, "cannot remove a spool record (it will be read again)");
      }
      records++;
      paths += found.length;
    }
    if (records > 0) log.info({ records, paths }, "queued from the spool");
  };

  let wake: (() => void) | undefined;
  const poke = () => wake?.();
  signal.addEventListener("abort", poke);
  let watcher: ReturnType<typeof watch> | undefined;
  try {
    watcher = watch(settings.spoolDir, poke);
    watcher.on("error", () => {});
  } catch (error) {
    log.warn({ err: error }, `cannot watch the spool; polling every ${settings.pollMs / 1000}s`);
  }

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
      try {
        await ingest();
      } catch (error) {
        log.error({ err: error }, "cannot read the spool");
      }
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
      if (Date.now() - lastPrune > PRUNE_EVERY_MS) {
        queue.prune(Date.now() - settings.keepDoneMs);
        lastPrune = Date.now();
      }
      const next = queue.nextDueAt(busy);
      let sleep = settings.pollMs;
      if (next !== undefined && batches.size < maxBatches)
        sleep = Math.max(10, Math.min(sleep, next - Date.now()));
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
    signal.removeEventListener("abort", poke);
    await Promise.allSettled([...batches]);
  }
}
