// PostgreSQL tables. Mirrors schema/sqlite.ts table for table, column for column (see there for the meaning
// of each column). Times are milliseconds since the epoch in bigint columns read as JS numbers (exact up to
// 2^53), sizes likewise, so both dialects hand the repository the same shapes.
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  customType,
  index,
  integer,
  pgTable,
  serial,
  text,
  uniqueIndex,
} from "drizzle-orm/pg-core";

const now = sql`(floor(extract(epoch from clock_timestamp()) * 1000))::bigint`;
const millis = (name: string) => bigint(name, { mode: "number" });
/** bytea read and written as a Buffer, as SQLite's blob column in buffer mode is. */
const bytea = customType<{ data: Buffer; driverData: Buffer }>({ dataType: () => "bytea" });

export const caches = pgTable("caches", {
  id: serial("id").primaryKey(),
  name: text("name").notNull().unique(),
  public: boolean("public").notNull().default(true),
  priority: integer("priority").notNull().default(40),
  storeDir: text("store_dir").notNull().default("/nix/store"),
  description: text("description").notNull().default(""),
  upstreamKeys: text("upstream_keys").notNull().default(""),
  createdAt: millis("created_at").notNull().default(now),
  retentionSeconds: bigint("retention_seconds", { mode: "number" }),
  quotaBytes: bigint("quota_bytes", { mode: "number" }),
  deletedAt: millis("deleted_at"),
});

export const signingKeys = pgTable(
  "signing_keys",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    name: text("name").notNull(),
    publicKey: text("public_key").notNull(),
    secretEncrypted: text("secret_encrypted").notNull(),
    active: boolean("active").notNull().default(true),
    createdAt: millis("created_at").notNull().default(now),
    retiredAt: millis("retired_at"),
  },
  (t) => [index("signing_keys_cache").on(t.cacheId)],
);

export const nars = pgTable(
  "nars",
  {
    id: serial("id").primaryKey(),
    narHash: text("nar_hash").notNull(),
    narSize: bigint("nar_size", { mode: "number" }).notNull(),
    compression: text("compression").notNull(),
    fileHash: text("file_hash").notNull(),
    fileSize: bigint("file_size", { mode: "number" }).notNull(),
    storageKey: text("storage_key").notNull(),
    createdAt: millis("created_at").notNull().default(now),
    unreferencedAt: millis("unreferenced_at"),
  },
  (t) => [
    uniqueIndex("nars_nar_hash").on(t.narHash),
    uniqueIndex("nars_file_hash").on(t.fileHash),
    uniqueIndex("nars_storage_key").on(t.storageKey),
  ],
);

export const narListings = pgTable("nar_listings", {
  narId: integer("nar_id")
    .primaryKey()
    .references(() => nars.id, { onDelete: "cascade" }),
  listing: text("listing").notNull(),
});

export const paths = pgTable(
  "paths",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    hash: text("hash").notNull(),
    storePath: text("store_path").notNull(),
    narId: integer("nar_id")
      .notNull()
      .references(() => nars.id),
    references: text("references").notNull(),
    deriver: text("deriver"),
    system: text("system"),
    ca: text("ca"),
    sigs: text("sigs").notNull(),
    pushedBy: integer("pushed_by"),
    createdAt: millis("created_at").notNull().default(now),
    lastAccessedAt: millis("last_accessed_at"),
    pinned: boolean("pinned").notNull().default(false),
  },
  (t) => [
    uniqueIndex("paths_cache_hash").on(t.cacheId, t.hash),
    index("paths_nar").on(t.narId),
    index("paths_cache_created").on(t.cacheId, t.createdAt),
  ],
);

export const tokens = pgTable("tokens", {
  id: serial("id").primaryKey(),
  name: text("name").notNull(),
  secretHash: text("secret_hash").notNull().unique(),
  prefix: text("prefix").notNull(),
  caches: text("caches").notNull(),
  permissions: text("permissions").notNull(),
  createdAt: millis("created_at").notNull().default(now),
  expiresAt: millis("expires_at"),
  revokedAt: millis("revoked_at"),
  lastUsedAt: millis("last_used_at"),
});

export const pendingUploads = pgTable("pending_uploads", {
  id: serial("id").primaryKey(),
  storageKey: text("storage_key").notNull().unique(),
  createdAt: millis("created_at").notNull().default(now),
});

export const inlineObjects = pgTable("inline_objects", {
  key: text("key").primaryKey(),
  bytes: bytea("bytes").notNull(),
  size: integer("size").notNull(),
  createdAt: millis("created_at").notNull().default(now),
});

export const buildLogs = pgTable(
  "build_logs",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    drv: text("drv").notNull(),
    storageKey: text("storage_key").notNull(),
    size: bigint("size", { mode: "number" }).notNull(),
    createdAt: millis("created_at").notNull().default(now),
  },
  (t) => [uniqueIndex("build_logs_cache_drv").on(t.cacheId, t.drv)],
);

export const realisations = pgTable(
  "realisations",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    outputId: text("output_id").notNull(),
    content: text("content").notNull(),
    createdAt: millis("created_at").notNull().default(now),
  },
  (t) => [uniqueIndex("realisations_cache_output").on(t.cacheId, t.outputId)],
);

export const stagedNars = pgTable(
  "staged_nars",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    file: text("file").notNull(),
    storageKey: text("storage_key").notNull(),
    /** What the client sent: its compression, and the hash and size of its bytes. */
    receivedCompression: text("received_compression").notNull(),
    receivedFileHash: text("received_file_hash").notNull(),
    receivedFileSize: bigint("received_file_size", { mode: "number" }).notNull(),
    /** What is stored (the same bytes, or zstd of an uncompressed upload). */
    compression: text("compression").notNull(),
    fileHash: text("file_hash").notNull(),
    fileSize: bigint("file_size", { mode: "number" }).notNull(),
    narHash: text("nar_hash").notNull(),
    narSize: bigint("nar_size", { mode: "number" }).notNull(),
    listing: text("listing").notNull(),
    createdAt: millis("created_at").notNull().default(now),
  },
  (t) => [
    uniqueIndex("staged_nars_cache_file").on(t.cacheId, t.file),
    uniqueIndex("staged_nars_storage_key").on(t.storageKey),
  ],
);

export const cacheDailyStats = pgTable(
  "cache_daily_stats",
  {
    id: serial("id").primaryKey(),
    cacheId: integer("cache_id")
      .notNull()
      .references(() => caches.id, { onDelete: "cascade" }),
    day: millis("day").notNull(),
    narinfoHits: bigint("narinfo_hits", { mode: "number" }).notNull().default(0),
    narinfoMisses: bigint("narinfo_misses", { mode: "number" }).notNull().default(0),
    narDownloads: bigint("nar_downloads", { mode: "number" }).notNull().default(0),
    narBytes: bigint("nar_bytes", { mode: "number" }).notNull().default(0),
  },
  (t) => [uniqueIndex("cache_daily_stats_cache_day").on(t.cacheId, t.day)],
);

export const leases = pgTable("leases", {
  name: text("name").primaryKey(),
  holder: text("holder").notNull(),
  expiresAt: millis("expires_at").notNull(),
});

export const gcRuns = pgTable("gc_runs", {
  id: serial("id").primaryKey(),
  cacheName: text("cache_name"),
  trigger: text("trigger").notNull(),
  dryRun: boolean("dry_run").notNull(),
  startedAt: millis("started_at").notNull(),
  finishedAt: millis("finished_at").notNull(),
  report: text("report").notNull(),
});
