// Builds a running server from a Config: database (migrated), storage, secrets, context, first-start
// bootstrap, HTTP listener. main.ts calls it with the environment's config; tests call it directly.
import { readFileSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { createAdaptorServer } from "@hono/node-server";
import { type Logger, pino } from "pino";
import { createApp } from "./app.ts";
import type { Config, StorageConfig } from "./config.ts";
import type { Context } from "./context.ts";
import { openDatabase } from "./db/database.ts";
import { createRepo } from "./db/repo.ts";
import { createDecoderPool } from "./decode-pool.ts";
import { createLifecycle } from "./lifecycle.ts";
import { createServerMetrics, watchDiskCache } from "./metrics.ts";
import { installFastLane } from "./routes/fast-lane.ts";
import { nixFastReads } from "./routes/nix.ts";
import { createRequestRecorder } from "./routes/request-log.ts";
import { createSecretBox, loadServerSecret } from "./secrets.ts";
import { sendfileUnavailable } from "./sendfile.ts";
import { type DiskCachedStorage, withDiskCache } from "./storage/disk-cache.ts";
import { type InlineRows, withInlineObjects } from "./storage/inline.ts";
import { createLocalStorage } from "./storage/local.ts";
import { createS3Storage } from "./storage/s3.ts";
import type { Storage } from "./storage/storage.ts";
import { memoryTrimUnavailable, quietTrimmer } from "./trim-when-quiet.ts";
import { startBackgroundJobs } from "./verbs/background.ts";
import { type BootstrapResult, bootstrap } from "./verbs/bootstrap.ts";
import { removeAbandonedUploads } from "./verbs/cleanup.ts";
import { youngGarbageCollector } from "./young-garbage.ts";

const CLEANUP_INTERVAL_MS = 60 * 60 * 1000;

/**
 * The storage the config names, and its disk cache if it has one (for its metrics). On S3, small objects go
 * to the database's rows instead (storage/inline.ts) when `rows` are given and the config keeps any.
 */
export async function openStorage(
  config: StorageConfig,
  log?: Pick<Logger, "warn">,
  rows?: InlineRows,
): Promise<{ storage: Storage; diskCache?: DiskCachedStorage }> {
  if (config.kind === "local") return { storage: createLocalStorage({ root: config.root }) };
  const bucket = await createS3Storage({
    endPoint: config.endPoint,
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    region: config.region,
    bucket: config.bucket,
    pathStyle: config.pathStyle,
    prefix: config.prefix,
    createBucket: true,
    recentBytes: config.memoryBytes,
  });
  const diskCache = config.diskCache ? await withDiskCache(bucket, { ...config.diskCache, log }) : undefined;
  const remote = diskCache ?? bucket;
  const storage =
    rows && config.inlineBytes > 0
      ? withInlineObjects(remote, { rows, maxBytes: config.inlineBytes, recentBytes: config.memoryBytes })
      : remote;
  return diskCache ? { storage, diskCache } : { storage };
}

export interface RunningServer {
  ctx: Context;
  /** The S3 storage's disk cache, when it has one (ctx.storage may be in front of it). */
  diskCache?: DiskCachedStorage;
  url: string;
  bootstrap: BootstrapResult;
  /**
   * Graceful stop: /readyz turns 503, no new connections are accepted, idle keep-alive connections close,
   * and requests in flight (uploads still streaming in, NARs streaming out) get up to the shutdown timeout
   * to finish. Whatever is still running then is cut: an upload cut short fails its verification and
   * commits nothing (a path commits in one transaction, after its NAR is stored), and its object is
   * removed by the upload's own clean-up or later by cleanup.ts. Then background jobs stop and the
   * database closes. Resolves true when everything finished in time.
   */
  close(): Promise<boolean>;
}

export async function startServer(config: Config): Promise<RunningServer> {
  const log = pino({ level: config.logLevel, base: { service: "nixstash" } });
  const lifecycle = createLifecycle();
  const database = await openDatabase(config.databaseUrl);
  const repo = createRepo(database);
  const { storage, diskCache } = await openStorage(config.storage, log, repo.inlineObjects);
  await storage.check();
  if ((config.storage.kind === "local" || config.storage.diskCache) && sendfileUnavailable)
    log.warn(
      { reason: sendfileUnavailable },
      "sendfile addon not loaded: NARs are copied through the process",
    );
  if (memoryTrimUnavailable)
    log.info(
      { reason: memoryTrimUnavailable },
      "memory addon not loaded: memory freed after a burst stays with the process until reused",
    );
  const secrets = createSecretBox(loadServerSecret(config.secret, config.dataDir));
  const ctx: Context = {
    database,
    repo,
    storage,
    secrets,
    log,
    clock: Date.now,
    // One decoder per core beyond the main thread's: with two cores, one upload's decoding runs beside it.
    decoders: createDecoderPool({ size: Math.max(1, availableParallelism() - 1), log }),
    bodyBytesSeen: youngGarbageCollector(),
    metrics: createServerMetrics({
      version: packageVersion(),
      database: database.dialect,
      storage: storage.kind,
    }),
    settings: {
      zstdLevel: config.zstdLevel,
      redirectNars: config.storage.kind === "s3" && config.storage.redirect,
      presignSeconds: 3600,
      publicUrl: config.publicUrl ?? "",
    },
  };
  if (diskCache && ctx.metrics) watchDiskCache(ctx.metrics, () => diskCache.stats());
  const first = await bootstrap({
    ctx,
    input: { defaultCache: config.defaultCache, dataDir: config.dataDir },
  });
  const cleanup = () =>
    removeAbandonedUploads({ ctx, input: {} }).catch((error) => log.warn({ err: error }, "cleanup failed"));
  void cleanup();
  const cleanupTimer = setInterval(cleanup, CLEANUP_INTERVAL_MS);
  cleanupTimer.unref();
  const background = startBackgroundJobs(ctx, { gcIntervalSeconds: config.gcIntervalSeconds });
  const recorder = createRequestRecorder(ctx);
  const app = createApp(ctx, { lifecycle, recorder });
  // Without a createServer option the adapter makes a plain node:http server.
  const httpServer = createAdaptorServer({
    fetch: app.fetch,
    hostname: config.listen.host,
    // Path info of a push travels in a header; references of a big closure can be long.
    serverOptions: { maxHeaderSize: 4 * 1024 * 1024, requestTimeout: 0 },
  }) as HttpServer;
  // Narinfo and nix-cache-info reads skip node:http and Hono (routes/fast-lane.ts); the rest goes through.
  const lane = installFastLane(httpServer, {
    answer: nixFastReads(ctx, { lifecycle, recorder }),
    draining: () => lifecycle.draining,
    onHandoff: (reason) => ctx.metrics?.fastLaneHandoffs.inc({ reason }),
    onError: (error) => log.warn({ err: error }, "fast lane: answer failed; handed to the full server"),
  });
  await new Promise<void>((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(config.listen.port, config.listen.host, () => {
      httpServer.removeListener("error", reject);
      resolve();
    });
  });
  const stopTrimming = quietTrimmer(lifecycle, { log })?.start();
  const address = httpServer.address() as AddressInfo;
  const wildcard = address.address === "0.0.0.0" || address.address === "::";
  const host = wildcard ? "127.0.0.1" : address.family === "IPv6" ? `[${address.address}]` : address.address;
  ctx.settings.publicUrl ||= `http://${host}:${address.port}`;
  return {
    ctx,
    ...(diskCache ? { diskCache } : {}),
    url: `http://${host}:${address.port}`,
    bootstrap: first,
    close: async () => {
      clearInterval(cleanupTimer);
      stopTrimming?.();
      lifecycle.startDraining();
      log.info({ inFlight: lifecycle.active, timeoutMs: config.shutdownTimeoutMs }, "draining");
      const closed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
      // Connections that go idle while draining (keep-alive after their last response) are closed as well.
      const closeIdle = () => {
        httpServer.closeIdleConnections();
        lane.closeIdleConnections();
      };
      const idleSweep = setInterval(closeIdle, 100);
      closeIdle();
      const finished = await lifecycle.waitIdle(config.shutdownTimeoutMs);
      if (!finished) {
        log.warn({ inFlight: lifecycle.active }, "shutdown timeout: cutting the requests still in flight");
        httpServer.closeAllConnections();
        lane.closeAllConnections();
        // Let the cut handlers run their failure paths (discard the partial upload) before the database goes.
        await lifecycle.waitIdle(10_000);
      }
      clearInterval(idleSweep);
      httpServer.closeAllConnections();
      lane.closeAllConnections();
      await closed;
      await background.stop();
      ctx.metrics?.stop();
      await ctx.decoders?.close();
      await database.close();
      log.info({ clean: finished }, "stopped");
      return finished;
    },
  };
}

/** The version in nixstash's package.json, found from the sources (server/) or the bundle (server/dist/). */
function packageVersion(): string {
  for (const up of ["..", "../.."]) {
    try {
      const manifest = JSON.parse(readFileSync(join(import.meta.dirname, up, "package.json"), "utf8")) as {
        name?: unknown;
        version?: unknown;
      };
      if (manifest.name === "nixstash") return String(manifest.version ?? "unknown");
    } catch {}
  }
  return "unknown";
}
