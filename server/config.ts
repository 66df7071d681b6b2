// The server's settings, parsed once from the environment with zod. No other file reads process.env.
// A bad value stops start-up with a message naming the variable.
//
//   NIXSTASH_LISTEN          host:port to listen on                 default 127.0.0.1:8080
//   NIXSTASH_PUBLIC_URL      base URL clients use (printed in the nix.conf lines)   default http://<listen address>
//   NIXSTASH_DATA_DIR        data directory (SQLite file, local storage, secrets)   default ./data
//   NIXSTASH_DATABASE_URL    unset = SQLite in the data dir; sqlite:/path/file.db; postgres://user:pw@host/db
//   NIXSTASH_STORAGE         unset = <data dir>/storage; file:///path; s3://bucket[/prefix]
//   NIXSTASH_S3_ENDPOINT     S3 endpoint URL (e.g. http://127.0.0.1:7480)  default https://s3.amazonaws.com
//   NIXSTASH_S3_REGION       default us-east-1
//   NIXSTASH_S3_ACCESS_KEY / NIXSTASH_S3_SECRET_KEY   credentials (required with s3://)
//   NIXSTASH_S3_PATH_STYLE   true|false  default true (MinIO, Ceph RGW, Garage need it)
//   NIXSTASH_S3_REDIRECT     true|false  answer NAR downloads with a 302 to a presigned URL   default true
//   NIXSTASH_S3_MEMORY_MB    MiB of small objects (up to 64 KiB) kept in memory once written or read whole,
//                            and served from there instead of redirected (0-4096; 0 = none)   default 16
//   NIXSTASH_S3_INLINE_KB    objects up to this many KiB (most NARs) are kept in the database instead of the
//                            bucket: an INSERT, not a PUT (0-1024; 0 = every object in the bucket)  default 64
//   NIXSTASH_S3_DISK_CACHE   a directory for copies of NARs read from the bucket, served from there like
//                            local storage's (see storage/disk-cache.ts)            default none
//   NIXSTASH_S3_DISK_CACHE_GB  what that directory may hold (0.001-100000)          default 10
//   NIXSTASH_SECRET          32+ byte server secret (encrypts signing keys at rest); unset = generated file
//                            <data dir>/server-secret (mode 0600). Replicas must share it.
//   NIXSTASH_DEFAULT_CACHE   the cache created on first start                      default main
//   NIXSTASH_ZSTD_LEVEL      zstd level for NARs the server compresses (1-19)       default 3
//   NIXSTASH_LOG_LEVEL       fatal|error|warn|info|debug|trace|silent              default info
//   NIXSTASH_SHUTDOWN_TIMEOUT  seconds SIGTERM waits for in-flight uploads and downloads before cutting
//                            them (0-3600)                                          default 30
//   NIXSTASH_GC_INTERVAL     seconds between scheduled garbage collections (0 = never)  default 3600
import { resolve } from "node:path";
import { z } from "zod";

const bool = z
  .enum(["true", "false", "1", "0", "yes", "no"], { message: "expected true or false" })
  .transform((v) => v === "true" || v === "1" || v === "yes");

const listen = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, "expected host:port, e.g. 127.0.0.1:8080")
  .transform((v) => {
    const at = v.lastIndexOf(":");
    const port = Number(v.slice(at + 1));
    return { host: v.slice(0, at).replace(/^\[|\]$/g, ""), port };
  })
  .refine((v) => v.port >= 0 && v.port < 65536, "port must be 0-65535 (0 picks a free port)");

const cacheName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, "expected a cache name like main");

const env = z.object({
  NIXSTASH_LISTEN: listen.default({ host: "127.0.0.1", port: 8080 }),
  NIXSTASH_PUBLIC_URL: z.url({ message: "expected a URL such as https://cache.example.org" }).optional(),
  NIXSTASH_DATA_DIR: z.string().min(1).default("./data"),
  NIXSTASH_DATABASE_URL: z
    .string()
    .regex(/^(sqlite:|postgres(ql)?:\/\/)/, "expected sqlite:/path/file.db or postgres://…")
    .optional(),
  NIXSTASH_STORAGE: z
    .string()
    .regex(/^(file:\/\/\/|s3:\/\/[^/]+)/, "expected file:///path or s3://bucket[/prefix]")
    .optional(),
  NIXSTASH_S3_ENDPOINT: z
    .url({ message: "expected a URL such as http://127.0.0.1:9000" })
    .default("https://s3.amazonaws.com"),
  NIXSTASH_S3_REGION: z.string().min(1).default("us-east-1"),
  NIXSTASH_S3_ACCESS_KEY: z.string().optional(),
  NIXSTASH_S3_SECRET_KEY: z.string().optional(),
  NIXSTASH_S3_PATH_STYLE: bool.default(true),
  NIXSTASH_S3_REDIRECT: bool.default(true),
  NIXSTASH_S3_MEMORY_MB: z.coerce.number().min(0).max(4096).default(16),
  NIXSTASH_S3_INLINE_KB: z.coerce.number().int().min(0).max(1024).default(64),
  NIXSTASH_S3_DISK_CACHE: z.string().min(1).optional(),
  NIXSTASH_S3_DISK_CACHE_GB: z.coerce.number().min(0.001).max(100_000).default(10),
  NIXSTASH_SECRET: z.string().min(32, "must be at least 32 characters").optional(),
  NIXSTASH_DEFAULT_CACHE: cacheName.default("main"),
  NIXSTASH_ZSTD_LEVEL: z.coerce.number().int().min(1).max(19).default(3),
  NIXSTASH_LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  NIXSTASH_SHUTDOWN_TIMEOUT: z.coerce.number().min(0).max(3600).default(30),
  NIXSTASH_GC_INTERVAL: z.coerce.number().int().min(0).max(31_536_000).default(3600),
});

