// Independent single-row writes sent to the database in groups: while one group's statement runs, the writes
// asked for meanwhile gather, and go together as the next statement (one multi-row INSERT) when it returns.
// Each write's promise settles when the statement that carried it has committed (or failed), as a write of
// its own would.
//
// Why: on PostgreSQL a statement committed by itself is a round trip and a commit, and its cost is mostly
// per statement, not per row. A push of the benchmark's closure into PostgreSQL + S3 stored 275 small NARs
// as rows (storage/inline.ts), one statement each, a third of the statements of the push; a batch of small
// paths receives 8 NARs at once, so most of those rows were asked for while another was being written.
// As with grouped reads (grouped-reads.ts), nothing waits for a timer: a write asked for while nothing is in
// flight goes at once.
//
// Writes of the same key in one group: the one asked for last is written, and both settle with it (a group
// holds writes that overlapped in time, whose order no caller could rely on). One statement at a time, as
// one-group-at-a-time.ts sends them.
import { oneGroupAtATime } from "./one-group-at-a-time.ts";

export interface GroupedWritesOptions<Item> {
  /** Writes these items (distinct keys) in one statement; resolves once it has committed. */
  write(items: readonly Item[]): PromiseLike<unknown>;
  key(item: Item): string;
  /** Items per statement at most; the rest wait for the next one. */
  maxItems?: number;
  /** An item's bytes, and the bytes a statement carries at most (its first item goes whatever its size). */
  bytes?(item: Item): number;
  maxBytes?: number;
  /** After this long, a statement in flight no longer holds back the next group. */
  stallMs?: number;
}

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

const DEFAULT_MAX_ITEMS = 100;
/** A statement's parameters are one message to the database, built in memory. */
const DEFAULT_MAX_BYTES = 8 * 1024 * 1024;
/** Longer than a commit takes here when the machine is busy (a few ms), short against a hung connection. */
const DEFAULT_STALL_MS = 50;

export function groupedWrites<Item>(options: GroupedWritesOptions<Item>): (item: Item) => Promise<void> {
  const maxItems = options.maxItems ?? DEFAULT_MAX_ITEMS;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  const stallMs = options.stallMs ?? DEFAULT_STALL_MS;
  /** Writes not sent yet, by key, in the order their keys were first asked for. */
  const waiting = new Map<string, { item: Item; waiters: Waiter[] }>();

  const send = oneGroupAtATime(stallMs, () => {
    if (waiting.size === 0) return undefined;
    const items: Item[] = [];
    const waiters: Waiter[] = [];
    let bytes = 0;
    for (const [key, entry] of waiting) {
      if (items.length === maxItems) break;
      bytes += options.bytes?.(entry.item) ?? 0;
      if (items.length > 0 && bytes > maxBytes) break;
      items.push(entry.item);
      waiters.push(...entry.waiters);
      waiting.delete(key);
    }
    return async () => {
      try {
        await options.write(items);
      } catch (error) {
        for (const w of waiters) w.reject(error);
        return;
      }
      for (const w of waiters) w.resolve();
    };
  });

  return (item) =>
    new Promise<void>((resolve, reject) => {
      const key = options.key(item);
      const entry = waiting.get(key);
      if (entry) {
        entry.item = item;
        entry.waiters.push({ resolve, reject });
      } else waiting.set(key, { item, waiters: [{ resolve, reject }] });
      send();
    });
}
