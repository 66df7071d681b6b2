// Opens the metadata database, SQLite (embedded default) or PostgreSQL, applies the migrations in
// schema/migrations/<dialect>, and hands out one drizzle handle typed against the SQLite schema.
//
// Why one type for both: schema/sqlite.ts and schema/pg.ts are mirrored column for column with the same JS
// shapes (numbers, booleans, strings), and the query builder calls the repository makes exist in both
// dialects. Writing the repository once and running its one test suite on both databases keeps them from
// drifting; the cast below is the single place where that promise is made.
//
// Transactions: better-sqlite3 is synchronous and its drizzle transactions cannot await. We keep two SQLite
// connections in WAL mode: a reader for plain queries and a writer whose transactions are serialised by an
// in-process mutex and opened with BEGIN IMMEDIATE. The reader never sees a transaction before COMMIT.
// On PostgreSQL a transaction runs on a connection taken from the pool. Either way the handle a transaction
// gets is the same object every time it runs on the same connection (the one SQLite writer; one handle per
// pooled PostgreSQL connection), so the repository can prepare the statements of its write transactions
// once per connection instead of building and preparing their SQL on every call (repo.ts).
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import BetterSqlite3 from "better-sqlite3";
import { sql } from "drizzle-orm";
import { type BetterSQLite3Database, drizzle as drizzleSqlite } from "drizzle-orm/better-sqlite3";
import { migrate as migrateSqlite } from "drizzle-orm/better-sqlite3/migrator";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { migrate as migratePg } from "drizzle-orm/node-postgres/migrator";
import pg from "pg";
import * as pgSchema from "../../schema/pg.ts";
import * as sqliteSchema from "../../schema/sqlite.ts";
import { othersFinished, parseSnapshot, type Snapshot } from "./pg-snapshot.ts";

export type Tables = typeof sqliteSchema;
export type Db = BetterSQLite3Database<Tables>;

export interface Database {
  readonly dialect: "sqlite" | "postgres";
  /** For reads. */
  readonly db: Db;
  readonly t: Tables;
  /**
   * Runs fn in one transaction: all of it commits, or none of it. `keepRevision`: it changes nothing that
   * anyone remembers from reads (last-access times, counters), so revision() stays.
   */
  transaction<T>(fn: (tx: Db) => Promise<T>, options?: { keepRevision?: boolean }): Promise<T>;
  /**
   * Runs fn, ONE write statement, committed on its own: on PostgreSQL without the BEGIN and COMMIT round
   * trips of a transaction (a small object's row costs three round trips as a transaction, one this way); on
   * SQLite on the writer, between this process's transactions. Like `keepRevision`, for writes that change
   * nothing anyone remembers from reads.
   */
  single<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  /**
   * A number that changes whenever a commit may have changed what reads return; undefined while the
   * database cannot tell. On SQLite: after every transaction this process commits (but those that keep it),
   * and once the writer connection has seen a commit it did not make (another process: `PRAGMA data_version`
   * changes exactly then; asked at most once per DATA_VERSION_EVERY_MS). On PostgreSQL: after every
   * transaction this process commits (but those that keep it), when another replica's commit notification
   * arrives, and within REVISION_MAX_AGE_MS of any other writer's commit (a change made by hand notifies
   * nobody); undefined while this process is not listening (see listenForCommits).
   */
  revision(): number | undefined;
  /** Throws when the database cannot answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

const migrationsRoot = join(dirname(fileURLToPath(import.meta.url)), "../../schema/migrations");

export interface DatabaseOptions {
  /** PostgreSQL: how often it looks for commits it was not told about (tests shorten it). */
  revisionMaxAgeMs?: number;
}

export async function openDatabase(url: string, options: DatabaseOptions = {}): Promise<Database> {
  if (url.startsWith("postgres://") || url.startsWith("postgresql://")) return openPostgres(url, options);
  if (url.startsWith("sqlite:")) return openSqlite(url.slice("sqlite:".length));
  throw new Error(`unsupported database URL (want sqlite:/path/file.db or postgres://…): ${redact(url)}`);
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, "//$1:***@");
}

