// Every query the server makes, written once for both dialects (see database.ts). Verbs call these; nothing
// else builds SQL. Methods that write run inside one transaction each, so a caller never sees half of one.
import { and, eq, inArray, isNull, sql } from "drizzle-orm";
import type { Database, Db, Tables } from "./database.ts";

export type CacheRow = Tables["caches"]["$inferSelect"];
export type SigningKeyRow = Tables["signingKeys"]["$inferSelect"];
export type TokenRow = Tables["tokens"]["$inferSelect"];
export type NarRow = Tables["nars"]["$inferSelect"];
export type StagedNarRow = Tables["stagedNars"]["$inferSelect"];
export type NewStagedNar = Omit<StagedNarRow, "id" | "createdAt">;

export interface PathRecord {
  pathId: number;
  storePath: string;
  references: string;
  deriver: string | null;
  system: string | null;
  ca: string | null;
  sigs: string;
  narId: number;
  narHash: string;
  narSize: number;
  compression: string;
  fileHash: string;
  fileSize: number;
  storageKey: string;
}

export interface NewNar {
  narHash: string;
  narSize: number;
  compression: string;
  fileHash: string;
  fileSize: number;
  storageKey: string;
  listing: string;
}

export interface NewPath {
  cacheId: number;
  hash: string;
  storePath: string;
  references: readonly string[];
  /** Reference hashes that must already be in the cache (all references but the path itself and proven upstream ones). */
  requiredHashes: readonly string[];
  deriver: string | null;
  system: string | null;
  ca: string | null;
  sigs: readonly string[];
  pushedBy: number | null;
  /** The staged NAR (nix copy) this commit consumes, if any. */
  stagedNarId?: number | undefined;
}

export type CommitOutcome =
  | { kind: "committed"; narId: number; deduplicated: boolean }
  | { kind: "already-present"; narHash: string }
  | { kind: "missing-references"; missing: string[] };

const CHUNK = 500;

function chunks<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK));
  return out;
}

