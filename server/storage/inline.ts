// Small objects kept in the database, big ones in the storage underneath: a Storage in front of another
// (the S3 bucket) for which every object costs a request. Most NARs of a closure are a few KiB compressed
// (278 of the 306 of the benchmark's closure are 64 KiB or less), and each one put to a bucket costs a PUT
// (and later a GET, or a redirect and the client's GET): on Ceph RGW here ~2.8 ms of its CPU per object
// whatever its size, on a cloud bucket tens of milliseconds of latency and a per-request fee. Kept as a
// database row, the same object costs one INSERT, and it is read back without a second round trip.
//
// A put reads the body up to `maxBytes` + 1 bytes: a body that ends by then becomes a row (`rows.put`),
// anything longer goes on to the storage underneath, the bytes read so far first. Reads look at the rows
// first, then underneath. The contract of storage.ts holds over both places:
// - overwrites: a big object put over a small one deletes the row once the big one is stored; a small one
//   put over a big one is found first by every read, and list() leaves out what underneath still holds at
//   a key that has a row; delete() deletes in both places (an object nixstash deletes is a NAR or a log
//   under a key it never wrote twice, so what underneath is asked to delete is usually absent: one request,
//   as before);
// - a failed, aborted or mis-sized small put writes no row; a big one is the storage underneath's to undo.
// Small objects written or read are also kept in memory (peek), as the S3 driver keeps its own.
import { Readable } from "node:stream";
import { KeyChanges } from "./key-changes.ts";
import { bufferedRange, ownBytes, SmallObjects } from "./small-objects.ts";
import {
  abortedError,
  assertKey,
  assertPrefix,
  assertRange,
  type ByteRange,
  chunksOf,
  type PutOptions,
  type Storage,
  StorageError,
  type StoredObject,
  startPut,
} from "./storage.ts";

/** Where the small objects live: a table of the database (repo.ts, inlineObjects). */
export interface InlineRows {
  /** Stores bytes at key, replacing any row there. */
  put(key: string, bytes: Buffer): Promise<void>;
  get(key: string): Promise<{ bytes: Buffer; modified: Date } | undefined>;
  stat(key: string): Promise<{ size: number; modified: Date } | undefined>;
  delete(key: string): Promise<void>;
  /** Which of keys have a row. */
  present(keys: readonly string[]): Promise<Set<string>>;
  /** Up to `limit` rows whose key starts with prefix, in key order, after the key `after` if given. */
  page(prefix: string, after: string | undefined, limit: number): Promise<StoredObject[]>;
}

export interface InlineOptions {
  rows: InlineRows;
  /** Objects up to this many bytes become rows; at most SMALL_OBJECT_MAX. */
  maxBytes: number;
  /** Bytes of small objects kept in memory (SmallObjects' limit); 0 = none. */
  recentBytes: number;
}

/** The largest maxBytes: a row is read whole into memory, and a database is no bucket. */
export const INLINE_MAX = 1024 * 1024;
const LIST_PAGE = 1000;
/** Keys known to have no row, kept at most (see `underneath`). */
const UNDERNEATH_KEPT = 10_000;

