// The daemon's durable queue: one SQLite file in the state directory (better-sqlite3, WAL).
//
// Why SQLite and not more files: the queue has state transitions (waiting → uploading → done | failed, and
// back to waiting with a retry time) that must be atomic across a crash, it is read by another process while
// the daemon writes (`nixstash queue`), and it is asked "which are due, oldest first". A transaction per
// transition gives that; a directory of files would need a rename dance per state and a scan per question.
// The hook's spool stays files (hook/spool.ts) so the hook needs no SQLite client.
//
// One row per store path. `root` rows were asked for (a build output from the hook, a path given to
// `enqueue`); the daemon expands their closures on each attempt. Closure members get a row only while they
// are uploading, once uploaded, or when they failed, so the table shows what happened without holding every
// dependency of every build. The server is the source of truth about what the cache holds: a path is marked
// done only after the server answered success (or said it has it, or it is signed by an upstream key the
// server accepts), so resuming after a crash at worst asks again.
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import type BetterSqlite3 from "better-sqlite3";

/**
 * better-sqlite3, loaded by the first queue opened: of the CLI's commands only the daemon and `queue` open
 * one, and `nixstash push` would have waited ~20 ms for it at every start.
 */
const load = createRequire(import.meta.url);

export type PathState = "waiting" | "uploading" | "done" | "failed";

export interface QueueEntry {
  path: string;
  root: boolean;
  state: PathState;
  /** done: stored | deduplicated | already-present | upstream; failed: the error code */
  outcome: string | null;
  /** failed: why (the server's message); waiting: why the last attempt did not finish */
  reason: string | null;
  attempts: number;
  nextTryAt: number;
  narSize: number | null;
  enqueuedAt: number;
  updatedAt: number;
}

export interface QueueStatus {
  counts: Record<PathState, number>;
  waiting: QueueEntry[];
  uploading: QueueEntry[];
  failed: QueueEntry[];
  daemon: { pid: number; since: number } | undefined;
}

interface Row {
  path: string;
  root: number;
  state: PathState;
  outcome: string | null;
  reason: string | null;
  attempts: number;
  next_try_at: number;
  nar_size: number | null;
  enqueued_at: number;
  updated_at: number;
}

const SCHEMA_VERSION = 1;

const toEntry = (row: Row): QueueEntry => ({
  path: row.path,
  root: row.root === 1,
  state: row.state,
  outcome: row.outcome,
  reason: row.reason,
  attempts: row.attempts,
  nextTryAt: row.next_try_at,
  narSize: row.nar_size,
  enqueuedAt: row.enqueued_at,
  updatedAt: row.updated_at,
});

export class QueueLockedError extends Error {}

export interface QueueOptions {
  clock?: () => number;
  readonly?: boolean;
}