class Mutex {
  #tail: Promise<void> = Promise.resolve();
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.#tail;
    let release!: () => void;
    this.#tail = new Promise((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

function openSqliteConnection(file: string): BetterSqlite3.Database {
  const connection = new BetterSqlite3(file);
  connection.pragma("journal_mode = WAL");
  connection.pragma("synchronous = NORMAL");
  connection.pragma("busy_timeout = 10000");
  connection.pragma("foreign_keys = ON");
  return connection;
}

/** SQLite: another process's commit is seen within this long (see revision in openSqlite). */
export const DATA_VERSION_EVERY_MS = 1;

function openSqlite(file: string): Database {
  if (file === ":memory:")
    throw new Error("sqlite::memory: cannot be shared by a reader and a writer; use a file");
  mkdirSync(dirname(file), { recursive: true });
  const writerConnection = openSqliteConnection(file);
  const writer = drizzleSqlite(writerConnection, { schema: sqliteSchema });
  migrateSqlite(writer, { migrationsFolder: join(migrationsRoot, "sqlite") });
  const readerConnection = openSqliteConnection(file);
  const reader = drizzleSqlite(readerConnection, { schema: sqliteSchema });
  const mutex = new Mutex();
  // Asked of the writer, which makes every commit of this process: its data_version then changes only for
  // other processes' commits (the reader's would change for ours too).
  const dataVersion = writerConnection.prepare("PRAGMA data_version").pluck();
  let seenDataVersion = dataVersion.get();
  let revision = 0;
  // data_version is asked at most once per DATA_VERSION_EVERY_MS: each ask locks the WAL index (two fcntl
  // calls, ~20 µs of a narinfo or NAR request on this VM: session 17's profile), and a server busy with
  // requests asks for every one. Only other processes' commits wait for it; this process's own commits turn
  // the revision at once (transaction).
  let askedAt = Number.NEGATIVE_INFINITY;
  return {
    dialect: "sqlite",
    db: reader,
    t: sqliteSchema,
    revision: () => {
      const now = performance.now();
      if (now - askedAt < DATA_VERSION_EVERY_MS) return revision;
      askedAt = now;
      const version = dataVersion.get();
      if (version !== seenDataVersion) {
        seenDataVersion = version;
        revision++;
      }
      return revision;
    },
    transaction: (fn, options) =>
      mutex.run(async () => {
        writerConnection.exec("BEGIN IMMEDIATE");
        try {
          const result = await fn(writer);
          writerConnection.exec("COMMIT");
          if (!options?.keepRevision) revision++;
          return result;
        } catch (error) {
          if (writerConnection.inTransaction) writerConnection.exec("ROLLBACK");
          throw error;
        }
      }),
    single: (fn) => mutex.run(() => fn(writer)),
    ping: async () => {
      readerConnection.prepare("SELECT 1").get();
    },
    close: async () => {
      await mutex.run(async () => {
        readerConnection.close();
        writerConnection.close();
      });
    },
  };
}

/** Every transaction that may change what reads return notifies this channel when it commits. */
const COMMIT_CHANNEL = "nixstash_commit";
/**
 * PostgreSQL: how often this process looks for writers it was not told about (a change made by hand with
 * psql, a replica's commit not heard): such a change is seen within it.
 */
const REVISION_MAX_AGE_MS = 10_000;
/** A commit listener that lost its connection connects again after this long. */
const LISTEN_RETRY_MS = 1_000;

/**
 * PostgreSQL's revision: one connection outside the pool LISTENs on COMMIT_CHANNEL, and every notification
 * of another replica's commit turns the revision, as do this process's own commits (`turn`, at once; its
 * own notifications, which carry its id, are not counted again). The listener connecting, or losing its
 * connection, turns it too: nothing heard while not listening can be trusted, and revision() is undefined
 * meanwhile (the repository then keeps rows for their second only and remembers no absent ones, as it does
 * without a revision). A notification takes a round trip to arrive: a replica may answer from what it read
 * for that long after another's commit.
 *
 * What nobody announces (psql; every commit, behind a pooler in transaction mode, where LISTEN hears
 * nothing) is looked for every maxAgeMs: the server's snapshot (`txid_current_snapshot()`, one query) says
 * which writing transactions finished since the previous look, and unless all of them were this process's
 * own commits that keep the revision (their ids come back with their COMMIT: `own`), the revision turns
 * (pg-snapshot.ts); a look that fails turns it too. It used to turn on every look, and the repository read
 * every row again 10 s after it last had: a substitution more than 10 s after the previous one cost the
 * server 0.25-0.48 CPU s and PostgreSQL 0.10-0.17, against 0.20-0.27 and 0.00-0.05 within 10 s
 * (BENCHMARKS.md, session 26).
 */
function listenForCommits(url: string, maxAgeMs: number, snapshot: () => Promise<string>) {
  /** The payload of this process's notifications: it turned the revision at its commits already. */
  const self = randomUUID();
  let revision = 0;
  let listening = false;
  let closed = false;
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;
  /** Ids of this process's commits that keep the revision, not yet seen finished by a look. */
  const own = new Set<bigint>();
  let last: Snapshot | undefined;
  let looking = false;
  const look = async () => {
    if (looking) return;
    looking = true;
    try {
      const now = parseSnapshot(await snapshot());
      if (!last || othersFinished(last, now, own)) revision++;
      last = now;
    } catch {
      last = undefined;
      own.clear();
      revision++;
    } finally {
      looking = false;
    }
  };
  const tick = setInterval(() => void look(), maxAgeMs);
  tick.unref();
  const lost = (from: pg.Client) => {
    if (client !== from) return;
    client = undefined;
    listening = false;
    revision++;
    from.removeAllListeners();
    from.on("error", () => {});
    from.end().catch(() => {});
    if (!closed) {
      retry = setTimeout(() => void connect(), LISTEN_RETRY_MS);
      retry.unref();
    }
  };
  const connect = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: url, keepAlive: true, connectionTimeoutMillis: 10_000 });
    client = c;
    c.on("notification", (message) => {
      if (message.payload !== self) revision++;
    });
    c.on("error", () => lost(c));
    c.on("end", () => lost(c));
    try {
      await c.connect();
      await c.query(`LISTEN ${COMMIT_CHANNEL}`);
      if (client !== c) return;
      revision++;
      listening = true;
    } catch {
      lost(c);
    }
  };
  return {
    connect,
    /** The statement that notifies the other replicas, sent with COMMIT. */
    notify: `NOTIFY ${COMMIT_CHANNEL}, '${self}'`,
    revision: (): number | undefined => (listening ? revision : undefined),
    /** This process committed: what it reads next must be read again. */
    turn: () => {
      revision++;
    },
    /** This process committed transaction `id` and kept the revision (it changed nothing remembered). */
    kept: (id: string) => {
      own.add(BigInt(id));
    },
    close: async () => {
      closed = true;
      clearInterval(tick);
      clearTimeout(retry);
      const c = client;
      client = undefined;
      listening = false;
      c?.removeAllListeners();
      c?.on("error", () => {});
      await c?.end().catch(() => {});
    },
  };
}