export function createRepo(database: Database) {
  const { db, t } = database;

  async function presentHashes(q: Db, cacheId: number, hashes: readonly string[]): Promise<Set<string>> {
    const present = new Set<string>();
    for (const part of chunks([...new Set(hashes)])) {
      const rows = await q
        .select({ hash: t.paths.hash })
        .from(t.paths)
        .where(and(eq(t.paths.cacheId, cacheId), inArray(t.paths.hash, part)));
      for (const row of rows) present.add(row.hash);
    }
    return present;
  }

  const pathColumns = {
    pathId: t.paths.id,
    storePath: t.paths.storePath,
    references: t.paths.references,
    deriver: t.paths.deriver,
    system: t.paths.system,
    ca: t.paths.ca,
    sigs: t.paths.sigs,
    narId: t.nars.id,
    narHash: t.nars.narHash,
    narSize: t.nars.narSize,
    compression: t.nars.compression,
    fileHash: t.nars.fileHash,
    fileSize: t.nars.fileSize,
    storageKey: t.nars.storageKey,
  };

  return {
    // ---- caches
    async cacheByName(name: string): Promise<CacheRow | undefined> {
      const rows = await db.select().from(t.caches).where(eq(t.caches.name, name)).limit(1);
      return rows[0];
    },
    async listCaches(): Promise<CacheRow[]> {
      return db.select().from(t.caches).orderBy(t.caches.name);
    },
    async createCache(
      cache: Pick<CacheRow, "name" | "public" | "priority" | "storeDir" | "description" | "upstreamKeys">,
      key: { name: string; publicKey: string; secretEncrypted: string },
    ): Promise<CacheRow | undefined> {
      return database.transaction(async (tx) => {
        const rows = await tx.insert(t.caches).values(cache).onConflictDoNothing().returning();
        const row = rows[0];
        if (!row) return undefined;
        await tx.insert(t.signingKeys).values({ cacheId: row.id, ...key, active: true });
        return row;
      });
    },
    async countCaches(): Promise<number> {
      const rows = await db.select({ n: sql<number>`count(*)` }).from(t.caches);
      return Number(rows[0]?.n ?? 0);
    },

    // ---- signing keys
    async signingKeys(cacheId: number): Promise<SigningKeyRow[]> {
      return db
        .select()
        .from(t.signingKeys)
        .where(and(eq(t.signingKeys.cacheId, cacheId), isNull(t.signingKeys.retiredAt)))
        .orderBy(t.signingKeys.id);
    },

    // ---- tokens
    async createToken(
      token: Pick<TokenRow, "name" | "secretHash" | "prefix" | "caches" | "permissions" | "expiresAt">,
    ) {
      return database.transaction(async (tx) => {
        const rows = await tx.insert(t.tokens).values(token).returning();
        return rows[0]!;
      });
    },
    async tokenBySecretHash(secretHash: string): Promise<TokenRow | undefined> {
      const rows = await db.select().from(t.tokens).where(eq(t.tokens.secretHash, secretHash)).limit(1);
      return rows[0];
    },
    async countTokens(): Promise<number> {
      const rows = await db.select({ n: sql<number>`count(*)` }).from(t.tokens);
      return Number(rows[0]?.n ?? 0);
    },
    async touchToken(id: number, now: number): Promise<void> {
      await database.transaction(async (tx) => {
        await tx.update(t.tokens).set({ lastUsedAt: now }).where(eq(t.tokens.id, id));
      });
    },

    // ---- paths
    async path(cacheId: number, hash: string): Promise<PathRecord | undefined> {
      const rows = await db
        .select(pathColumns)
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.paths.cacheId, cacheId), eq(t.paths.hash, hash)))
        .limit(1);
      return rows[0];
    },
    /** The subset of hashes this cache has. */
    async presentHashes(cacheId: number, hashes: readonly string[]): Promise<Set<string>> {
      return presentHashes(db, cacheId, hashes);
    },
    /** A NAR this cache serves, by the FileHash in its narinfo URL. */
    async narByFileHash(cacheId: number, fileHash: string): Promise<NarRow | undefined> {
      const rows = await db
        .select({ nar: t.nars })
        .from(t.nars)
        .innerJoin(t.paths, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.nars.fileHash, fileHash), eq(t.paths.cacheId, cacheId)))
        .limit(1);
      return rows[0]?.nar;
    },
    async narByNarHash(narHash: string): Promise<NarRow | undefined> {
      const rows = await db.select().from(t.nars).where(eq(t.nars.narHash, narHash)).limit(1);
      return rows[0];
    },
    async listing(cacheId: number, hash: string): Promise<string | undefined> {
      const rows = await db
        .select({ listing: t.narListings.listing })
        .from(t.paths)
        .innerJoin(t.narListings, eq(t.narListings.narId, t.paths.narId))
        .where(and(eq(t.paths.cacheId, cacheId), eq(t.paths.hash, hash)))
        .limit(1);
      return rows[0]?.listing;
    },

    /**
     * Makes a verified path visible: checks its references are present, records its NAR (or reuses the one
     * already stored with the same NarHash), inserts the path and forgets the pending upload — all or nothing.
     */
    async commitPath(path: NewPath, nar: NewNar): Promise<CommitOutcome> {
      return database.transaction(async (tx) => {
        const existing = await tx
          .select({ narHash: t.nars.narHash })
          .from(t.paths)
          .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
          .where(and(eq(t.paths.cacheId, path.cacheId), eq(t.paths.hash, path.hash)))
          .limit(1);
        if (existing[0]) return { kind: "already-present", narHash: existing[0].narHash };

        const present = await presentHashes(tx, path.cacheId, path.requiredHashes);
        const missing = path.requiredHashes.filter((h) => !present.has(h));
        if (missing.length > 0) return { kind: "missing-references", missing };

        const { listing, ...narColumns } = nar;
        const inserted = await tx
          .insert(t.nars)
          .values(narColumns)
          .onConflictDoNothing({ target: t.nars.narHash })
          .returning({ id: t.nars.id });
        let narId = inserted[0]?.id;
        const deduplicated = narId === undefined;
        if (narId === undefined) {
          const reused = await tx
            .select({ id: t.nars.id })
            .from(t.nars)
            .where(eq(t.nars.narHash, nar.narHash))
            .limit(1);
          narId = reused[0]!.id;
        } else {
          await tx.insert(t.narListings).values({ narId, listing });
          await tx.delete(t.pendingUploads).where(eq(t.pendingUploads.storageKey, nar.storageKey));
        }
        if (path.stagedNarId !== undefined)
          await tx.delete(t.stagedNars).where(eq(t.stagedNars.id, path.stagedNarId));
        await tx.insert(t.paths).values({
          cacheId: path.cacheId,
          hash: path.hash,
          storePath: path.storePath,
          narId,
          references: [...path.references].sort().join(" "),
          deriver: path.deriver,
          system: path.system,
          ca: path.ca,
          sigs: path.sigs.join("\n"),
          pushedBy: path.pushedBy,
        });
        return { kind: "committed", narId, deduplicated };
      });
    },

    // ---- pending uploads (objects in storage no row owns yet)
    async addPendingUpload(storageKey: string): Promise<void> {
      await database.transaction(async (tx) => {
        await tx.insert(t.pendingUploads).values({ storageKey });
      });
    },
    /** Forgets an object that was deleted from storage (and any staged NAR it was). */
    async removePendingUpload(storageKey: string): Promise<void> {
      await database.transaction(async (tx) => {
        await tx.delete(t.stagedNars).where(eq(t.stagedNars.storageKey, storageKey));
        await tx.delete(t.pendingUploads).where(eq(t.pendingUploads.storageKey, storageKey));
      });
    },

    // ---- staged NARs (nix copy: NAR first, narinfo later)
    /** Records a verified staged NAR under its file name; returns the storage key it replaced, if any. */
    async stageNar(staged: NewStagedNar): Promise<string | undefined> {
      return database.transaction(async (tx) => {
        const where = and(eq(t.stagedNars.cacheId, staged.cacheId), eq(t.stagedNars.file, staged.file));
        const previous = await tx
          .select({ storageKey: t.stagedNars.storageKey })
          .from(t.stagedNars)
          .where(where)
          .limit(1);
        if (previous[0]) await tx.delete(t.stagedNars).where(where);
        await tx.insert(t.stagedNars).values(staged);
        return previous[0]?.storageKey;
      });
    },
    async stagedNar(cacheId: number, file: string): Promise<StagedNarRow | undefined> {
      const rows = await db
        .select()
        .from(t.stagedNars)
        .where(and(eq(t.stagedNars.cacheId, cacheId), eq(t.stagedNars.file, file)))
        .limit(1);
      return rows[0];
    },
    async pendingUploadsOlderThan(cutoff: number): Promise<{ storageKey: string }[]> {
      return db
        .select({ storageKey: t.pendingUploads.storageKey })
        .from(t.pendingUploads)
        .where(sql`${t.pendingUploads.createdAt} < ${cutoff}`);
    },

    // ---- build logs
    async putLog(
      cacheId: number,
      drv: string,
      storageKey: string,
      size: number,
    ): Promise<string | undefined> {
      return database.transaction(async (tx) => {
        const previous = await tx
          .select({ storageKey: t.buildLogs.storageKey })
          .from(t.buildLogs)
          .where(and(eq(t.buildLogs.cacheId, cacheId), eq(t.buildLogs.drv, drv)))
          .limit(1);
        await tx
          .insert(t.buildLogs)
          .values({ cacheId, drv, storageKey, size })
          .onConflictDoUpdate({ target: [t.buildLogs.cacheId, t.buildLogs.drv], set: { storageKey, size } });
        await tx.delete(t.pendingUploads).where(eq(t.pendingUploads.storageKey, storageKey));
        return previous[0]?.storageKey;
      });
    },
    async log(cacheId: number, drv: string): Promise<{ storageKey: string; size: number } | undefined> {
      const rows = await db
        .select({ storageKey: t.buildLogs.storageKey, size: t.buildLogs.size })
        .from(t.buildLogs)
        .where(and(eq(t.buildLogs.cacheId, cacheId), eq(t.buildLogs.drv, drv)))
        .limit(1);
      return rows[0];
    },

    // ---- realisations
    async putRealisation(cacheId: number, outputId: string, content: string): Promise<void> {
      await database.transaction(async (tx) => {
        await tx
          .insert(t.realisations)
          .values({ cacheId, outputId, content })
          .onConflictDoUpdate({
            target: [t.realisations.cacheId, t.realisations.outputId],
            set: { content },
          });
      });
    },
    async realisation(cacheId: number, outputId: string): Promise<string | undefined> {
      const rows = await db
        .select({ content: t.realisations.content })
        .from(t.realisations)
        .where(and(eq(t.realisations.cacheId, cacheId), eq(t.realisations.outputId, outputId)))
        .limit(1);
      return rows[0]?.content;
    },
  };
}

export type Repo = ReturnType<typeof createRepo>;
