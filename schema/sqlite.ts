// SQLite tables (better-sqlite3). Mirrors schema/pg.ts table for table, column for column: the repository
// (server/db/repo.ts) is written once against these types and runs unchanged on PostgreSQL.
// Times are milliseconds since the epoch; sizes are integers (SQLite integers are 64-bit).
import { sql } from "drizzle-orm";
import { blob, index, integer, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

const now = sql`(CAST(unixepoch('subsec') * 1000 AS INTEGER))`;

export const caches = sqliteTable("caches", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull().unique(),
  public: integer("public", { mode: "boolean" }).notNull().default(true),
  priority: integer("priority").notNull().default(40),
  storeDir: text("store_dir").notNull().default("/nix/store"),
  description: text("description").notNull().default(""),
  /** Upstream public keys (Nix form `name:base64`), newline-separated: signatures that prove a reference is served upstream. */
  upstreamKeys: text("upstream_keys").notNull().default(""),
  createdAt: integer("created_at").notNull().default(now),
  /** Garbage collection: paths not accessed for this long are collected (null: kept for ever). */
  retentionSeconds: integer("retention_seconds"),
  /** Garbage collection: least recently used closures are evicted while stored bytes exceed this (null: no quota). */
  quotaBytes: integer("quota_bytes"),
  /** Soft delete: the cache stops serving, its name stays taken, and a purge (or a restore) follows. */
  deletedAt: integer("deleted_at"),
});

export const signingKeys = sqliteTable(
  "signing_keys",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    name: text("name").notNull(),
    publicKey: text("public_key").notNull(),
    /** The Nix secret key, encrypted with the server secret (AES-256-GCM); never returned by any API. */
    secretEncrypted: text("secret_encrypted").notNull(),
    /** Whether new pushes are signed with this key. */
    active: integer("active", { mode: "boolean" }).notNull().default(true),
    createdAt: integer("created_at").notNull().default(now),
    retiredAt: integer("retired_at"),
  },
  (t) => [index("signing_keys_cache").on(t.cacheId)],
);

export const nars = sqliteTable(
  "nars",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    narHash: text("nar_hash").notNull(),
    narSize: integer("nar_size").notNull(),
    compression: text("compression").notNull(),
    fileHash: text("file_hash").notNull(),
    fileSize: integer("file_size").notNull(),
    storageKey: text("storage_key").notNull(),
    createdAt: integer("created_at").notNull().default(now),
    /** When the last path referring to this NAR went; storage drops it after a grace period (gc.ts). */
    unreferencedAt: integer("unreferenced_at"),
  },
  (t) => [
    uniqueIndex("nars_nar_hash").on(t.narHash),
    uniqueIndex("nars_file_hash").on(t.fileHash),
    uniqueIndex("nars_storage_key").on(t.storageKey),
  ],
);

export const narListings = sqliteTable("nar_listings", {
  narId: integer("nar_id")
    .primaryKey()
    .references(() => nars.id, { onDelete: "cascade" }),
  listing: text("listing").notNull(),
});

export const paths = sqliteTable(
  "paths",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    hash: text("hash").notNull(),
    storePath: text("store_path").notNull(),
    narId: integer("nar_id")
      .notNull()
      .references(() => nars.id),
    /** Reference basenames, space-separated, sorted. */
    references: text("references").notNull(),
    deriver: text("deriver"),
    system: text("system"),
    ca: text("ca"),
    /** Sig lines, newline-separated. */
    sigs: text("sigs").notNull(),
    pushedBy: integer("pushed_by"),
    createdAt: integer("created_at").notNull().default(now),
    lastAccessedAt: integer("last_accessed_at"),
    /** A pinned path and its closure are never garbage-collected. */
    pinned: integer("pinned", { mode: "boolean" }).notNull().default(false),
  },
  (t) => [
    uniqueIndex("paths_cache_hash").on(t.cacheId, t.hash),
    index("paths_nar").on(t.narId),
    index("paths_cache_created").on(t.cacheId, t.createdAt),
  ],
);

export const tokens = sqliteTable("tokens", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull(),
  /** sha256 (hex) of the secret; the secret itself is shown once and never stored. */
  secretHash: text("secret_hash").notNull().unique(),
  /** The first characters of the secret, to recognise a token in lists. */
  prefix: text("prefix").notNull(),
  /** Cache-name patterns (`*` wildcard), newline-separated. */
  caches: text("caches").notNull(),
  /** Permissions, comma-separated: pull, push, delete, admin. */
  permissions: text("permissions").notNull(),
  createdAt: integer("created_at").notNull().default(now),
  expiresAt: integer("expires_at"),
  revokedAt: integer("revoked_at"),
  lastUsedAt: integer("last_used_at"),
});

