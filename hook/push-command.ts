// `nixstash push PATHS… | --stdin`: the daemon's pipeline (hook/pipeline.ts) run once in the foreground,
// for CI jobs and for paths built before the hook was set up. A few quick retries for a server that is
// briefly away (no durable queue: that is the daemon's job), a progress line on a terminal, a summary, and
// exit status 1 if anything was not pushed.
import { realpathSync } from "node:fs";
import { DEFAULT_STORE_DIR, type PublicKey, parsePublicKey } from "../nix/index.ts";
import { backoffDelay } from "./backoff.ts";
import { createClient } from "./client.ts";
import type { PushSettings } from "./config.ts";
import { createPusher, isSuccess, type LocalStore, type PathOutcome } from "./pipeline.ts";
import { createProgress } from "./progress.ts";
import { formatBytes, formatDuration } from "./units.ts";

export interface PushSummary {
  pushed: { path: string; narSize: number; status: string }[];
  alreadyThere: string[];
  upstream: string[];
  failed: { path: string; code: string; reason: string }[];
  bytes: number;
  seconds: number;
}

export interface PushCommandOptions {
  settings: PushSettings;
  paths: readonly string[];
  /** Where progress and the summary go (stderr). */
  out: { write(text: string): unknown; columns?: number };
  tty: boolean;
  attempts?: number;
  store?: LocalStore;
  signal?: AbortSignal;
}

/**
 * Accepts store paths, paths inside them, and links to them (./result): returns the store path. Anything
 * else is returned as given and reported as invalid by the pipeline.
 */
export function toStorePath(arg: string, storeDir = DEFAULT_STORE_DIR): string {
  let path = arg;
  if (!path.startsWith(`${storeDir}/`)) {
    try {
      path = realpathSync(arg);
    } catch {
      return arg;
    }
  }
  if (!path.startsWith(`${storeDir}/`)) return arg;
  const rest = path.slice(storeDir.length + 1);
  const slash = rest.indexOf("/");
  return `${storeDir}/${slash >= 0 ? rest.slice(0, slash) : rest}`;
}

/** Runs the push; resolves to the summary (never rejects for a path, server or store problem). */
export async function runPush(options: PushCommandOptions): Promise<PushSummary> {
  const { settings, out, tty } = options;
  const attempts = options.attempts ?? 3;
  const client = createClient(settings);
  const progress = createProgress(out, tty);
  const startedAt = Date.now();

  let cacheKeys: PublicKey[] | undefined;
  const cacheUpstreamKeys = async () => {
    cacheKeys ??= await client.upstreamKeys();
    return cacheKeys;
  };
  const configuredKeys = settings.upstreamKeys?.map((key) => parsePublicKey(key));
  const upstreamKeys = async () => configuredKeys ?? (await cacheUpstreamKeys());

  const outcomes = new Map<string, PathOutcome>();
  /** Roots the cache had already: their closures were not looked at (see the pipeline's first query). */
  const cachedRoots = new Set<string>();
  const pusher = createPusher({
    client,
    concurrency: settings.concurrency,
    upstreamKeys,
    cacheUpstreamKeys,
    zstdLevel: settings.zstdLevel,
    ...(options.store ? { store: options.store } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    events: {
      cached: (roots) => {
        progress.cached(roots);
        for (const root of roots) cachedRoots.add(root);
      },
      planned: (plan) => progress.planned(plan),
      progress: (path, bytes) => progress.progress(path, bytes),
      finished: (outcome) => progress.finished(outcome),
    },
  });

  let roots = [...new Set(options.paths.map((p) => toStorePath(p)))];
  const rootFailures = new Map<string, { code: string; reason: string }>();
  for (let attempt = 1; roots.length > 0; attempt++) {
    const report = await pusher.push(roots);
    for (const outcome of report.paths) outcomes.set(outcome.path, outcome);
    const again: string[] = [];
    for (const root of report.roots) {
      if (root.kind === "done") rootFailures.delete(root.path);
      else rootFailures.set(root.path, { code: root.code ?? "error", reason: root.reason ?? "" });
      const hopeless = root.code === "unauthorized" || root.code === "forbidden";
      if (root.kind === "retry" && !hopeless && attempt < attempts && !options.signal?.aborted)
        again.push(root.path);
    }
    roots = again;
    if (roots.length > 0) {
      const delay = backoffDelay(attempt, { baseMs: settings.retryBaseMs, maxMs: settings.retryMaxMs });
      progress.flush();
      out.write(
        `${tty ? "\r\x1b[K" : ""}${roots.length} path(s) not pushed yet (${rootFailures.get(roots[0]!)?.reason}); ` +
          `retrying in ${(delay / 1000).toFixed(1)}s\n`,
      );
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
  progress.end();

  const summary: PushSummary = {
    pushed: [],
    alreadyThere: [],
    upstream: [],
    failed: [],
    bytes: 0,
    seconds: (Date.now() - startedAt) / 1000,
  };
  for (const outcome of outcomes.values()) {
    if (outcome.kind === "stored" || outcome.kind === "deduplicated") {
      summary.pushed.push({ path: outcome.path, narSize: outcome.narSize, status: outcome.kind });
      summary.bytes += outcome.narSize;
    } else if (outcome.kind === "present" || outcome.kind === "already-present")
      summary.alreadyThere.push(outcome.path);
    else if (outcome.kind === "upstream") summary.upstream.push(outcome.path);
    else if (!isSuccess(outcome))
      summary.failed.push({
        path: outcome.path,
        code: outcome.code ?? "error",
        reason: outcome.reason ?? "",
      });
  }
  for (const root of cachedRoots) if (!outcomes.has(root)) summary.alreadyThere.push(root);
  // Roots that never reached the upload stage (not in the store, server unreachable) fail as roots.
  for (const [path, failure] of rootFailures)
    if (!outcomes.has(path) || isSuccess(outcomes.get(path)!)) summary.failed.push({ path, ...failure });
  return summary;
}

export function formatSummary(summary: PushSummary): string {
  const rate =
    summary.seconds > 0 && summary.bytes > 0 ? ` at ${formatBytes(summary.bytes / summary.seconds)}/s` : "";
  const lines = [
    `pushed ${summary.pushed.length} (${formatBytes(summary.bytes)} in ${formatDuration(summary.seconds)}${rate}), ` +
      `already there ${summary.alreadyThere.length}, upstream ${summary.upstream.length}, ` +
      `failed ${summary.failed.length}`,
  ];
  for (const failure of summary.failed) lines.push(`  failed ${failure.path}: ${failure.reason}`);
  return `${lines.join("\n")}\n`;
}
