// Point reads sent to the database in groups: while one group's query runs, the reads asked for meanwhile
// gather, and go together as the next query (`WHERE hash = ANY($hashes)`) when it returns.
//
// Why: on PostgreSQL every read is a round trip, and its cost is mostly per query, not per row: the
// driver's request and reply, two socket wake-ups on each side, the backend's bind and execute. Under
// measure 2 of issue 7 (64 connections, 10% of narinfos absent, so never remembered), one query per miss
// took over a third of the server's and PostgreSQL's CPU; read in groups (5–6 a query there), the same
// lane answered 20–40% more requests per second (BENCHMARKS.md, session 9). No read waits for a timer: a
// read asked for while nothing is in flight goes at once, so an idle server answers as fast as before.
//
// Consistency is that of a plain read: a read only ever joins a group whose query has not started yet, so
// it sees every commit made before it was asked for (a push through another replica included). Reads of
// the same key in one group share the row.
//
// One query in flight holds the next group back only briefly: a query out longer than `stallMs` (a few idle
// round trips) stops counting, and the next group goes out beside it on another pooled connection
// (one-group-at-a-time.ts), so grouping adds at most that much to any read.

import { oneGroupAtATime } from "./one-group-at-a-time.ts";

export interface GroupedReadsOptions<Row> {
  /** The rows of one scope (a cache) among `keys`, each under its key; absent keys are left out. */
  read(scope: number, keys: readonly string[]): PromiseLike<Map<string, Row>>;
  /** Keys per query at most; the rest wait for the next one. */
  maxKeys?: number;
  /** After this long, a query in flight no longer holds back the next group. */
  stallMs?: number;
}

export interface GroupedReads<Row> {
  /** The row under `key` in `scope`, or undefined when there is none. */
  get(scope: number, key: string): Promise<Row | undefined>;
}

interface Waiter<Row> {
  resolve(row: Row | undefined): void;
  reject(error: unknown): void;
}

const DEFAULT_MAX_KEYS = 500;
/** A few round trips of an idle database here (~0.3 ms each). */
const DEFAULT_STALL_MS = 2;

export function groupedReads<Row>(options: GroupedReadsOptions<Row>): GroupedReads<Row> {
  const maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
  const stallMs = options.stallMs ?? DEFAULT_STALL_MS;
  /** Reads not sent yet, by scope, then key, in the order their scopes were first asked for. */
  const waiting = new Map<number, Map<string, Waiter<Row>[]>>();

  const send = oneGroupAtATime(stallMs, () => {
    const first = waiting.entries().next();
    if (first.done) return undefined;
    const [scope, byKey] = first.value;
    const keys: string[] = [];
    const group = new Map<string, Waiter<Row>[]>();
    for (const [key, waiters] of byKey) {
      if (keys.length === maxKeys) break;
      keys.push(key);
      group.set(key, waiters);
      byKey.delete(key);
    }
    // A scope with reads left over goes behind the others, so no scope starves another.
    waiting.delete(scope);
    if (byKey.size > 0) waiting.set(scope, byKey);
    return async () => {
      let rows: Map<string, Row>;
      try {
        rows = await options.read(scope, keys);
      } catch (error) {
        for (const waiters of group.values()) for (const w of waiters) w.reject(error);
        return;
      }
      for (const [key, waiters] of group) for (const w of waiters) w.resolve(rows.get(key));
    };
  });

  return {
    get(scope, key) {
      return new Promise<Row | undefined>((resolve, reject) => {
        let byKey = waiting.get(scope);
        if (!byKey) {
          byKey = new Map();
          waiting.set(scope, byKey);
        }
        const waiters = byKey.get(key);
        if (waiters) waiters.push({ resolve, reject });
        else byKey.set(key, [{ resolve, reject }]);
        send();
      });
    },
  };
}