/** Objects written to storage that no committed row owns yet: what cleanup removes after a crash or a cut upload. */
export const pendingUploads = sqliteTable("pending_uploads", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  storageKey: text("storage_key").notNull().unique(),
  createdAt: integer("created_at").notNull().default(now),
});

/**
 * Small objects a storage of many-requests-per-object cost (S3) keeps here instead (server/storage/inline.ts):
 * a NAR of a few KiB costs an INSERT, not a PUT to the bucket. Keyed like storage; `size` is bytes' length.
 */
export const inlineObjects = sqliteTable("inline_objects", {
  key: text("key").primaryKey(),
  bytes: blob("bytes", { mode: "buffer" }).notNull(),
  size: integer("size").notNull(),
  createdAt: integer("created_at").notNull().default(now),
});

export const buildLogs = sqliteTable(
  "build_logs",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    drv: text("drv").notNull(),
    storageKey: text("storage_key").notNull(),
    size: integer("size").notNull(),
    createdAt: integer("created_at").notNull().default(now),
  },
  (t) => [uniqueIndex("build_logs_cache_drv").on(t.cacheId, t.drv)],
);

export const realisations = sqliteTable(
  "realisations",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    /** `sha256:<hex>!<output>` as in the realisation's id. */
    outputId: text("output_id").notNull(),
    /** The realisation JSON as pushed (validated). */
    content: text("content").notNull(),
    createdAt: integer("created_at").notNull().default(now),
  },
  (t) => [uniqueIndex("realisations_cache_output").on(t.cacheId, t.outputId)],
);

/**
 * NARs uploaded by a stock Nix client (`nix copy --to http://…`, PUT nar/<file>) and already verified as NARs,
 * waiting for the narinfo that claims them. `file` is the name the client chose (`<FileHash>.nar.<ext>`).
 */
export const stagedNars = sqliteTable(
  "staged_nars",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    file: text("file").notNull(),
    storageKey: text("storage_key").notNull(),
    /** What the client sent: its compression, and the hash and size of its bytes. */
    receivedCompression: text("received_compression").notNull(),
    receivedFileHash: text("received_file_hash").notNull(),
    receivedFileSize: integer("received_file_size").notNull(),
    /** What is stored (the same bytes, or zstd of an uncompressed upload). */
    compression: text("compression").notNull(),
    fileHash: text("file_hash").notNull(),
    fileSize: integer("file_size").notNull(),
    narHash: text("nar_hash").notNull(),
    narSize: integer("nar_size").notNull(),
    listing: text("listing").notNull(),
    createdAt: integer("created_at").notNull().default(now),
  },
  (t) => [
    uniqueIndex("staged_nars_cache_file").on(t.cacheId, t.file),
    uniqueIndex("staged_nars_storage_key").on(t.storageKey),
  ],
);

/** Downloads and hits per cache and UTC day, added to in batches by the access log (server/verbs/access-log.ts). */
export const cacheDailyStats = sqliteTable(
  "cache_daily_stats",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    /** Start of the UTC day, ms since the epoch. */
    day: integer("day").notNull(),
    narinfoHits: integer("narinfo_hits").notNull().default(0),
    narinfoMisses: integer("narinfo_misses").notNull().default(0),
    narDownloads: integer("nar_downloads").notNull().default(0),
    narBytes: integer("nar_bytes").notNull().default(0),
  },
  (t) => [uniqueIndex("cache_daily_stats_cache_day").on(t.cacheId, t.day)],
);

/** Named leases with an expiry: one garbage collector at a time across replicas (gc.ts). */
export const leases = sqliteTable("leases", {
  name: text("name").primaryKey(),
  holder: text("holder").notNull(),
  expiresAt: integer("expires_at").notNull(),
});

/** What each garbage collection did (or, dry, would do). */
export const gcRuns = sqliteTable("gc_runs", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  /** null: a server-wide run over every cache. */
  cacheName: text("cache_name"),
  trigger: text("trigger").notNull(),
  dryRun: integer("dry_run", { mode: "boolean" }).notNull(),
  startedAt: integer("started_at").notNull(),
  finishedAt: integer("finished_at").notNull(),
  /** The report, JSON. */
  report: text("report").notNull(),
});
