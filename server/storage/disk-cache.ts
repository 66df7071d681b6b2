// A local disk in front of a remote store (S3): NARs read from the bucket are copied to a directory on this
// machine, and later reads are answered from there, as local storage answers them (the file sent with
// sendfile, small ones from memory), instead of with a redirect to the bucket or a stream through it. A
// substituter then takes a popular NAR at local-disk speed, and the bucket sees one GET per NAR and replica
// instead of one per download. The directory holds at most `limitBytes`; the least recently read copies go
// first.
//
// The first whole read of an object is served through this process from the one GET that makes its copy
// (read-through), not redirected to the bucket while a second GET makes the copy in the background: that
// read the bucket twice, and on a machine that runs the bucket too (bench measure 4, one substitution after
// a push) took as long again as the client's own work. An object found larger than half the limit on the way
// is served to the end without a copy and redirected from then on; a read of a byte range, or one arriving
// while a copy of its key is being made, is served from the bucket (and a range read asks for a copy, made
// in the background as before).
//
// What is kept is only ever a copy of a whole object as the bucket holds it: a copy is made by reading the
// object once and storing it with local storage's put (a temporary file, fsynced, renamed over its key), so a
// crash leaves whole copies or nothing, and the copies found at start are used again. A put or delete
// through this driver removes the key's copy when it begins and when it ends, and a copy whose reading began
// before the end of a put or delete of its key is not kept (the bytes may be the older ones). nixstash never rewrites a key (s3.ts), so a
// copy can only go stale if something else rewrites the bucket's objects: do not share the prefix with it.
//
// Everything else (put, stat, list, peek and its memory of small objects, presigned URLs while a copy is
// being made or of what is too large to copy) is the remote driver's. presignGet answers null, "serve it from
// here", for a key with a copy and for one to read through.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import type { Logger } from "pino";
import { KeyChanges } from "./key-changes.ts";
import { createLocalStorage } from "./local.ts";
import { assertKey, type ByteRange, type PutOptions, type Storage } from "./storage.ts";

export interface DiskCacheOptions {
  /** The directory of the copies (created if missing); nothing else may write there. */
  root: string;
  /** Bytes of copies kept at most. An object larger than half of it is never copied. */
  limitBytes: number;
  /** Copies made at once (each one GET from the bucket and a file written). */
  fillsAtOnce?: number;
  log?: Pick<Logger, "warn">;
}

export interface DiskCacheStats {
  /** Bytes of copies held now, and how many. */
  bytes: number;
  copies: number;
  /** Copies made, and copies that failed (the bucket or the disk refused), since start. */
  made: number;
  failed: number;
}

export interface DiskCachedStorage extends Storage {
  /** Resolves once no copy is being made or waiting to be (tests). */
  settled(): Promise<void>;
  stats(): DiskCacheStats;
}

/** Keys remembered as too large to copy (a few hundred bytes each). */
const OVERSIZED_REMEMBERED = 10_000;
/** What each side of a read-through buffers before the bucket's stream waits for it. */
const TEE_BUFFER = 256 * 1024;

