// Every query the server makes, written once for both dialects (see database.ts). Verbs call these; nothing
// else builds SQL. Methods that write run inside one transaction each, so a caller never sees half of one.
import {
  and,
  asc,
  desc,
  eq,
  exists,
  gt,
  gte,
  inArray,
  isNotNull,
  isNull,
  lt,
  lte,
  notExists,
  or,
  type Placeholder,
  sql,
} from "drizzle-orm";
import type { Database, Db, Tables } from "./database.ts";
import { groupedReads } from "./grouped-reads.ts";
import { groupedWrites } from "./grouped-writes.ts";

export type CacheRow = Tables["caches"]["$inferSelect"];
export type SigningKeyRow = Tables["signingKeys"]["$inferSelect"];
export type TokenRow = Tables["tokens"]["$inferSelect"];
export type NarRow = Tables["nars"]["$inferSelect"];
export type StagedNarRow = Tables["stagedNars"]["$inferSelect"];
export type GcRunRow = Tables["gcRuns"]["$inferSelect"];
export type DailyStatsRow = Tables["cacheDailyStats"]["$inferSelect"];

/** A path as garbage collection and deletion see it: a node of the cache's reference graph. */
export interface PathNode {
  id: number;
  hash: string;
  storePath: string;
  narSize: number;
  /** Reference basenames, space-separated (as stored). */
  references: string;
  narId: number;
  fileSize: number;
  createdAt: number;
  lastAccessedAt: number | null;
  pinned: boolean;
}

/** What the access log adds up between two flushes (see server/verbs/access-log.ts). */
export interface AccessBatch {
  at: number;
  /** cacheId → hashes whose narinfo was read. */
  narinfos: Map<number, Set<string>>;
  /** cacheId → NAR ids downloaded. */
  nars: Map<number, Set<number>>;
  counters: {
    cacheId: number;
    day: number;
    narinfoHits: number;
    narinfoMisses: number;
    narDownloads: number;
    narBytes: number;
  }[];
}

export interface PathListQuery {
  /** Case-insensitive substring of the store path. */
  search?: string | undefined;
  pinned?: boolean | undefined;
  /** Keyset paging: ids below this one (the list is newest first). */
  before?: number | undefined;
  limit: number;
}

export interface PathDetail extends PathRecord {
  hash: string;
  createdAt: number;
  lastAccessedAt: number | null;
  pinned: boolean;
  pushedBy: number | null;
}
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

/** The columns of a path's row, as commits insert it. */
function pathRowOf(path: NewPath, narId: number) {
  return {
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
  };
}

export type CommitOutcome =
  | { kind: "committed"; narId: number; deduplicated: boolean }
  | { kind: "already-present"; narHash: string }
  | { kind: "missing-references"; missing: string[] };

const CHUNK = 500;
/** Lists of hashes up to this length are looked up with a statement prepared for their length. */
const PREPARED_IN_MAX = 16;
/** How long a cache row read by name is reused (see cacheByName). */
const CACHE_ROW_TTL_MS = 1000;
/** Names remembered at most (misses included), so random names cannot grow the memo without bound. */
const CACHE_ROWS_MAX = 1000;
/** How long a path read by hash, or a NAR by file hash, is reused (see rememberRow). */
const ROW_TTL_MS = 1000;
/** Rows remembered at most (~1 KiB each); past it the oldest entry goes. */
const ROWS_MAX = 20_000;

/** PostgreSQL's deadlock_detected and serialization_failure (the driver's error, or wrapped as its cause). */
function isLockConflict(error: unknown): boolean {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e)
    if (e.code === "40P01" || e.code === "40001") return true;
  return false;
}

/** Thrown inside commitPath's transaction to roll it back when the path was committed concurrently. */
class PathRaced extends Error {}

function chunks<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK));
  return out;
}

/** A query built and prepared once, run with named placeholder values. */
interface Prepared<Row> {
  execute(values: Record<string, unknown>): PromiseLike<Row[]>;
}

/**
 * The reads every substituter request makes are built and prepared once. Otherwise drizzle rebuilds the SQL
 * text and better-sqlite3 re-prepares it on every call, which was most of a narinfo's CPU time (issue 7's
 * profile). On PostgreSQL the name makes it a server-side prepared statement on each pooled connection;
 * SQLite ignores it. Both dialects' select builders have `prepare(name?)` and `execute(values)`.
 */
function prepare<Row>(query: PromiseLike<Row[]>, name: string): Prepared<Row> {
  return (query as unknown as { prepare(name: string): Prepared<Row> }).prepare(name);
}

/** A statement run with placeholder values on the connection it is given. */
type Statement<Row> = (q: Db, values: Record<string, unknown>) => PromiseLike<Row[]>;

/**
 * A statement of the write transactions every push makes, built and prepared once per connection rather than
 * on every call (drizzle building the SQL text and the driver preparing it were most of the database's CPU
 * time in a push: `npm run bench -- --only 6 --profile`). `q` is a transaction's handle, the same object for
 * every transaction on the same connection (database.ts), so the prepared statement is kept per handle.
 */
function statement<Row>(name: string, build: (q: Db) => PromiseLike<Row[]>): Statement<Row> {
  const prepared = new WeakMap<Db, Prepared<Row>>();
  return (q, values) => {
    let ready = prepared.get(q);
    if (!ready) {
      ready = prepare(build(q), name);
      prepared.set(q, ready);
    }
    return ready.execute(values);
  };
}