export function openQueue(file: string, options: QueueOptions = {}) {
  const clock = options.clock ?? Date.now;
  if (!options.readonly) mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const Database = load("better-sqlite3") as typeof BetterSqlite3;
  const db = new Database(file, {
    readonly: options.readonly ?? false,
    fileMustExist: options.readonly ?? false,
  });
  db.pragma("busy_timeout = 5000");
  if (!options.readonly) {
    db.pragma("journal_mode = WAL");
    // FULL: a transition the daemon reported (e.g. "done") survives a power cut, not only a crash.
    db.pragma("synchronous = FULL");
    migrate(db);
  }

  const stmt = {
    enqueue: db.prepare(`
      INSERT INTO paths (path, root, state, attempts, next_try_at, enqueued_at, updated_at)
      VALUES (@path, 1, 'waiting', 0, 0, @now, @now)
      ON CONFLICT (path) DO UPDATE SET
        root = 1,
        state = CASE WHEN state IN ('done', 'failed') THEN 'waiting' ELSE state END,
        attempts = CASE WHEN state IN ('done', 'failed') THEN 0 ELSE attempts END,
        next_try_at = CASE WHEN state IN ('done', 'failed') THEN 0 ELSE next_try_at END,
        outcome = CASE WHEN state IN ('done', 'failed') THEN NULL ELSE outcome END,
        reason = CASE WHEN state IN ('done', 'failed') THEN NULL ELSE reason END,
        enqueued_at = CASE WHEN state IN ('done', 'failed') THEN @now ELSE enqueued_at END,
        updated_at = @now
      WHERE state IN ('done', 'failed') OR root = 0`),
    due: db.prepare(`
      SELECT path FROM paths WHERE root = 1 AND state = 'waiting' AND next_try_at <= @now
      ORDER BY next_try_at, enqueued_at, path`),
    nextDue: db.prepare(
      `SELECT path, next_try_at FROM paths WHERE root = 1 AND state = 'waiting' ORDER BY next_try_at`,
    ),
    get: db.prepare(`SELECT * FROM paths WHERE path = ?`),
    uploading: db.prepare(`
      INSERT INTO paths (path, root, state, nar_size, enqueued_at, updated_at)
      VALUES (@path, 0, 'uploading', @narSize, @now, @now)
      ON CONFLICT (path) DO UPDATE SET state = 'uploading', nar_size = @narSize, updated_at = @now`),
    done: db.prepare(`
      INSERT INTO paths (path, root, state, outcome, nar_size, enqueued_at, updated_at)
      VALUES (@path, 0, 'done', @outcome, @narSize, @now, @now)
      ON CONFLICT (path) DO UPDATE SET state = 'done', outcome = @outcome, reason = NULL,
        nar_size = COALESCE(@narSize, nar_size), updated_at = @now`),
    failed: db.prepare(`
      INSERT INTO paths (path, root, state, outcome, reason, nar_size, enqueued_at, updated_at)
      VALUES (@path, 0, 'failed', @code, @reason, @narSize, @now, @now)
      ON CONFLICT (path) DO UPDATE SET state = 'failed', outcome = @code, reason = @reason,
        attempts = attempts + 1, nar_size = COALESCE(@narSize, nar_size), updated_at = @now`),
    release: db.prepare(`
      UPDATE paths SET state = 'waiting', reason = @reason, updated_at = @now
      WHERE path = @path AND state = 'uploading' AND root = 1`),
    releaseMember: db.prepare(`DELETE FROM paths WHERE path = ? AND state = 'uploading' AND root = 0`),
    reschedule: db.prepare(`
      UPDATE paths SET state = 'waiting', attempts = attempts + 1, next_try_at = @at, reason = @reason,
        updated_at = @now
      WHERE path = @path AND state IN ('waiting', 'uploading')`),
    recoverRoots: db.prepare(
      `UPDATE paths SET state = 'waiting', updated_at = @now WHERE state = 'uploading' AND root = 1`,
    ),
    recoverMembers: db.prepare(`DELETE FROM paths WHERE state = 'uploading' AND root = 0`),
    retryFailed: db.prepare(`
      UPDATE paths SET state = 'waiting', root = 1, attempts = 0, next_try_at = 0, updated_at = @now
      WHERE state = 'failed'`),
    forgetFailed: db.prepare(`DELETE FROM paths WHERE state = 'failed'`),
    prune: db.prepare(`DELETE FROM paths WHERE state = 'done' AND updated_at < ?`),
    counts: db.prepare(`SELECT state, COUNT(*) AS n FROM paths GROUP BY state`),
    byState: db.prepare(
      `SELECT * FROM paths WHERE state = ?
       ORDER BY next_try_at, enqueued_at, path LIMIT ?`,
    ),
    all: db.prepare(`SELECT * FROM paths ORDER BY enqueued_at, path`),
    getMeta: db.prepare(`SELECT value FROM meta WHERE key = ?`),
    setMeta: db.prepare(
      `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
    ),
    deleteMeta: db.prepare(`DELETE FROM meta WHERE key = ?`),
  };

  const enqueueMany = db.transaction((paths: readonly string[], now: number) => {
    let changed = 0;
    for (const path of paths) changed += stmt.enqueue.run({ path, now }).changes;
    return changed;
  });

  return {
    /**
     * Asks for paths (and their closures) to be pushed. A path already waiting or uploading stays as it
     * is; one that is done or failed is asked for again (a rebuild, or a retry by hand). Returns how many
     * rows changed.
     */
    enqueue(paths: readonly string[]): number {
      return enqueueMany(paths, clock());
    },

    /** Runs f (e.g. enqueue + delete the spool file after commit) in one transaction. */
    transaction<T>(f: () => T): T {
      return db.transaction(f)();
    },

    /** Roots due for an attempt, oldest first, except those in `busy`. */
    due(limit: number, busy: ReadonlySet<string> = new Set()): string[] {
      const out: string[] = [];
      for (const row of stmt.due.iterate({ now: clock() }) as IterableIterator<{ path: string }>) {
        if (busy.has(row.path)) continue;
        out.push(row.path);
        if (out.length >= limit) break;
      }
      return out;
    },

    /** When the earliest waiting root not in `busy` becomes due (ms since the epoch), if any. */
    nextDueAt(busy: ReadonlySet<string> = new Set()): number | undefined {
      for (const row of stmt.nextDue.iterate() as IterableIterator<{ path: string; next_try_at: number }>)
        if (!busy.has(row.path)) return row.next_try_at;
      return undefined;
    },

    get(path: string): QueueEntry | undefined {
      const row = stmt.get.get(path) as Row | undefined;
      return row ? toEntry(row) : undefined;
    },

    markUploading(path: string, narSize: number): void {
      stmt.uploading.run({ path, narSize, now: clock() });
    },

    markDone(path: string, outcome: string, narSize?: number): void {
      stmt.done.run({ path, outcome, narSize: narSize ?? null, now: clock() });
    },

    markFailed(path: string, code: string, reason: string, narSize?: number): void {
      stmt.failed.run({ path, code, reason, narSize: narSize ?? null, now: clock() });
    },

    /** An upload that did not finish for a reason worth retrying: the root waits, a member is forgotten. */
    releaseUploading(path: string, reason: string): void {
      stmt.release.run({ path, reason, now: clock() });
      stmt.releaseMember.run(path);
    },

    /** A root whose attempt did not finish: try again at `at`. */
    reschedule(path: string, at: number, reason: string): void {
      stmt.reschedule.run({ path, at, reason, now: clock() });
    },

    /** After a crash: what was uploading is waiting again (roots) or forgotten (members). */
    recover(): number {
      const now = clock();
      return db.transaction(
        () => stmt.recoverRoots.run({ now }).changes + stmt.recoverMembers.run().changes,
      )();
    },

    retryFailed(): number {
      return stmt.retryFailed.run({ now: clock() }).changes;
    },

    forgetFailed(): number {
      return stmt.forgetFailed.run().changes;
    },

    /** Forgets done entries last touched before `before`. */
    prune(before: number): number {
      return stmt.prune.run(before).changes;
    },

    status(limit = 50): QueueStatus {
      const counts: Record<PathState, number> = { waiting: 0, uploading: 0, done: 0, failed: 0 };
      for (const row of stmt.counts.all() as { state: PathState; n: number }[]) counts[row.state] = row.n;
      const list = (state: PathState) => (stmt.byState.all(state, limit) as Row[]).map(toEntry);
      const daemon = stmt.getMeta.get("daemon") as { value: string } | undefined;
      return {
        counts,
        waiting: list("waiting"),
        uploading: list("uploading"),
        failed: list("failed"),
        daemon: daemon ? (JSON.parse(daemon.value) as { pid: number; since: number }) : undefined,
      };
    },

    entries(): QueueEntry[] {
      return (stmt.all.all() as Row[]).map(toEntry);
    },

    /**
     * Claims the queue for one daemon. A claim by a process that no longer runs (killed, crashed) is taken
     * over; a live one is refused.
     */
    lock(pid: number, isAlive: (pid: number) => boolean): void {
      db.transaction(() => {
        const current = stmt.getMeta.get("daemon") as { value: string } | undefined;
        if (current) {
          const owner = JSON.parse(current.value) as { pid: number };
          if (owner.pid !== pid && isAlive(owner.pid))
            throw new QueueLockedError(`another nixstash daemon (pid ${owner.pid}) is using ${file}`);
        }
        stmt.setMeta.run("daemon", JSON.stringify({ pid, since: clock() }));
      }).immediate();
    },

    unlock(pid: number): void {
      db.transaction(() => {
        const current = stmt.getMeta.get("daemon") as { value: string } | undefined;
        if (current && (JSON.parse(current.value) as { pid: number }).pid === pid)
          stmt.deleteMeta.run("daemon");
      })();
    },

    close(): void {
      db.close();
    },
  };
}

export type Queue = ReturnType<typeof openQueue>;

function migrate(db: BetterSqlite3.Database): void {
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION)
    throw new Error(`queue database ${db.name} is from a newer nixstash (schema ${version})`);
  if (version === SCHEMA_VERSION) return;
  db.exec(`
    CREATE TABLE IF NOT EXISTS paths (
      path TEXT PRIMARY KEY,
      root INTEGER NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('waiting', 'uploading', 'done', 'failed')),
      outcome TEXT,
      reason TEXT,
      attempts INTEGER NOT NULL DEFAULT 0,
      next_try_at INTEGER NOT NULL DEFAULT 0,
      nar_size INTEGER,
      enqueued_at INTEGER NOT NULL,
      updated_at INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS paths_by_state ON paths (state, next_try_at);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    PRAGMA user_version = ${SCHEMA_VERSION};
  `);
}