export function withInlineObjects(under: Storage, options: InlineOptions): Storage {
  const { rows, maxBytes } = options;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1 || maxBytes > INLINE_MAX) {
    throw new StorageError(
      "configure",
      undefined,
      `inline maxBytes ${maxBytes} is not within 1..${INLINE_MAX}`,
    );
  }
  const held = new SmallObjects(options.recentBytes);
  const changes = new KeyChanges(1024);
  /**
   * Keys this process found to have no row, most recent last: a large NAR's downloads after the first go
   * straight to the storage underneath (its redirect, its disk copy) without asking the database first.
   * Trusted as `held` is, because nixstash never rewrites a key; a put or delete here forgets the key.
   */
  const underneath = new Map<string, true>();
  const knowUnderneath = (key: string, seen: number) => {
    if (changes.changedSince(key, seen)) return;
    underneath.delete(key);
    underneath.set(key, true);
    if (underneath.size > UNDERNEATH_KEPT) underneath.delete(underneath.keys().next().value!);
  };
  const change = (key: string) => {
    held.forget(key);
    underneath.delete(key);
    changes.change(key);
  };
  /** A question to the rows, its failure a StorageError of `operation` that names the database. */
  const ask = async <T>(operation: string, key: string, question: () => Promise<T>): Promise<T> => {
    try {
      return await question();
    } catch (err) {
      throw err instanceof StorageError
        ? err
        : new StorageError(operation, key, `database: ${(err as Error)?.message ?? String(err)}`, {
            cause: err,
          });
    }
  };

  async function put(
    key: string,
    body: NodeJS.ReadableStream | Readable,
    opts: PutOptions = {},
  ): Promise<{ size: number }> {
    const input = startPut(key, body, opts);
    const { size: declared, signal } = opts;
    if (declared !== undefined && declared > maxBytes) return putUnder(key, input, opts);
    const onAbort = () => input.destroy(abortedError("put", key, signal!));
    signal?.addEventListener("abort", onAbort, { once: true });
    change(key);
    const head: Buffer[] = [];
    let total = 0;
    const chunks = chunksOf(input);
    let handedOn = false;
    try {
      for (;;) {
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (err) {
          if (signal?.aborted) throw abortedError("put", key, signal);
          throw err instanceof StorageError
            ? err
            : new StorageError("put", key, `body failed: ${(err as Error)?.message ?? String(err)}`, {
                cause: err,
              });
        }
        if (next.done) break;
        head.push(next.value);
        total += next.value.length;
        if (declared !== undefined && total > declared) {
          throw new StorageError("put", key, `body is longer than the declared size ${declared}`);
        }
        if (total > maxBytes) {
          handedOn = true;
          return await putUnder(key, rest(head, chunks), opts);
        }
      }
      if (declared !== undefined && total !== declared) {
        throw new StorageError("put", key, `body has ${total} bytes, declared size is ${declared}`);
      }
      if (signal?.aborted) throw abortedError("put", key, signal);
      const bytes = ownBytes(Buffer.concat(head, total));
      await ask("put", key, () => rows.put(key, bytes));
      // Counted again now that it is done (a read begun meanwhile may have read the older bytes), then kept.
      change(key);
      held.remember(key, bytes);
      return { size: total };
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (!handedOn) {
        await chunks.return(undefined);
        change(key);
      }
    }
  }

  /** A body too big for a row, to the storage underneath; then any row at key goes (it was the older object). */
  async function putUnder(key: string, body: Readable, opts: PutOptions): Promise<{ size: number }> {
    change(key);
    try {
      const result = await under.put(key, body, opts);
      await ask("put", key, () => rows.delete(key));
      return result;
    } finally {
      change(key);
    }
  }

  async function get(key: string, range?: ByteRange): Promise<Readable | null> {
    assertKey(key, "get");
    if (range) assertRange(range, key);
    const known = held.use(key);
    if (known) return bufferedRange(known, range);
    if (underneath.has(key)) return under.get(key, range);
    const seen = changes.count;
    const row = await ask("get", key, () => rows.get(key));
    if (!row) {
      knowUnderneath(key, seen);
      return under.get(key, range);
    }
    if (!changes.changedSince(key, seen)) held.remember(key, row.bytes);
    return bufferedRange(row.bytes, range);
  }

  async function stat(key: string): Promise<{ size: number; modified: Date } | null> {
    assertKey(key, "stat");
    if (underneath.has(key)) return under.stat(key);
    return (await ask("stat", key, () => rows.stat(key))) ?? under.stat(key);
  }

  async function deleteKey(key: string): Promise<void> {
    assertKey(key, "delete");
    change(key);
    try {
      await ask("delete", key, () => rows.delete(key));
    } finally {
      change(key);
    }
    await under.delete(key);
  }

  async function* list(prefix: string): AsyncGenerator<StoredObject> {
    assertPrefix(prefix, "list");
    let after: string | undefined;
    for (;;) {
      const page = await ask("list", prefix, () => rows.page(prefix, after, LIST_PAGE));
      yield* page;
      if (page.length < LIST_PAGE) break;
      after = page[page.length - 1]!.key;
    }
    // What underneath holds at a key with a row is an older object that row replaced: not listed.
    let batch: StoredObject[] = [];
    const flush = async function* () {
      const keys = batch.map((o) => o.key);
      const shadowed = await ask("list", prefix, () => rows.present(keys));
      for (const object of batch) if (!shadowed.has(object.key)) yield object;
      batch = [];
    };
    for await (const object of under.list(prefix)) {
      batch.push(object);
      if (batch.length >= LIST_PAGE) yield* flush();
    }
    if (batch.length > 0) yield* flush();
  }

  async function presignGet(key: string, expiresSeconds: number): Promise<string | null> {
    assertKey(key, "presignGet");
    if (!Number.isSafeInteger(expiresSeconds) || expiresSeconds < 1) {
      throw new StorageError("presignGet", key, `expiry ${expiresSeconds}s is not a positive whole number`);
    }
    if (underneath.has(key)) return under.presignGet(key, expiresSeconds);
    // A row has no URL of its own: its reader gets it from get().
    if (held.use(key)) return null;
    const seen = changes.count;
    if (await ask("presignGet", key, () => rows.stat(key))) return null;
    knowUnderneath(key, seen);
    return under.presignGet(key, expiresSeconds);
  }

  return {
    kind: under.kind,
    put,
    get,
    peek: (key) => held.use(key) ?? under.peek(key),
    keepsUpTo: Math.max(held.keepsUpTo, under.keepsUpTo),
    stat,
    delete: deleteKey,
    list,
    presignGet,
    check: () => under.check(),
  };
}

/** The chunks already read, then the rest of the body, as one stream for the storage underneath. */
function rest(head: Buffer[], chunks: AsyncGenerator<Buffer>): Readable {
  async function* all() {
    yield* head;
    yield* chunks;
  }
  return Readable.from(all(), { objectMode: false });
}