export function createRepo(database: Database) {
  const { db, t } = database;
  const p = sql.placeholder;

  /** A small object's row put over an existing one replaces it. */
  const replaceInlineRow = {
    target: t.inlineObjects.key,
    set: { bytes: sql`excluded.bytes`, size: sql`excluded.size`, createdAt: sql`excluded.created_at` },
  };

  const writes = {
    pathNarHash: statement("w_path_nar_hash", (q) =>
      q
        .select({ narHash: t.nars.narHash })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.paths.cacheId, p("cacheId")), eq(t.paths.hash, p("hash")))),
    ),
    insertNar: statement("w_insert_nar", (q) =>
      q
        .insert(t.nars)
        .values({
          narHash: p("narHash"),
          narSize: p("narSize"),
          compression: p("compression"),
          fileHash: p("fileHash"),
          fileSize: p("fileSize"),
          storageKey: p("storageKey"),
        })
        // Any unique conflict, not only NarHash's: the same content committed at once by another transaction
        // conflicts on FileHash too, and PostgreSQL raises a conflict on an index other than the one named
        // here (it did, in CI: nars_file_hash). Either way the row is the same NAR, found by NarHash next.
        .onConflictDoNothing()
        .returning({ id: t.nars.id }),
    ),
    narIdByNarHash: statement("w_nar_id_by_nar_hash", (q) =>
      q
        .select({ id: t.nars.id })
        .from(t.nars)
        .where(eq(t.nars.narHash, p("narHash"))),
    ),
    insertListing: statement("w_insert_listing", (q) =>
      q
        .insert(t.narListings)
        .values({ narId: p("narId"), listing: p("listing") })
        .returning({ narId: t.narListings.narId }),
    ),
    putInline: statement("w_put_inline", (q) =>
      q
        .insert(t.inlineObjects)
        .values({ key: p("key"), bytes: p("bytes"), size: p("size"), createdAt: p("createdAt") })
        .onConflictDoUpdate(replaceInlineRow)
        .returning({ key: t.inlineObjects.key }),
    ),
    deleteInline: statement("w_delete_inline", (q) =>
      q
        .delete(t.inlineObjects)
        .where(eq(t.inlineObjects.key, p("key")))
        .returning({ key: t.inlineObjects.key }),
    ),
    insertPending: statement("w_insert_pending", (q) =>
      q
        .insert(t.pendingUploads)
        .values({ storageKey: p("storageKey") })
        .returning({ storageKey: t.pendingUploads.storageKey }),
    ),
    deletePending: statement("w_delete_pending", (q) =>
      q
        .delete(t.pendingUploads)
        .where(eq(t.pendingUploads.storageKey, p("storageKey")))
        .returning({ storageKey: t.pendingUploads.storageKey }),
    ),
    insertPath: statement("w_insert_path", (q) =>
      q
        .insert(t.paths)
        .values({
          cacheId: p("cacheId"),
          hash: p("hash"),
          storePath: p("storePath"),
          narId: p("narId"),
          references: p("references"),
          deriver: p("deriver"),
          system: p("system"),
          ca: p("ca"),
          sigs: p("sigs"),
          pushedBy: p("pushedBy"),
        })
        .onConflictDoNothing({ target: [t.paths.cacheId, t.paths.hash] })
        .returning({ id: t.paths.id }),
    ),
  };

  // Every push checks its path's references (before reading the body, and again, locking them, when it
  // commits): a list of a few hashes, run on a statement prepared once per list length up to
  // PREPARED_IN_MAX; longer lists (a batch's "which are missing", a path with many references) are built per
  // call, CHUNK at a time. Each query is written once, for values or for placeholders.
  type HashQuery = (
    q: Db,
    cacheId: number | Placeholder,
    hashes: (string | Placeholder)[],
  ) => PromiseLike<{ hash: string }[]>;
  function hashesBy(name: string, query: HashQuery) {
    const byLength = new Map<number, Statement<{ hash: string }>>();
    const prepared = (n: number) => {
      let ready = byLength.get(n);
      if (!ready) {
        const slots = Array.from({ length: n }, (_, i) => p(`h${i}`));
        ready = statement(`${name}_${n}`, (q) => query(q, p("cacheId"), slots));
        byLength.set(n, ready);
      }
      return ready;
    };
    return async (q: Db, cacheId: number, hashes: readonly string[]): Promise<Set<string>> => {
      const found = new Set<string>();
      for (const part of chunks([...new Set(hashes)])) {
        const rows =
          part.length <= PREPARED_IN_MAX
            ? await prepared(part.length)(
                q,
                Object.fromEntries([["cacheId", cacheId], ...part.map((h, i) => [`h${i}`, h])]),
              )
            : await query(q, cacheId, part);
        for (const row of rows) found.add(row.hash);
      }
      return found;
    };
  }

  const presentHashes = hashesBy("present_hashes", (q, cacheId, hashes) =>
    q
      .select({ hash: t.paths.hash })
      .from(t.paths)
      .where(and(eq(t.paths.cacheId, cacheId), inArray(t.paths.hash, hashes))),
  );

  // Row-locks what it finds (a no-op update); see commitPathIn.
  const lockPresentHashes = hashesBy("lock_present_hashes", (q, cacheId, hashes) =>
    q
      .update(t.paths)
      .set({ pinned: sql`${t.paths.pinned}` })
      .where(and(eq(t.paths.cacheId, cacheId), inArray(t.paths.hash, hashes)))
      .returning({ hash: t.paths.hash }),
  );

  /** Marks the NARs among narIds that no path refers to any more as unreferenced since now. */
  async function markUnreferenced(q: Db, narIds: readonly number[], now: number): Promise<number[]> {
    const marked: number[] = [];
    for (const part of chunks([...new Set(narIds)])) {
      const rows = await q
        .update(t.nars)
        .set({ unreferencedAt: now })
        .where(
          and(
            inArray(t.nars.id, part),
            notExists(q.select({ one: sql`1` }).from(t.paths).where(eq(t.paths.narId, t.nars.id))),
          ),
        )
        .returning({ id: t.nars.id });
      for (const row of rows) marked.push(row.id);
    }
    return marked;
  }

  /** See the repository's commitPath. */
  async function commitPath(path: NewPath, nar: NewNar): Promise<CommitOutcome> {
    try {
      return await database.transaction((tx) => commitPathIn(tx, path, nar));
    } catch (error) {
      if (!(error instanceof PathRaced)) throw error;
      // The same path was committed concurrently (another replica, or the same push twice at once): this
      // transaction rolled back, and the caller learns which NAR the cache has.
      const rows = await writes.pathNarHash(db, { cacheId: path.cacheId, hash: path.hash });
      return { kind: "already-present", narHash: rows[0]?.narHash ?? "" };
    }
  }

  /** commitPath's work inside a transaction; throws PathRaced (to roll it back) on a concurrent commit. */
  async function commitPathIn(tx: Db, path: NewPath, nar: NewNar): Promise<CommitOutcome> {
    const existing = await writes.pathNarHash(tx, { cacheId: path.cacheId, hash: path.hash });
    if (existing[0]) return { kind: "already-present", narHash: existing[0].narHash };

    // Row-locks the references (a no-op update) so that a concurrent garbage collection, which locks its
    // victims the same way before deleting them, either sees this path or makes it fail here.
    const present = await lockPresentHashes(tx, path.cacheId, path.requiredHashes);
    const missing = path.requiredHashes.filter((h) => !present.has(h));
    if (missing.length > 0) return { kind: "missing-references", missing };

    const { listing, ...narColumns } = nar;
    const inserted = await writes.insertNar(tx, narColumns);
    let narId = inserted[0]?.id;
    const deduplicated = narId === undefined;
    if (narId === undefined) {
      const reused = await writes.narIdByNarHash(tx, { narHash: nar.narHash });
      narId = reused[0]!.id;
    } else {
      await writes.insertListing(tx, { narId, listing });
      await writes.deletePending(tx, { storageKey: nar.storageKey });
    }
    if (path.stagedNarId !== undefined)
      await tx.delete(t.stagedNars).where(eq(t.stagedNars.id, path.stagedNarId));
    const insertedPath = await writes.insertPath(tx, pathRowOf(path, narId));
    if (insertedPath.length === 0) throw new PathRaced();
    return { kind: "committed", narId, deduplicated };
  }

  /**
   * commitPathIn for many paths, in order, with a few statements for the whole list instead of six per path:
   * on PostgreSQL each statement is a round trip (a socket write and a wake-up of the database's process),
   * and pushing 302 small paths made ~1,800 of them (BENCHMARKS.md, session 19). The outcomes are
   * commitPathIn's, path by path: which paths exist, which references are present (locked, as commitPathIn
   * locks them), then what each path finds in order.
   */
  async function commitPathsIn(
    tx: Db,
    items: readonly { path: NewPath; nar: NewNar }[],
  ): Promise<CommitOutcome[]> {
    const key = (cacheId: number, hash: string) => `${cacheId}/${hash}`;
    const byCache = new Map<number, { path: NewPath; nar: NewNar }[]>();
    for (const item of items) {
      const list = byCache.get(item.path.cacheId) ?? [];
      list.push(item);
      byCache.set(item.path.cacheId, list);
    }
    // The batch's paths the cache has already, and the NarHash of each.
    const existing = new Map<string, string>();
    for (const [cacheId, list] of byCache)
      for (const part of chunks([...new Set(list.map(({ path }) => path.hash))])) {
        const rows = await tx
          .select({ hash: t.paths.hash, narHash: t.nars.narHash })
          .from(t.paths)
          .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
          .where(and(eq(t.paths.cacheId, cacheId), inArray(t.paths.hash, part)));
        for (const row of rows) existing.set(key(cacheId, row.hash), row.narHash);
      }
    // References the cache must hold already (outside the batch, or in it and present), locked in one
    // statement per cache, in index order (see commitPaths).
    const inBatch = new Set(items.map(({ path }) => key(path.cacheId, path.hash)));
    const present = new Set<string>();
    for (const [cacheId, list] of byCache) {
      const outside = new Set<string>();
      for (const { path } of list)
        for (const hash of path.requiredHashes)
          if (!inBatch.has(key(cacheId, hash)) || existing.has(key(cacheId, hash))) outside.add(hash);
      for (const hash of await lockPresentHashes(tx, cacheId, [...outside].sort()))
        present.add(key(cacheId, hash));
    }
    // What each path finds, in order: a path committed earlier in the list is present for those after it.
    const outcomes: (CommitOutcome | undefined)[] = [];
    const committing: { index: number; path: NewPath; nar: NewNar }[] = [];
    const committedNarHash = new Map<string, string>();
    for (const [index, { path, nar }] of items.entries()) {
      const at = key(path.cacheId, path.hash);
      const narHash = existing.get(at) ?? committedNarHash.get(at);
      if (narHash !== undefined) {
        outcomes.push({ kind: "already-present", narHash });
        continue;
      }
      const missing = path.requiredHashes.filter((h) => {
        const ref = key(path.cacheId, h);
        return !present.has(ref) && !committedNarHash.has(ref);
      });
      if (missing.length > 0) {
        outcomes.push({ kind: "missing-references", missing });
        continue;
      }
      outcomes.push(undefined);
      committing.push({ index, path, nar });
      committedNarHash.set(at, nar.narHash);
    }
    // Their NARs: the first of each NarHash inserted, unless the cache stores it already (any unique conflict,
    // see insertNar); the others reuse the row.
    const firstOfNarHash = new Map<string, NewNar>();
    for (const { nar } of committing)
      if (!firstOfNarHash.has(nar.narHash)) firstOfNarHash.set(nar.narHash, nar);
    const insertedNarIds = new Map<string, number>(); // by storage key
    for (const part of chunks([...firstOfNarHash.values()])) {
      const rows = await tx
        .insert(t.nars)
        .values(part.map(({ listing: _, ...columns }) => columns))
        .onConflictDoNothing()
        .returning({ id: t.nars.id, storageKey: t.nars.storageKey });
      for (const row of rows) insertedNarIds.set(row.storageKey, row.id);
    }
    const narIds = new Map<string, number>(); // by NarHash
    const inserted: NewNar[] = [];
    for (const nar of firstOfNarHash.values()) {
      const id = insertedNarIds.get(nar.storageKey);
      if (id === undefined) continue;
      narIds.set(nar.narHash, id);
      inserted.push(nar);
    }
    const reused = [...firstOfNarHash.keys()].filter((narHash) => !narIds.has(narHash));
    for (const part of chunks(reused)) {
      const rows = await tx
        .select({ id: t.nars.id, narHash: t.nars.narHash })
        .from(t.nars)
        .where(inArray(t.nars.narHash, part));
      for (const row of rows) narIds.set(row.narHash, row.id);
    }
    for (const narHash of reused)
      if (!narIds.has(narHash)) throw new Error(`no NAR row for ${narHash}, and none could be inserted`);
    for (const part of chunks(inserted)) {
      await tx
        .insert(t.narListings)
        .values(part.map((nar) => ({ narId: narIds.get(nar.narHash)!, listing: nar.listing })));
      await tx.delete(t.pendingUploads).where(
        inArray(
          t.pendingUploads.storageKey,
          part.map((nar) => nar.storageKey),
        ),
      );
    }
    for (const { path } of committing)
      if (path.stagedNarId !== undefined)
        await tx.delete(t.stagedNars).where(eq(t.stagedNars.id, path.stagedNarId));
    // The paths, and each one's outcome.
    for (const part of chunks(committing)) {
      const rows = await tx
        .insert(t.paths)
        .values(part.map(({ path, nar }) => pathRowOf(path, narIds.get(nar.narHash)!)))
        .onConflictDoNothing({ target: [t.paths.cacheId, t.paths.hash] })
        .returning({ id: t.paths.id });
      if (rows.length < part.length) throw new PathRaced();
    }
    for (const { index, nar } of committing) {
      const stored = firstOfNarHash.get(nar.narHash) === nar && insertedNarIds.has(nar.storageKey);
      outcomes[index] = { kind: "committed", narId: narIds.get(nar.narHash)!, deduplicated: !stored };
    }
    return outcomes.map((outcome) => outcome!);
  }

  const nodeColumns = {
    id: t.paths.id,
    hash: t.paths.hash,
    storePath: t.paths.storePath,
    narSize: t.nars.narSize,
    references: t.paths.references,
    narId: t.paths.narId,
    fileSize: t.nars.fileSize,
    createdAt: t.paths.createdAt,
    lastAccessedAt: t.paths.lastAccessedAt,
    pinned: t.paths.pinned,
  };

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
  /** pathColumns and the rest of the NAR row (see hot.path). */
  const pathWithNarColumns = {
    ...pathColumns,
    narCreatedAt: t.nars.createdAt,
    narUnreferencedAt: t.nars.unreferencedAt,
  };

  // Every substituter request looks its cache up by name; caches change rarely. Rows (and misses) are kept
  // for CACHE_ROW_TTL_MS: a change made through this process is seen at once (its cache writes clear the
  // memo), one made through another replica within that time. On PostgreSQL this saves a round trip per
  // narinfo and NAR request.
  const cacheRows = new Map<string, { row: CacheRow | undefined; until: number }>();
  const forgetCacheRows = () => cacheRows.clear();
  /** The memo's entry for a name (a row, or a remembered miss) while it is still live. */
  const rememberedCacheRow = (name: string, now: number) => {
    const known = cacheRows.get(name);
    return known && known.until > now ? known : undefined;
  };

  // Every narinfo request reads one path by hash and every NAR request one NAR by file hash, most of them
  // again and again (a substituter walks the same closures; wrk's measure 2 hits 300 paths). Found rows are
  // kept for ROW_TTL_MS, as cache rows are: a path this process deletes or re-signs is forgotten at once
  // (deletePathsGuarded, purgeCache, replaceSigs and dropUnreferencedNar clear the memo), one deleted
  // through another replica is served for at most that long, as Nix clients themselves keep narinfos for
  // 30 days. On SQLite a point read costs ~10 µs here (its read transaction locks the WAL index), on
  // PostgreSQL a round trip; the memo answers in well under 1 µs.
  //
  // While the database says when anything was committed (database.revision(): SQLite, for this process's
  // transactions and other processes' commits alike; PostgreSQL, for this process's and, by notification,
  // other replicas'), an entry read at the current revision holds past its second too, checked instead of
  // read again (~4 µs on SQLite, a variable on PostgreSQL); and absent rows are remembered as absent (null)
  // on that condition alone, checked on every use, so a push is still seen at once (on another replica,
  // once its notification arrives). While it cannot say (revision() undefined: PostgreSQL not listening),
  // absent rows are never remembered. Last-access flushes keep the revision (recordAccess): the access
  // times in remembered path rows can lag, and nothing reads those from here (pathDetail queries).
  interface Remembered {
    /** The row, or null: no such row. */
    row: unknown;
    /** A found row holds until then without a check. */
    until: number;
    /** database.revision() before the read. */
    revision: number | undefined;
  }
  const rows = new Map<string, Remembered>();
  let rowEpoch = 0;
  const forgetRows = () => {
    rowEpoch++;
    rows.clear();
  };
  const pathKey = (cacheId: number, hash: string) => `p/${cacheId}/${hash}`;
  const narKey = (cacheId: number, fileHash: string) => `n/${cacheId}/${fileHash}`;
  /** Whether `entry` still says what the database holds (a found row checked past its second holds another). */
  const holds = (entry: Remembered, now: number): boolean => {
    if (entry.row !== null && entry.until > now) return true;
    if (entry.revision === undefined || entry.revision !== database.revision()) return false;
    if (entry.row !== null) entry.until = now + ROW_TTL_MS;
    return true;
  };
  /** The remembered row under `key`: the row, null when it is known absent, undefined when nothing holds. */
  const peekRow = <T>(key: string): T | null | undefined => {
    const known = rows.get(key);
    return known && holds(known, performance.now()) ? (known.row as T | null) : undefined;
  };
  const remember = (key: string, row: unknown, now: number, revision: number | undefined) => {
    rows.delete(key);
    if (rows.size >= ROWS_MAX) rows.delete(rows.keys().next().value!);
    rows.set(key, { row, until: now + ROW_TTL_MS, revision });
  };
  /**
   * The row under `key` as remembered, or `read()`'s, remembered (see above). `read` may also hand
   * `alongside` other rows it learnt (key → row), remembered with it under the same rule.
   */
  async function rememberRow<T>(
    key: string,
    read: (alongside: Map<string, unknown>) => Promise<T | undefined>,
  ): Promise<T | undefined> {
    const now = performance.now();
    const known = rows.get(key);
    if (known && holds(known, now)) return (known.row ?? undefined) as T | undefined;
    // Both taken before the read: a deletion committed while it runs clears the memo first, and the row
    // read must not be remembered then (it may be the deleted one); any other commit meanwhile changes the
    // revision, so the row is read again at its next use.
    const epoch = rowEpoch;
    const revision = database.revision();
    const alongside = new Map<string, unknown>();
    const row = await read(alongside);
    if (known) rows.delete(key);
    if (epoch === rowEpoch) {
      if (row !== undefined) {
        remember(key, row, now, revision);
        for (const [other, value] of alongside) remember(other, value, now, revision);
      } else if (revision !== undefined) remember(key, null, now, revision);
    }
    return row;
  }

  // Every key here is unique, so none of these reads has a LIMIT: drizzle binds LIMIT as a parameter, and
  // SQLite then ran each point lookup 4x slower (33 µs against 8 µs for the same row).
  const hot = {
    cacheByName: prepare(
      db
        .select()
        .from(t.caches)
        .where(and(eq(t.caches.name, sql.placeholder("name")), isNull(t.caches.deletedAt))),
      "cache_by_name",
    ),
    tokenBySecretHash: prepare(
      db
        .select()
        .from(t.tokens)
        .where(eq(t.tokens.secretHash, sql.placeholder("secretHash"))),
      "token_by_secret_hash",
    ),
    // With the rest of its NAR row, which path() remembers as the NAR request that follows will ask for it.
    path: prepare(
      db
        .select(pathWithNarColumns)
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(
          and(eq(t.paths.cacheId, sql.placeholder("cacheId")), eq(t.paths.hash, sql.placeholder("hash"))),
        ),
      "path_by_hash",
    ),
    narByFileHash: prepare(
      db
        .select()
        .from(t.nars)
        .where(
          and(
            eq(t.nars.fileHash, sql.placeholder("fileHash")),
            // `+cache_id` keeps SQLite off the (cache_id, created_at) index: without statistics it picked
            // that one and scanned every path of the cache per NAR request (33 µs at 300 paths, growing
            // with the cache); on paths_nar (nar_id) it is one index probe (11 µs). PostgreSQL plans it alike.
            exists(
              db
                .select({ one: sql`1` })
                .from(t.paths)
                .where(
                  and(eq(t.paths.narId, t.nars.id), sql`+${t.paths.cacheId} = ${sql.placeholder("cacheId")}`),
                ),
            ),
          ),
        ),
      "nar_by_file_hash",
    ),
    listing: prepare(
      db
        .select({ listing: t.narListings.listing })
        .from(t.paths)
        .innerJoin(t.narListings, eq(t.narListings.narId, t.paths.narId))
        .where(
          and(eq(t.paths.cacheId, sql.placeholder("cacheId")), eq(t.paths.hash, sql.placeholder("hash"))),
        ),
      "listing_by_hash",
    ),
    log: prepare(
      db
        .select({ storageKey: t.buildLogs.storageKey, size: t.buildLogs.size })
        .from(t.buildLogs)
        .where(
          and(
            eq(t.buildLogs.cacheId, sql.placeholder("cacheId")),
            eq(t.buildLogs.drv, sql.placeholder("drv")),
          ),
        ),
      "log_by_drv",
    ),
    // Every push signs with its cache's keys.
    signingKeys: prepare(
      db
        .select()
        .from(t.signingKeys)
        .where(and(eq(t.signingKeys.cacheId, sql.placeholder("cacheId")), isNull(t.signingKeys.retiredAt)))
        .orderBy(t.signingKeys.id),
      "signing_keys_of_cache",
    ),
    inlineObject: prepare(
      db
        .select({ bytes: t.inlineObjects.bytes, createdAt: t.inlineObjects.createdAt })
        .from(t.inlineObjects)
        .where(eq(t.inlineObjects.key, sql.placeholder("key"))),
      "inline_object",
    ),
    inlineObjectStat: prepare(
      db
        .select({ size: t.inlineObjects.size, createdAt: t.inlineObjects.createdAt })
        .from(t.inlineObjects)
        .where(eq(t.inlineObjects.key, sql.placeholder("key"))),
      "inline_object_stat",
    ),
    realisation: prepare(
      db
        .select({ content: t.realisations.content })
        .from(t.realisations)
        .where(
          and(
            eq(t.realisations.cacheId, sql.placeholder("cacheId")),
            eq(t.realisations.outputId, sql.placeholder("outputId")),
          ),
        ),
      "realisation_by_output",
    ),
  };

  // On PostgreSQL a path read is a round trip whose cost is mostly per query, so reads asked for while one is
  // in flight go together as the next query (grouped-reads.ts); SQLite reads on this thread in microseconds.
  type PathRead = Awaited<ReturnType<typeof hot.path.execute>>[number];
  const readPath = ((): ((cacheId: number, hash: string) => Promise<PathRead | undefined>) => {
    if (database.dialect !== "postgres") {
      return async (cacheId, hash) => (await hot.path.execute({ cacheId, hash }))[0];
    }
    const byHashes = prepare(
      db
        .select({ hash: t.paths.hash, ...pathWithNarColumns })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.paths.cacheId, p("cacheId")), sql`${t.paths.hash} = ANY(${p("hashes")})`)),
      "paths_by_hashes",
    );
    const groups = groupedReads<PathRead>({
      read: async (cacheId, hashes) => {
        const rows = await byHashes.execute({ cacheId, hashes });
        return new Map(rows.map(({ hash, ...row }) => [hash, row]));
      },
    });
    return (cacheId, hash) => groups.get(cacheId, hash);
  })();

  // On PostgreSQL each small object's row committed by itself is a round trip and a commit: rows asked for
  // while one is being written go together as the next statement (grouped-writes.ts). SQLite writes on this
  // thread in microseconds.
  type InlineRow = { key: string; bytes: Buffer; size: number; createdAt: number };
  const putInlineRow = ((): ((row: InlineRow) => Promise<void>) => {
    if (database.dialect !== "postgres") {
      return async (row) => {
        await database.single(async (q) => writes.putInline(q, row));
      };
    }
    return groupedWrites<InlineRow>({
      key: (row) => row.key,
      bytes: (row) => row.size,
      write: (rows) =>
        rows.length === 1
          ? database.single(async (q) => writes.putInline(q, rows[0]!))
          : database.single(async (q) =>
              q
                .insert(t.inlineObjects)
                .values([...rows])
                .onConflictDoUpdate(replaceInlineRow),
            ),
    });
  })();

  return {
    // ---- caches
    /** cacheByName without waiting: the remembered row, or undefined when none is remembered (or live). */
    peekCacheByName(name: string): CacheRow | undefined {
      return rememberedCacheRow(name, performance.now())?.row;
    },
    /** A live cache (soft-deleted ones are not found). */
    async cacheByName(name: string): Promise<CacheRow | undefined> {
      const now = performance.now();
      const known = rememberedCacheRow(name, now);
      if (known) return known.row;
      const row = (await hot.cacheByName.execute({ name }))[0];
      if (cacheRows.size >= CACHE_ROWS_MAX) cacheRows.clear();
      cacheRows.set(name, { row, until: now + CACHE_ROW_TTL_MS });
      return row;
    },
    /** A cache, live or soft-deleted. */
    async anyCacheByName(name: string): Promise<CacheRow | undefined> {
      const rows = await db.select().from(t.caches).where(eq(t.caches.name, name)).limit(1);
      return rows[0];
    },
    async listCaches(options: { includeDeleted?: boolean } = {}): Promise<CacheRow[]> {
      return db
        .select()
        .from(t.caches)
        .where(options.includeDeleted ? undefined : isNull(t.caches.deletedAt))
        .orderBy(t.caches.name);
    },
    async updateCache(
      id: number,
      patch: Partial<
        Pick<
          CacheRow,
          | "public"
          | "priority"
          | "description"
          | "upstreamKeys"
          | "retentionSeconds"
          | "quotaBytes"
          | "deletedAt"
        >
      >,
    ): Promise<CacheRow | undefined> {
      const row = await database.transaction(async (tx) => {
        const rows = await tx.update(t.caches).set(patch).where(eq(t.caches.id, id)).returning();
        return rows[0];
      });
      forgetCacheRows();
      return row;
    },
    /**
     * Removes a cache and everything that is its own (paths, keys, logs, realisations, staged NARs) in one
     * transaction. Objects only it owned (logs, staged NARs) become pending uploads, for the caller to delete;
     * NARs other caches do not use are marked unreferenced, for the collector to remove after its grace period.
     */
    async purgeCache(cacheId: number, now: number): Promise<{ paths: number; objects: string[] }> {
      const purged = await database
        .transaction(async (tx) => {
          const narIds = (
            await tx
              .selectDistinct({ narId: t.paths.narId })
              .from(t.paths)
              .where(eq(t.paths.cacheId, cacheId))
          ).map((r) => r.narId);
          const count = await tx
            .select({ n: sql<number>`count(*)` })
            .from(t.paths)
            .where(eq(t.paths.cacheId, cacheId));
          const objects = [
            ...(
              await tx
                .select({ key: t.buildLogs.storageKey })
                .from(t.buildLogs)
                .where(eq(t.buildLogs.cacheId, cacheId))
            ).map((r) => r.key),
            ...(
              await tx
                .select({ key: t.stagedNars.storageKey })
                .from(t.stagedNars)
                .where(eq(t.stagedNars.cacheId, cacheId))
            ).map((r) => r.key),
          ];
          for (const part of chunks(objects)) {
            await tx
              .insert(t.pendingUploads)
              .values(part.map((storageKey) => ({ storageKey })))
              .onConflictDoNothing();
          }
          await tx.delete(t.paths).where(eq(t.paths.cacheId, cacheId));
          await tx.delete(t.caches).where(eq(t.caches.id, cacheId));
          await markUnreferenced(tx, narIds, now);
          return { paths: Number(count[0]?.n ?? 0), objects };
        })
        .finally(forgetRows);
      forgetCacheRows();
      return purged;
    },
    async createCache(
      cache: Pick<CacheRow, "name" | "public" | "priority" | "storeDir" | "description" | "upstreamKeys"> &
        Partial<Pick<CacheRow, "retentionSeconds" | "quotaBytes">>,
      key: { name: string; publicKey: string; secretEncrypted: string },
    ): Promise<CacheRow | undefined> {
      const created = await database.transaction(async (tx) => {
        const rows = await tx.insert(t.caches).values(cache).onConflictDoNothing().returning();
        const row = rows[0];
        if (!row) return undefined;
        await tx.insert(t.signingKeys).values({ cacheId: row.id, ...key, active: true });
        return row;
      });
      forgetCacheRows();
      return created;
    },
    async countCaches(): Promise<number> {
      const rows = await db.select({ n: sql<number>`count(*)` }).from(t.caches);
      return Number(rows[0]?.n ?? 0);
    },

    // ---- signing keys
    async signingKeys(cacheId: number): Promise<SigningKeyRow[]> {
      return hot.signingKeys.execute({ cacheId });
    },

    /** Every key of the cache, retired ones included, oldest first. */
    async allSigningKeys(cacheId: number): Promise<SigningKeyRow[]> {
      return db
        .select()
        .from(t.signingKeys)
        .where(eq(t.signingKeys.cacheId, cacheId))
        .orderBy(t.signingKeys.id);
    },
    async addSigningKey(
      cacheId: number,
      key: { name: string; publicKey: string; secretEncrypted: string },
    ): Promise<SigningKeyRow> {
      return database.transaction(async (tx) => {
        const rows = await tx
          .insert(t.signingKeys)
          .values({ cacheId, ...key, active: true })
          .returning();
        return rows[0]!;
      });
    },
    async retireSigningKey(id: number, now: number): Promise<void> {
      await database.transaction(async (tx) => {
        await tx.update(t.signingKeys).set({ active: false, retiredAt: now }).where(eq(t.signingKeys.id, id));
      });
    },
    /** How many of the cache's paths carry a Sig line by the key named keyName. */
    async countPathsSignedBy(cacheId: number, keyName: string): Promise<number> {
      const escaped = keyName.replace(/[\\%_]/g, (c) => `\\${c}`);
      const rows = await db
        .select({ n: sql<number>`count(*)` })
        .from(t.paths)
        .where(
          and(
            eq(t.paths.cacheId, cacheId),
            or(
              sql`${t.paths.sigs} LIKE ${`${escaped}:%`} ESCAPE '\\'`,
              sql`${t.paths.sigs} LIKE ${`%\n${escaped}:%`} ESCAPE '\\'`,
            ),
          ),
        );
      return Number(rows[0]?.n ?? 0);
    },
    /** A page of the cache's paths by id, with what signing needs. */
    async signaturePage(cacheId: number, afterId: number, limit: number) {
      return db
        .select({
          id: t.paths.id,
          storePath: t.paths.storePath,
          references: t.paths.references,
          sigs: t.paths.sigs,
          narHash: t.nars.narHash,
          narSize: t.nars.narSize,
        })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.paths.cacheId, cacheId), gt(t.paths.id, afterId)))
        .orderBy(asc(t.paths.id))
        .limit(limit);
    },
    /** Replaces Sig lines, each only if the row still has the lines it was read with. */
    /** The ids whose lines were replaced. */
    async replaceSigs(updates: readonly { id: number; from: string; to: string }[]): Promise<number[]> {
      if (updates.length === 0) return [];
      return database
        .transaction(async (tx) => {
          const changed: number[] = [];
          for (const u of updates) {
            const rows = await tx
              .update(t.paths)
              .set({ sigs: u.to })
              .where(and(eq(t.paths.id, u.id), eq(t.paths.sigs, u.from)))
              .returning({ id: t.paths.id });
            for (const row of rows) changed.push(row.id);
          }
          return changed;
        })
        .finally(forgetRows);
    },

    // ---- tokens
    async listTokens(): Promise<TokenRow[]> {
      return db.select().from(t.tokens).orderBy(t.tokens.id);
    },
    async tokenById(id: number): Promise<TokenRow | undefined> {
      const rows = await db.select().from(t.tokens).where(eq(t.tokens.id, id)).limit(1);
      return rows[0];
    },
    async revokeToken(id: number, now: number): Promise<void> {
      await database.transaction(async (tx) => {
        await tx
          .update(t.tokens)
          .set({ revokedAt: now })
          .where(and(eq(t.tokens.id, id), isNull(t.tokens.revokedAt)));
      });
    },
    async createToken(
      token: Pick<TokenRow, "name" | "secretHash" | "prefix" | "caches" | "permissions" | "expiresAt">,
    ) {
      return database.transaction(async (tx) => {
        const rows = await tx.insert(t.tokens).values(token).returning();
        return rows[0]!;
      });
    },
    async tokenBySecretHash(secretHash: string): Promise<TokenRow | undefined> {
      return (await hot.tokenBySecretHash.execute({ secretHash }))[0];
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
    /** path without waiting: the remembered row, null when it is known absent, undefined when unknown. */
    peekPath(cacheId: number, hash: string): PathRecord | null | undefined {
      return peekRow(pathKey(cacheId, hash));
    },
    async path(cacheId: number, hash: string): Promise<PathRecord | undefined> {
      // A substituter reads a narinfo, then its NAR: the path's row carries the whole NAR row, remembered
      // as narByFileHash would, so the NAR request that follows within the memo's second needs no query
      // (on PostgreSQL a round trip per path substituted).
      return rememberRow(pathKey(cacheId, hash), async (alongside) => {
        const found = await readPath(cacheId, hash);
        if (!found) return undefined;
        const { narCreatedAt, narUnreferencedAt, ...record } = found;
        const nar: NarRow = {
          id: record.narId,
          narHash: record.narHash,
          narSize: record.narSize,
          compression: record.compression,
          fileHash: record.fileHash,
          fileSize: record.fileSize,
          storageKey: record.storageKey,
          createdAt: narCreatedAt,
          unreferencedAt: narUnreferencedAt,
        };
        alongside.set(narKey(cacheId, record.fileHash), nar);
        return record;
      });
    },
    /** The subset of hashes this cache has. */
    async presentHashes(cacheId: number, hashes: readonly string[]): Promise<Set<string>> {
      return presentHashes(db, cacheId, hashes);
    },
    /** narByFileHash without waiting: the remembered row, null when it is known absent, undefined when unknown. */
    peekNarByFileHash(cacheId: number, fileHash: string): NarRow | null | undefined {
      return peekRow(narKey(cacheId, fileHash));
    },
    /** A NAR this cache serves, by the FileHash in its narinfo URL. */
    async narByFileHash(cacheId: number, fileHash: string): Promise<NarRow | undefined> {
      return rememberRow(
        narKey(cacheId, fileHash),
        async () => (await hot.narByFileHash.execute({ cacheId, fileHash }))[0],
      );
    },
    async narByNarHash(narHash: string): Promise<NarRow | undefined> {
      const rows = await db.select().from(t.nars).where(eq(t.nars.narHash, narHash)).limit(1);
      return rows[0];
    },
    async listing(cacheId: number, hash: string): Promise<string | undefined> {
      return (await hot.listing.execute({ cacheId, hash }))[0]?.listing;
    },

    /**
     * Makes a verified path visible: checks its references are present, records its NAR (or reuses the one
     * already stored with the same NarHash), inserts the path and forgets the pending upload — all or nothing.
     */
    async commitPath(path: NewPath, nar: NewNar): Promise<CommitOutcome> {
      return commitPath(path, nar);
    },

    /**
     * commitPath for many paths, in order, in one transaction: a path may refer to one committed before it in
     * the list. Each gets its own outcome (a path whose references are missing is skipped, the others still
     * commit). When one of them was committed concurrently, the whole transaction is rolled back and the paths
     * are committed one by one instead, each as commitPath does.
     */
    async commitPaths(items: readonly { path: NewPath; nar: NewNar }[]): Promise<CommitOutcome[]> {
      try {
        // The references are locked in one statement per cache (rows taken in index order): batches
        // committing at once then lock in the same order and cannot deadlock on them, as they did
        // (PostgreSQL's 1 s deadlock timeout, then a failed batch) locking per path.
        return await database.transaction((tx) => commitPathsIn(tx, items));
      } catch (error) {
        // A path committed meanwhile, or a lock cycle with another transaction (two pushes of overlapping
        // closures in different orders): one transaction per path instead.
        if (!(error instanceof PathRaced) && !isLockConflict(error)) throw error;
        const outcomes: CommitOutcome[] = [];
        for (const { path, nar } of items) outcomes.push(await commitPath(path, nar));
        return outcomes;
      }
    },

    /** Newest first, keyset-paged by id. */
    async listPaths(cacheId: number, query: PathListQuery) {
      const conditions = [eq(t.paths.cacheId, cacheId)];
      if (query.search)
        conditions.push(sql`lower(${t.paths.storePath}) LIKE ${`%${query.search.toLowerCase()}%`}`);
      if (query.pinned !== undefined) conditions.push(eq(t.paths.pinned, query.pinned));
      if (query.before !== undefined) conditions.push(lt(t.paths.id, query.before));
      return db
        .select({
          id: t.paths.id,
          hash: t.paths.hash,
          storePath: t.paths.storePath,
          narSize: t.nars.narSize,
          fileSize: t.nars.fileSize,
          createdAt: t.paths.createdAt,
          lastAccessedAt: t.paths.lastAccessedAt,
          pinned: t.paths.pinned,
        })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(...conditions))
        .orderBy(desc(t.paths.id))
        .limit(query.limit);
    },
    async pathDetail(cacheId: number, hash: string): Promise<PathDetail | undefined> {
      const rows = await db
        .select({
          ...pathColumns,
          hash: t.paths.hash,
          createdAt: t.paths.createdAt,
          lastAccessedAt: t.paths.lastAccessedAt,
          pinned: t.paths.pinned,
          pushedBy: t.paths.pushedBy,
        })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(and(eq(t.paths.cacheId, cacheId), eq(t.paths.hash, hash)))
        .limit(1);
      return rows[0];
    },
    async setPinned(cacheId: number, hash: string, pinned: boolean): Promise<boolean> {
      return database.transaction(async (tx) => {
        const rows = await tx
          .update(t.paths)
          .set({ pinned })
          .where(and(eq(t.paths.cacheId, cacheId), eq(t.paths.hash, hash)))
          .returning({ id: t.paths.id });
        return rows.length > 0;
      });
    },
    /** The cache's whole reference graph, read in pages (garbage collection and deletion plan on it). */
    async pathGraph(cacheId: number): Promise<PathNode[]> {
      const out: PathNode[] = [];
      let after = 0;
      for (;;) {
        const rows = await db
          .select(nodeColumns)
          .from(t.paths)
          .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
          .where(and(eq(t.paths.cacheId, cacheId), gt(t.paths.id, after)))
          .orderBy(asc(t.paths.id))
          .limit(5000);
        out.push(...rows);
        if (rows.length < 5000) return out;
        after = rows[rows.length - 1]!.id;
      }
    },
    /**
     * Deletes paths of one cache, safely against concurrent pushes and pins: in one transaction, locks the
     * candidates (a push that references one of them holds or waits for the same row lock: see commitPath),
     * reads what changed since the caller planned (paths created since `since`, pins), lets `decide` pick the
     * ids that may still go, deletes them and marks the NARs nothing refers to any more as unreferenced.
     */
    async deletePathsGuarded(
      cacheId: number,
      candidates: readonly number[],
      since: number,
      now: number,
      decide: (state: { locked: PathNode[]; recent: PathNode[] }) => number[],
    ): Promise<{ deleted: PathNode[]; unreferencedNars: number[] }> {
      return database
        .transaction(async (tx) => {
          const locked: PathNode[] = [];
          for (const part of chunks(candidates)) {
            const ids = await tx
              .update(t.paths)
              .set({ pinned: sql`${t.paths.pinned}` })
              .where(and(eq(t.paths.cacheId, cacheId), inArray(t.paths.id, part)))
              .returning({ id: t.paths.id });
            if (ids.length === 0) continue;
            locked.push(
              ...(await tx
                .select(nodeColumns)
                .from(t.paths)
                .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
                .where(
                  inArray(
                    t.paths.id,
                    ids.map((r) => r.id),
                  ),
                )),
            );
          }
          const recent = await tx
            .select(nodeColumns)
            .from(t.paths)
            .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
            .where(and(eq(t.paths.cacheId, cacheId), gte(t.paths.createdAt, since)));
          const chosen = new Set(decide({ locked, recent }));
          const deleted = locked.filter((p) => chosen.has(p.id));
          for (const part of chunks(deleted.map((p) => p.id))) {
            await tx.delete(t.paths).where(inArray(t.paths.id, part));
          }
          const unreferencedNars = await markUnreferenced(
            tx,
            deleted.map((p) => p.narId),
            now,
          );
          return { deleted, unreferencedNars };
        })
        .finally(forgetRows);
    },

    // ---- NARs no path refers to (collected after a grace period)
    /** Marks NARs that lost their last path without being marked (older versions, interrupted runs). */
    async markStrayNars(now: number): Promise<number> {
      return database.transaction(async (tx) => {
        const rows = await tx
          .update(t.nars)
          .set({ unreferencedAt: now })
          .where(
            and(
              isNull(t.nars.unreferencedAt),
              notExists(tx.select({ one: sql`1` }).from(t.paths).where(eq(t.paths.narId, t.nars.id))),
            ),
          )
          .returning({ id: t.nars.id });
        return rows.length;
      });
    },
    /** Unreferenced NARs; those unreferenced before `cutoff` first. */
    async unreferencedNars(limit: number): Promise<NarRow[]> {
      return db
        .select()
        .from(t.nars)
        .where(
          and(
            isNotNull(t.nars.unreferencedAt),
            notExists(db.select({ one: sql`1` }).from(t.paths).where(eq(t.paths.narId, t.nars.id))),
          ),
        )
        .orderBy(asc(t.nars.unreferencedAt))
        .limit(limit);
    },
    /**
     * Forgets a NAR that is still unreferenced and was so before cutoff; its object becomes a pending upload
     * in the same transaction (so a crash before the storage delete leaves it findable). The storage key, or
     * undefined when the NAR is in use again or already gone.
     */
    async dropUnreferencedNar(id: number, cutoff: number): Promise<string | undefined> {
      return database
        .transaction(async (tx) => {
          const rows = await tx
            .delete(t.nars)
            .where(
              and(
                eq(t.nars.id, id),
                lte(t.nars.unreferencedAt, cutoff),
                notExists(tx.select({ one: sql`1` }).from(t.paths).where(eq(t.paths.narId, t.nars.id))),
              ),
            )
            .returning({ storageKey: t.nars.storageKey });
          const key = rows[0]?.storageKey;
          if (key) await tx.insert(t.pendingUploads).values({ storageKey: key }).onConflictDoNothing();
          return key;
        })
        .finally(forgetRows);
    },
    /** Every storage key some row knows (NARs, logs, staged NARs, pending uploads). */
    async knownStorageKeys(): Promise<Set<string>> {
      const known = new Set<string>();
      for (const rows of [
        await db.select({ key: t.nars.storageKey }).from(t.nars),
        await db.select({ key: t.buildLogs.storageKey }).from(t.buildLogs),
        await db.select({ key: t.stagedNars.storageKey }).from(t.stagedNars),
        await db.select({ key: t.pendingUploads.storageKey }).from(t.pendingUploads),
      ])
        for (const row of rows) known.add(row.key);
      return known;
    },

    // ---- access (last access, downloads and hits), written in batches
    async recordAccess(batch: AccessBatch): Promise<void> {
      // Last-access times and counters only: no read this process remembers changes (see rememberRow).
      await database.transaction(
        async (tx) => {
          // Paths read by narinfo (named by hash) and by NAR (named by NAR id) get the same update.
          const read = [
            ...[...batch.narinfos].map(([cacheId, hashes]) => ({
              cacheId,
              keys: [...hashes],
              by: t.paths.hash,
            })),
            ...[...batch.nars].map(([cacheId, narIds]) => ({
              cacheId,
              keys: [...narIds],
              by: t.paths.narId,
            })),
          ];
          for (const { cacheId, keys, by } of read) {
            for (const part of chunks<string | number>(keys)) {
              await tx
                .update(t.paths)
                .set({ lastAccessedAt: batch.at })
                .where(and(eq(t.paths.cacheId, cacheId), inArray(by, part)));
            }
          }
          for (const c of batch.counters) {
            const s = t.cacheDailyStats;
            await tx
              .insert(s)
              .values(c)
              .onConflictDoUpdate({
                target: [s.cacheId, s.day],
                set: {
                  narinfoHits: sql`${s.narinfoHits} + ${c.narinfoHits}`,
                  narinfoMisses: sql`${s.narinfoMisses} + ${c.narinfoMisses}`,
                  narDownloads: sql`${s.narDownloads} + ${c.narDownloads}`,
                  narBytes: sql`${s.narBytes} + ${c.narBytes}`,
                },
              });
          }
        },
        { keepRevision: true },
      );
    },
    async dailyStats(cacheId: number, sinceDay: number): Promise<DailyStatsRow[]> {
      return db
        .select()
        .from(t.cacheDailyStats)
        .where(and(eq(t.cacheDailyStats.cacheId, cacheId), gte(t.cacheDailyStats.day, sinceDay)))
        .orderBy(asc(t.cacheDailyStats.day));
    },
    /** Sizes of a cache: its paths, the bytes they describe, and the distinct objects behind them. */
    async cacheSizes(cacheId: number) {
      const perPath = await db
        .select({
          paths: sql<number>`count(*)`,
          pinned: sql<number>`coalesce(sum(case when ${t.paths.pinned} then 1 else 0 end), 0)`,
          narBytes: sql<number>`coalesce(sum(${t.nars.narSize}), 0)`,
          fileBytes: sql<number>`coalesce(sum(${t.nars.fileSize}), 0)`,
        })
        .from(t.paths)
        .innerJoin(t.nars, eq(t.paths.narId, t.nars.id))
        .where(eq(t.paths.cacheId, cacheId));
      const distinct = db
        .selectDistinct({ narId: t.paths.narId })
        .from(t.paths)
        .where(eq(t.paths.cacheId, cacheId))
        .as("used");
      const stored = await db
        .select({
          nars: sql<number>`count(*)`,
          storedBytes: sql<number>`coalesce(sum(${t.nars.fileSize}), 0)`,
          shared: sql<number>`coalesce(sum(case when exists (select 1 from ${t.paths} p2 where p2.nar_id = ${t.nars.id} and p2.cache_id <> ${cacheId}) then 1 else 0 end), 0)`,
        })
        .from(distinct)
        .innerJoin(t.nars, eq(t.nars.id, distinct.narId));
      const logs = await db
        .select({ count: sql<number>`count(*)`, bytes: sql<number>`coalesce(sum(${t.buildLogs.size}), 0)` })
        .from(t.buildLogs)
        .where(eq(t.buildLogs.cacheId, cacheId));
      const a = perPath[0];
      const b = stored[0];
      return {
        paths: Number(a?.paths ?? 0),
        pinnedPaths: Number(a?.pinned ?? 0),
        narBytes: Number(a?.narBytes ?? 0),
        fileBytes: Number(a?.fileBytes ?? 0),
        nars: Number(b?.nars ?? 0),
        storedBytes: Number(b?.storedBytes ?? 0),
        sharedNars: Number(b?.shared ?? 0),
        logs: Number(logs[0]?.count ?? 0),
        logBytes: Number(logs[0]?.bytes ?? 0),
      };
    },

    // ---- leases (one garbage collector at a time across replicas)
    /** Takes or renews the lease when it is free, expired or already ours; whether we hold it now. */
    async acquireLease(name: string, holder: string, now: number, ttlMs: number): Promise<boolean> {
      return database.transaction(async (tx) => {
        await tx.insert(t.leases).values({ name, holder: "", expiresAt: 0 }).onConflictDoNothing();
        const rows = await tx
          .update(t.leases)
          .set({ holder, expiresAt: now + ttlMs })
          .where(and(eq(t.leases.name, name), or(lt(t.leases.expiresAt, now), eq(t.leases.holder, holder))))
          .returning({ name: t.leases.name });
        return rows.length > 0;
      });
    },
    async releaseLease(name: string, holder: string): Promise<void> {
      await database.transaction(async (tx) => {
        await tx
          .update(t.leases)
          .set({ expiresAt: 0 })
          .where(and(eq(t.leases.name, name), eq(t.leases.holder, holder)));
      });
    },
    async lease(name: string) {
      const rows = await db.select().from(t.leases).where(eq(t.leases.name, name)).limit(1);
      return rows[0];
    },

    // ---- garbage collection reports
    async addGcRun(run: Omit<GcRunRow, "id">): Promise<GcRunRow> {
      return database.transaction(async (tx) => {
        const rows = await tx.insert(t.gcRuns).values(run).returning();
        return rows[0]!;
      });
    },
    async listGcRuns(limit: number, cacheName?: string): Promise<GcRunRow[]> {
      return db
        .select()
        .from(t.gcRuns)
        .where(cacheName === undefined ? undefined : eq(t.gcRuns.cacheName, cacheName))
        .orderBy(desc(t.gcRuns.id))
        .limit(limit);
    },

    // ---- pending uploads (objects in storage no row owns yet)
    async addPendingUpload(storageKey: string): Promise<void> {
      await database.transaction(async (tx) => {
        await writes.insertPending(tx, { storageKey });
      });
    },
    /** addPendingUpload for many keys, in one transaction (a statement per CHUNK keys). */
    async addPendingUploads(storageKeys: readonly string[]): Promise<void> {
      await database.transaction(async (tx) => {
        for (const part of chunks(storageKeys))
          await tx.insert(t.pendingUploads).values(part.map((storageKey) => ({ storageKey })));
      });
    },
    /** Forgets an object that was deleted from storage (and any staged NAR it was). */
    async removePendingUpload(storageKey: string): Promise<void> {
      await database.transaction(async (tx) => {
        await tx.delete(t.stagedNars).where(eq(t.stagedNars.storageKey, storageKey));
        await tx.delete(t.pendingUploads).where(eq(t.pendingUploads.storageKey, storageKey));
      });
    },

    // ---- small objects kept here instead of in storage (storage/inline.ts): rows of the storage, so their
    // writes change nothing a read of paths remembers (keepRevision, Database.single)
    inlineObjects: {
      async put(key: string, bytes: Buffer): Promise<void> {
        await putInlineRow({ key, bytes, size: bytes.length, createdAt: Date.now() });
      },
      async get(key: string): Promise<{ bytes: Buffer; modified: Date } | undefined> {
        const [row] = await hot.inlineObject.execute({ key });
        return row ? { bytes: row.bytes, modified: new Date(row.createdAt) } : undefined;
      },
      async stat(key: string): Promise<{ size: number; modified: Date } | undefined> {
        const [row] = await hot.inlineObjectStat.execute({ key });
        return row ? { size: row.size, modified: new Date(row.createdAt) } : undefined;
      },
      async delete(key: string): Promise<void> {
        await database.single(async (q) => writes.deleteInline(q, { key }));
      },
      async present(keys: readonly string[]): Promise<Set<string>> {
        const found = new Set<string>();
        for (const part of chunks(keys)) {
          const rows = await db
            .select({ key: t.inlineObjects.key })
            .from(t.inlineObjects)
            .where(inArray(t.inlineObjects.key, part));
          for (const row of rows) found.add(row.key);
        }
        return found;
      },
      async page(
        prefix: string,
        after: string | undefined,
        limit: number,
      ): Promise<Array<{ key: string; size: number; modified: Date }>> {
        const key = t.inlineObjects.key;
        // substr counts characters (code points) in both dialects; a prefix test that no collation changes.
        const starts = sql`substr(${key}, 1, ${[...prefix].length}) = ${prefix}`;
        const rows = await db
          .select({ key, size: t.inlineObjects.size, createdAt: t.inlineObjects.createdAt })
          .from(t.inlineObjects)
          .where(and(prefix === "" ? undefined : starts, after === undefined ? undefined : gt(key, after)))
          .orderBy(asc(key))
          .limit(limit);
        return rows.map((row) => ({ key: row.key, size: row.size, modified: new Date(row.createdAt) }));
      },
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
      return (await hot.log.execute({ cacheId, drv }))[0];
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
      return (await hot.realisation.execute({ cacheId, outputId }))[0]?.content;
    },
  };
}

export type Repo = ReturnType<typeof createRepo>;
