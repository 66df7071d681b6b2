// Builds a running server from a Config: database (migrated), storage, secrets, context, first-start
// bootstrap, HTTP listener. main.ts calls it with the environment's config; tests call it directly.
import type { AddressInfo } from "node:net";
import { type ServerType, serve } from "@hono/node-server";
import { pino } from "pino";
import { createApp } from "./app.ts";
import type { Config, StorageConfig } from "./config.ts";
import type { Context } from "./context.ts";
import { openDatabase } from "./db/database.ts";
import { createRepo } from "./db/repo.ts";
import { createSecretBox, loadServerSecret } from "./secrets.ts";
import { createLocalStorage } from "./storage/local.ts";
import { createS3Storage } from "./storage/s3.ts";
import type { Storage } from "./storage/storage.ts";
import { type BootstrapResult, bootstrap } from "./verbs/bootstrap.ts";
import { removeAbandonedUploads } from "./verbs/cleanup.ts";

const CLEANUP_INTERVAL_MS = 60 * 60 * 1000;

export async function openStorage(config: StorageConfig): Promise<Storage> {
  if (config.kind === "local") return createLocalStorage({ root: config.root });
  return createS3Storage({
    endPoint: config.endPoint,
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    region: config.region,
    bucket: config.bucket,
    pathStyle: config.pathStyle,
    prefix: config.prefix,
    createBucket: true,
  });
}

export interface RunningServer {
  ctx: Context;
  url: string;
  bootstrap: BootstrapResult;
  close(): Promise<void>;
}

export async function startServer(config: Config): Promise<RunningServer> {
  const log = pino({ level: config.logLevel, base: { service: "nixstash" } });
  const database = await openDatabase(config.databaseUrl);
  const storage = await openStorage(config.storage);
  await storage.check();
  const secrets = createSecretBox(loadServerSecret(config.secret, config.dataDir));
  const ctx: Context = {
    database,
    repo: createRepo(database),
    storage,
    secrets,
    log,
    clock: Date.now,
    settings: {
      zstdLevel: config.zstdLevel,
      redirectNars: config.storage.kind === "s3" && config.storage.redirect,
      presignSeconds: 3600,
      publicUrl: config.publicUrl ?? "",
    },
  };
  const first = await bootstrap({
    ctx,
    input: { defaultCache: config.defaultCache, dataDir: config.dataDir },
  });
  const cleanup = () =>
    removeAbandonedUploads({ ctx, input: {} }).catch((error) => log.warn({ err: error }, "cleanup failed"));
  void cleanup();
  const cleanupTimer = setInterval(cleanup, CLEANUP_INTERVAL_MS);
  cleanupTimer.unref();
  const app = createApp(ctx);
  const server: ServerType = await new Promise((resolve, reject) => {
    const s = serve(
      {
        fetch: app.fetch,
        hostname: config.listen.host,
        port: config.listen.port,
        // Path info of a push travels in a header; references of a big closure can be long.
        serverOptions: { maxHeaderSize: 4 * 1024 * 1024, requestTimeout: 0 },
      },
      () => resolve(s),
    );
    s.once("error", reject);
  });
  const address = server.address() as AddressInfo;
  const wildcard = address.address === "0.0.0.0" || address.address === "::";
  const host = wildcard ? "127.0.0.1" : address.family === "IPv6" ? `[${address.address}]` : address.address;
  ctx.settings.publicUrl ||= `http://${host}:${address.port}`;
  return {
    ctx,
    url: `http://${host}:${address.port}`,
    bootstrap: first,
    close: async () => {
      clearInterval(cleanupTimer);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await database.close();
    },
  };
}
