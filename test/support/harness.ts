// Builds a server context on real backends for tests: SQLite or PostgreSQL (a fresh database per call),
// local directory or Ceph RGW (a fresh bucket per call). Returns undefined (after a loud skip message;
// a failure in CI) when the backend's service is not running.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { pino } from "pino";
import { createApp } from "../../server/app.ts";
import { parseConfig } from "../../server/config.ts";
import type { Context } from "../../server/context.ts";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { createServerMetrics } from "../../server/metrics.ts";
import { createSecretBox } from "../../server/secrets.ts";
import { openStorage } from "../../server/start.ts";
import { createLocalStorage } from "../../server/storage/local.ts";
import { createS3Storage } from "../../server/storage/s3.ts";
import type { Storage } from "../../server/storage/storage.ts";
import { postgresService, s3Service, testTmp } from "./services.ts";

export type DbKind = "sqlite" | "postgres";
export type StorageKind = "local" | "s3";

export interface Harness {
  ctx: Context;
  app: ReturnType<typeof createApp>;
  dir: string;
  /** Extra settings for servers started as processes with the same backends. */
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

/** A fresh, empty PostgreSQL database; its URL, and a function that drops it. */
export async function freshPostgres(): Promise<{ url: string; drop(): Promise<void> } | undefined> {
  const service = postgresService();
  if (!service) return undefined;
  const name = `t_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: service.url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(service.url);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: service.url });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

export async function freshS3(): Promise<
  { storage: Storage; env: Record<string, string>; bucket: string } | undefined
> {
  const service = s3Service();
  if (!service) return undefined;
  const bucket = `t-${randomBytes(6).toString("hex")}`;
  const storage = await createS3Storage({
    endPoint: service.endpoint,
    accessKey: service.accessKey,
    secretKey: service.secretKey,
    region: service.region,
    bucket,
    pathStyle: true,
    createBucket: true,
  });
  return {
    storage,
    bucket,
    env: {
      NIXSTASH_STORAGE: `s3://${bucket}`,
      NIXSTASH_S3_ENDPOINT: service.endpoint,
      NIXSTASH_S3_ACCESS_KEY: service.accessKey,
      NIXSTASH_S3_SECRET_KEY: service.secretKey,
      NIXSTASH_S3_REGION: service.region,
    },
  };
}

export async function makeHarness(kind: { db: DbKind; storage: StorageKind }): Promise<Harness | undefined> {
  const dir = mkdtempSync(join(testTmp(), `harness-${kind.db}-${kind.storage}-`));
  const env: Record<string, string> = { NIXSTASH_DATA_DIR: dir };
  const cleanups: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })];

  let databaseUrl = `sqlite:${join(dir, "nixstash.db")}`;
  if (kind.db === "postgres") {
    const fresh = await freshPostgres();
    if (!fresh) return undefined;
    databaseUrl = fresh.url;
    cleanups.push(fresh.drop);
  }
  env.NIXSTASH_DATABASE_URL = databaseUrl;

  const database = await openDatabase(databaseUrl);
  const repo = createRepo(database);
  let storage: Storage = createLocalStorage({ root: join(dir, "storage") });
  if (kind.storage === "s3") {
    const fresh = await freshS3();
    if (!fresh) {
      await database.close();
      return undefined;
    }
    Object.assign(env, fresh.env);
    // Composed as the server composes it, at its defaults (start.ts): small objects in the database.
    ({ storage } = await openStorage(parseConfig(env).storage, undefined, repo.inlineObjects));
  }

  const ctx: Context = {
    database,
    repo,
    storage,
    secrets: createSecretBox("test-secret-test-secret-test-secret!"),
    log: pino({ level: "silent" }),
    clock: Date.now,
    metrics: createServerMetrics({ version: "test", database: kind.db, storage: kind.storage }),
    settings: { zstdLevel: 3, redirectNars: false, presignSeconds: 600, publicUrl: "http://127.0.0.1:1" },
  };
  return {
    ctx,
    app: createApp(ctx),
    dir,
    env,
    cleanup: async () => {
      await database.close();
      for (const f of cleanups.reverse()) await f();
    },
  };
}