export type StorageConfig =
  | { kind: "local"; root: string }
  | {
      kind: "s3";
      bucket: string;
      prefix: string;
      endPoint: string;
      region: string;
      accessKey: string;
      secretKey: string;
      pathStyle: boolean;
      redirect: boolean;
      /** Bytes of small objects the S3 driver keeps in memory (its recentBytes). */
      memoryBytes: number;
      /** Objects up to this many bytes are kept in the database (storage/inline.ts); 0 = none. */
      inlineBytes: number;
      /** Where copies of objects read from the bucket are kept, and how many bytes of them; none if unset. */
      diskCache: { root: string; limitBytes: number } | undefined;
    };

export interface Config {
  listen: { host: string; port: number };
  /** Unset: derived from the address the server listens on. */
  publicUrl: string | undefined;
  dataDir: string;
  databaseUrl: string;
  storage: StorageConfig;
  secret: string | undefined;
  defaultCache: string;
  zstdLevel: number;
  logLevel: string;
  /** How long a graceful shutdown lets in-flight requests finish, ms. */
  shutdownTimeoutMs: number;
  /** Seconds between scheduled garbage collections; 0 turns the schedule off. */
  gcIntervalSeconds: number;
}

export class ConfigError extends Error {}

/** The error for bad settings: one line per problem, each naming its variable. */
const invalid = (lines: string[]) => new ConfigError(`invalid configuration:\n  ${lines.join("\n  ")}`);

export function parseConfig(source: Record<string, string | undefined>): Config {
  // Empty strings count as unset, as shells and compose files often produce them.
  const present = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== undefined && v !== ""));
  const parsed = env.safeParse(present);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => {
      const name = String(issue.path[0] ?? "environment");
      return `${name}=${JSON.stringify(present[name] ?? "")}: ${issue.message}`;
    });
    throw invalid(lines);
  }
  const e = parsed.data;
  const dataDir = resolve(e.NIXSTASH_DATA_DIR);
  return {
    listen: e.NIXSTASH_LISTEN,
    publicUrl: e.NIXSTASH_PUBLIC_URL?.replace(/\/+$/, ""),
    dataDir,
    databaseUrl: e.NIXSTASH_DATABASE_URL ?? `sqlite:${resolve(dataDir, "nixstash.db")}`,
    storage: storageConfig(e, dataDir),
    secret: e.NIXSTASH_SECRET,
    defaultCache: e.NIXSTASH_DEFAULT_CACHE,
    zstdLevel: e.NIXSTASH_ZSTD_LEVEL,
    logLevel: e.NIXSTASH_LOG_LEVEL,
    shutdownTimeoutMs: Math.round(e.NIXSTASH_SHUTDOWN_TIMEOUT * 1000),
    gcIntervalSeconds: e.NIXSTASH_GC_INTERVAL,
  };
}

function storageConfig(e: z.infer<typeof env>, dataDir: string): StorageConfig {
  const url = e.NIXSTASH_STORAGE;
  if (!url?.startsWith("s3://") && e.NIXSTASH_S3_DISK_CACHE !== undefined) {
    throw invalid([
      `NIXSTASH_S3_DISK_CACHE=${JSON.stringify(e.NIXSTASH_S3_DISK_CACHE)}: only with NIXSTASH_STORAGE=s3://… (local storage is on disk already)`,
    ]);
  }
  if (!url) return { kind: "local", root: resolve(dataDir, "storage") };
  if (url.startsWith("file://"))
    return { kind: "local", root: resolve(decodeURIComponent(url.slice("file://".length))) };
  const rest = url.slice("s3://".length);
  const slash = rest.indexOf("/");
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const prefix = slash < 0 ? "" : rest.slice(slash + 1).replace(/^\/+|\/+$/g, "");
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw invalid([`NIXSTASH_STORAGE=${JSON.stringify(url)}: bad bucket name "${bucket}"`]);
  }
  const missing = ["NIXSTASH_S3_ACCESS_KEY", "NIXSTASH_S3_SECRET_KEY"].filter((n) => !e[n as keyof typeof e]);
  if (missing.length > 0) {
    throw invalid(missing.map((n) => `${n}: required when NIXSTASH_STORAGE is s3://…`));
  }
  return {
    kind: "s3",
    bucket,
    prefix,
    endPoint: e.NIXSTASH_S3_ENDPOINT,
    region: e.NIXSTASH_S3_REGION,
    accessKey: e.NIXSTASH_S3_ACCESS_KEY!,
    secretKey: e.NIXSTASH_S3_SECRET_KEY!,
    pathStyle: e.NIXSTASH_S3_PATH_STYLE,
    redirect: e.NIXSTASH_S3_REDIRECT,
    memoryBytes: Math.floor(e.NIXSTASH_S3_MEMORY_MB * 1024 * 1024),
    inlineBytes: e.NIXSTASH_S3_INLINE_KB * 1024,
    diskCache: e.NIXSTASH_S3_DISK_CACHE
      ? {
          root: resolve(e.NIXSTASH_S3_DISK_CACHE),
          limitBytes: Math.floor(e.NIXSTASH_S3_DISK_CACHE_GB * 1024 ** 3),
        }
      : undefined,
  };
}
