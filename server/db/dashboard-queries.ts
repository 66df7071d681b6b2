// Read-only queries behind the web dashboard (routes/dashboard.ts): every live cache with its path count,
// sizes and last push in one grouped query, a cache's most recent pushes, and a store-path search.
// Written once for SQLite and PostgreSQL against the SQLite-typed drizzle handle, as repo.ts is (see
// database.ts for why one type serves both). Aggregates come back as strings from PostgreSQL (bigint/numeric)
// and as numbers from SQLite, hence the Number() on each.
import { and, desc, eq, isNull, sql } from "drizzle-orm";
import type { Database } from "./database.ts";

export interface CacheSummary {
  id: number;
  name: string;
  public: boolean;
  priority: number;
  description: string;
  storeDir: string;
  paths: number;
  /** Sum of NarSize over the cache's paths (what clients unpack). */
  narBytes: number;
  /** Sum of FileSize over its paths (what serving each path once sends). */
  fileBytes: number;
  /** When the newest path was pushed (ms since the epoch), null when empty. */
  lastPushAt: number | null;
}

export interface PathSummary {
  storePath: string;
  narSize: number;
  fileSize: number;
  compression: string;
  createdAt: number;
}

/** `%` and `_` in what a user typed match themselves, not any character. */
function likePattern(text: string): string {
  return `%${text.toLowerCase().replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`;
}

export function createDashboardQueries(database: Database) {
  const { db, t } = database;
  const pathColumns = {
    storePath: t.paths.storePath,
    narSize: t.nars.narSize,
    fileSize: t.nars.fileSize,
    compression: t.nars.compression,
    createdAt: t.paths.createdAt,
  };
  const asPath = (r: PathSummary): PathSummary => ({
    storePath: r.storePath,
    narSize: Number(r.narSize),
    fileSize: Number(r.fileSize),
    compression: r.compression,
    createdAt: Number(r.createdAt),
  });

  return {
    async caches(): Promise<CacheSummary[]> {
      const rows = await db
        .select({
          id: t.caches.id,
          name: t.caches.name,
          public: t.caches.public,
          priority: t.caches.priority,
          description: t.caches.description,
          storeDir: t.caches.storeDir,
          paths: sql<number>`count(${t.paths.id})`,
          narBytes: sql<number>`coalesce(sum(${t.nars.narSize}), 0)`,
          fileBytes: sql<number>`coalesce(sum(${t.nars.fileSize}), 0)`,
          lastPushAt: sql<number | null>`max(${t.paths.createdAt})`,
        })
        .from(t.caches)
        .leftJoin(t.paths, eq(t.paths.cacheId, t.caches.id))
        .leftJoin(t.nars, eq(t.nars.id, t.paths.narId))
        .where(isNull(t.caches.deletedAt))
        .groupBy(
          t.caches.id,
          t.caches.name,
          t.caches.public,
          t.caches.priority,
          t.caches.description,
          t.caches.storeDir,
        )
        .orderBy(t.caches.priority, t.caches.name);
      return rows.map((r) => ({
        ...r,
        public: Boolean(r.public),
        paths: Number(r.paths),
        narBytes: Number(r.narBytes),
        fileBytes: Number(r.fileBytes),
        lastPushAt: r.lastPushAt === null ? null : Number(r.lastPushAt),
      }));
    },

    /** Newest first. */
    async recentPaths(cacheId: number, limit: number): Promise<PathSummary[]> {
      const rows = await db
        .select(pathColumns)
        .from(t.paths)
        .innerJoin(t.nars, eq(t.nars.id, t.paths.narId))
        .where(eq(t.paths.cacheId, cacheId))
        .orderBy(desc(t.paths.createdAt), desc(t.paths.id))
        .limit(limit);
      return rows.map(asPath);
    },

    /** Paths whose store path contains `text` (case-insensitive), newest first. */
    async searchPaths(cacheId: number, text: string, limit: number): Promise<PathSummary[]> {
      const rows = await db
        .select(pathColumns)
        .from(t.paths)
        .innerJoin(t.nars, eq(t.nars.id, t.paths.narId))
        .where(
          and(
            eq(t.paths.cacheId, cacheId),
            sql`lower(${t.paths.storePath}) LIKE ${likePattern(text)} ESCAPE '\\'`,
          ),
        )
        .orderBy(desc(t.paths.createdAt), desc(t.paths.id))
        .limit(limit);
      return rows.map(asPath);
    },
  };
}

export type DashboardQueries = ReturnType<typeof createDashboardQueries>;