async function openPostgres(url: string, options: DatabaseOptions): Promise<Database> {
  const pool = new pg.Pool({ connectionString: url, max: 16 });
  pool.on("error", () => {
    // An idle client lost its connection; the pool replaces it. Queries report their own errors.
  });
  const db = drizzlePg(pool, { schema: pgSchema });
  // Replicas may start together: one migrates at a time, under a session advisory lock.
  const client = await pool.connect();
  try {
    await client.query("SELECT pg_advisory_lock(727274)");
    await migratePg(drizzlePg(client), { migrationsFolder: join(migrationsRoot, "pg") });
  } finally {
    await client.query("SELECT pg_advisory_unlock(727274)").catch(() => {});
    client.release();
  }
  const commits = listenForCommits(
    url,
    options.revisionMaxAgeMs ?? REVISION_MAX_AGE_MS,
    async () => (await pool.query<{ s: string }>("SELECT txid_current_snapshot()::text AS s")).rows[0]!.s,
  );
  await commits.connect();
  const asDb = db as unknown as Db;
  const handles = new WeakMap<pg.PoolClient, Db>();
  return {
    dialect: "postgres",
    db: asDb,
    t: pgSchema as unknown as Tables,
    revision: commits.revision,
    transaction: async (fn, options) => {
      const client = await pool.connect();
      let handle = handles.get(client);
      if (!handle) {
        handle = drizzlePg(client, { schema: pgSchema }) as unknown as Db;
        handles.set(client, handle);
      }
      // A connection that failed BEGIN or ROLLBACK is in an unknown state: the pool drops it, not reuses it.
      let broken: Error | undefined;
      try {
        await client.query("BEGIN");
      } catch (error) {
        client.release(error as Error);
        throw error;
      }
      try {
        const result = await fn(handle);
        // One round trip: the notification goes out with the commit, or not at all; a commit that keeps
        // the revision brings back its transaction id instead, for the next look at the server's snapshot.
        if (options?.keepRevision) {
          const [id] = (await client.query(
            "SELECT txid_current()::text AS id; COMMIT",
          )) as unknown as pg.QueryResult<{ id: string }>[];
          commits.kept(id!.rows[0]!.id);
        } else {
          await client.query(`${commits.notify}; COMMIT`);
          commits.turn();
        }
        return result;
      } catch (error) {
        await client.query("ROLLBACK").catch((rollbackError: Error) => {
          broken = rollbackError;
        });
        throw error;
      } finally {
        client.release(broken);
      }
    },
    // On the pool: node-postgres prepares a named statement on each connection the first time it runs there.
    single: (fn) => fn(asDb),
    ping: async () => {
      await db.execute(sql`SELECT 1`);
    },
    close: async () => {
      await commits.close();
      await pool.end();
    },
  };
}