export async function withDiskCache(remote: Storage, options: DiskCacheOptions): Promise<DiskCachedStorage> {
  // No memory of its own: the remote driver keeps the small objects (peek), and would hold them twice.
  const copies = createLocalStorage({ root: options.root, recentBytes: 0 });
  // Temporary files of copies a crash interrupted: never renamed into place, so nothing refers to them.
  await rm(join(options.root, ".tmp"), { recursive: true, force: true });
  await copies.check();
  const fillsAtOnce = options.fillsAtOnce ?? 2;
  const largest = Math.floor(options.limitBytes / 2);

  // The copies held, least recently read first (Map order), with their sizes.
  const held = new Map<string, number>();
  let heldBytes = 0;
  for await (const copy of copies.list("")) {
    held.set(copy.key, copy.size);
    heldBytes += copy.size;
  }

  // A copy begun before a put or delete of its key ended is not kept (KeyChanges).
  const changes = new KeyChanges(4096);

  /** Keys found larger than `largest`: never copied, redirected to the bucket (bounded, oldest forgotten). */
  const oversized = new Set<string>();
  const markOversized = (key: string) => {
    oversized.delete(key);
    oversized.add(key);
    if (oversized.size > OVERSIZED_REMEMBERED) oversized.delete(oversized.values().next().value!);
  };

  /** Removes key's file. One that cannot be removed is not served; a put or delete of the bucket goes on. */
  const removeFile = (key: string) =>
    copies.delete(key).catch((error: unknown) => {
      options.log?.warn({ err: error, key }, "could not remove a copy from the disk cache");
    });

  /**
   * Forgets key's copy (at once: `held` says what may be served) and removes its file. A key not held has
   * no file but one a fill is making, which that fill removes itself: no unlink is tried for it (every put
   * is of a fresh key, and two failing unlinks per put cost ~0.3 ms of CPU here).
   */
  const drop = async (key: string) => {
    const size = held.get(key);
    if (size === undefined) return;
    held.delete(key);
    heldBytes -= size;
    await removeFile(key);
  };

  const evict = async () => {
    while (heldBytes > options.limitBytes) {
      const oldest = held.keys().next();
      if (oldest.done) return;
      await drop(oldest.value);
    }
  };

  let made = 0;
  let failed = 0;

  // Copies to make, and those being made.
  const waiting = new Set<string>();
  const filling = new Set<string>();
  const idle: Array<() => void> = [];
  const wake = () => {
    if (filling.size === 0 && waiting.size === 0) for (const resolve of idle.splice(0)) resolve();
  };

  /**
   * Takes a copy just written for key (reading it began at change count `seen`) into what is served, or
   * removes it if a put or delete of key overlapped the reading.
   */
  const keep = async (key: string, size: number, seen: number) => {
    if (changes.changedSince(key, seen)) {
      await removeFile(key);
      return;
    }
    held.set(key, size);
    heldBytes += size;
    made++;
    await evict();
  };

  const fill = async (key: string) => {
    const seen = changes.count;
    const info = await remote.stat(key);
    if (!info) return;
    if (info.size > largest) {
      markOversized(key);
      return;
    }
    const body = await remote.get(key);
    if (!body) return;
    await copies.put(key, body, { size: info.size });
    await keep(key, info.size, seen);
  };

  const pump = () => {
    while (filling.size < fillsAtOnce && waiting.size > 0) {
      const key = waiting.values().next().value!;
      waiting.delete(key);
      filling.add(key);
      fill(key)
        .catch((error: unknown) => {
          failed++;
          options.log?.warn({ err: error, key }, "could not copy an object to the disk cache");
        })
        .finally(() => {
          filling.delete(key);
          pump();
          wake();
        });
    }
  };

  /**
   * The first whole read of key (not held, not being copied): one GET of the bucket, streamed to the caller
   * and into a copy at once. The slower of the two sets the pace; a caller that goes away leaves the copy to
   * finish alone, a copy that fails (or turns out too large) leaves the caller served to the end.
   */
  const readThrough = async (key: string): Promise<Readable | null> => {
    const seen = changes.count;
    filling.add(key);
    let body: Readable | null = null;
    try {
      body = await remote.get(key);
    } finally {
      if (!body) {
        filling.delete(key);
        wake();
      }
    }
    if (!body) return null;
    const source = body;
    const toCaller = new PassThrough({ highWaterMark: TEE_BUFFER });
    const toFile = new PassThrough({ highWaterMark: TEE_BUFFER });
    toFile.on("error", () => {}); // the copy's put reports it
    const stopCopy = new AbortController();
    let caller = true;
    let copying = true;
    let bytes = 0;
    const resume = () => {
      if (!caller && !copying) source.destroy();
      else if (!(caller && toCaller.writableNeedDrain) && !(copying && toFile.writableNeedDrain))
        source.resume();
    };
    const endCopy = (why?: Error) => {
      if (!copying) return;
      copying = false;
      if (why) stopCopy.abort(why);
      resume();
    };
    source.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      if (copying && bytes > largest) {
        markOversized(key);
        endCopy(new Error("larger than the disk cache keeps"));
      }
      let full = false;
      if (caller && !toCaller.write(chunk)) full = true;
      if (copying && !toFile.write(chunk)) full = true;
      if (full) source.pause();
    });
    toCaller.on("drain", resume);
    toFile.on("drain", resume);
    toCaller.once("close", () => {
      caller = false;
      resume();
    });
    // Closed early when the copy's put failed on its own (the disk): the caller goes on alone.
    toFile.once("close", () => endCopy());
    source.once("end", () => {
      toCaller.end();
      toFile.end();
    });
    source.once("error", (error) => {
      toCaller.destroy(error);
      endCopy(error);
    });
    copies
      .put(key, toFile, { signal: stopCopy.signal })
      .then(
        ({ size }) => keep(key, size, seen),
        (error: unknown) => {
          if (stopCopy.signal.aborted) return; // too large, or the bucket's read failed: the caller heard
          failed++;
          options.log?.warn({ err: error, key }, "could not copy an object to the disk cache");
        },
      )
      .finally(() => {
        endCopy();
        filling.delete(key);
        pump();
        wake();
      });
    return toCaller;
  };

  /** Asks for a copy of key (once: a key held, waiting or being copied, or known too large, is not asked). */
  const want = (key: string) => {
    if (held.has(key) || waiting.has(key) || filling.has(key) || oversized.has(key)) return;
    waiting.add(key);
    pump();
  };

  /** The copy of key, made the most recently read; null when there is none (or its file vanished). */
  const fromCopy = async (key: string, range?: ByteRange): Promise<Readable | null> => {
    const size = held.get(key);
    if (size === undefined) return null;
    held.delete(key);
    held.set(key, size);
    const body = await copies.get(key, range);
    if (!body) await drop(key);
    return body;
  };

  return {
    kind: remote.kind,
    async put(key: string, body: NodeJS.ReadableStream | Readable, opts?: PutOptions) {
      assertKey(key, "put");
      changes.change(key);
      waiting.delete(key);
      oversized.delete(key);
      await drop(key);
      try {
        return await remote.put(key, body, opts);
      } finally {
        // A copy made while the put was on its way may hold the older bytes.
        changes.change(key);
        await drop(key);
      }
    },
    async get(key: string, range?: ByteRange) {
      assertKey(key, "get");
      const local = await fromCopy(key, range);
      if (local) return local;
      if (!range && !filling.has(key) && !oversized.has(key)) {
        waiting.delete(key);
        return readThrough(key);
      }
      const body = await remote.get(key, range);
      if (body) want(key);
      return body;
    },
    peek: (key) => remote.peek(key),
    keepsUpTo: remote.keepsUpTo,
    stat: (key) => remote.stat(key),
    async delete(key: string) {
      assertKey(key, "delete");
      changes.change(key);
      waiting.delete(key);
      oversized.delete(key);
      await drop(key);
      try {
        await remote.delete(key);
      } finally {
        changes.change(key);
        await drop(key);
      }
    },
    list: (prefix) => remote.list(prefix),
    async presignGet(key: string, expiresSeconds: number) {
      assertKey(key, "presignGet");
      if (held.has(key)) return null;
      // Read through this process once (get), which makes the copy; redirected while a copy is being made,
      // or when the object is too large to keep.
      if (!filling.has(key) && !oversized.has(key)) return null;
      return remote.presignGet(key, expiresSeconds);
    },
    async check() {
      await remote.check();
      await copies.check();
    },
    settled: () =>
      new Promise<void>((resolve) => {
        idle.push(resolve);
        wake();
      }),
    stats: () => ({ bytes: heldBytes, copies: held.size, made, failed }),
  };
}
