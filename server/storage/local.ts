// Storage in a directory on local disk: the embedded default (`npm start` needs nothing else to run).
// A key is a relative path under the root, `nar/abc.nar.zst` → `<root>/nar/abc.nar.zst`.
//
// Atomicity: put streams into `<root>/.tmp/<uuid>.part`, fsyncs it, renames it over the final path (atomic on
// POSIX within one file system) and fsyncs the directory, so a reader sees the old object or the complete new
// one, never a torn file, and a stored object survives a crash. A small body (declared or hinted at most
// SMALL_PUT) takes the same steps on fewer thread-pool round trips: see putSmall. A failed put removes its
// temp file; after a crash, anything in `.tmp/` is debris of an interrupted upload and may be deleted. Reads
// open the file once, so a concurrent overwrite or delete never cuts a stream short. The bytes of small
// objects read recently stay in memory (16 MiB in all) and are served from there (see `recent`).
// Limitation of directories: an object cannot be stored at a key that another key uses as a directory
// (`a/b` and `a/b/c`); S3 allows it, nixstash's key layout never needs it. Such a put fails with StorageError.
import { randomUUID } from "node:crypto";
import {
  closeSync,
  constants,
  createWriteStream,
  fstatSync,
  fsync,
  mkdirSync,
  open as openCallback,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { access, mkdir, open, opendir, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { FileBody } from "../file-body.ts";
import { STAGE_BUFFER } from "../streams.ts";
import {
  bufferedBody,
  bufferedRange,
  lastByte,
  RECENT_BYTES,
  SMALL_OBJECT,
  SmallObjects,
} from "./small-objects.ts";
import {
  abortedError,
  assertKey,
  assertPrefix,
  assertRange,
  type ByteRange,
  isValidKey,
  type PutOptions,
  type Storage,
  StorageError,
  type StoredObject,
  startPut,
} from "./storage.ts";

export interface LocalStorageOptions {
  /** The directory holding the objects (created when missing). */
  root: string;
  /** Bytes of small objects kept in memory after a read (see get); default RECENT_BYTES, 0 = none. */
  recentBytes?: number;
}

const TMP = ".tmp";
/** Bodies declared or hinted at most this long are gathered in memory and written by putSmall. */
const SMALL_PUT = 256 * 1024;
/**
 * Bytes written to an object between two early writebacks (see put). Linux starts writing dirty pages back
 * only past ~10% of RAM or after 30 s, so the fsync that ends a put had all of a big object to write at
 * once, with nothing else left for the CPU to do meanwhile.
 */
const WRITEBACK_EVERY = 32 * 1024 * 1024;

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Absent means: nothing there, or a directory (which is not an object) or a path through a file. */
function isAbsent(err: unknown): boolean {
  const code = errnoCode(err);
  return code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR";
}

/** A put's file-system error as a StorageError, with a hint for the key-layout clash a path can hit. */
function putFailed(key: string, err: unknown): StorageError {
  const code = errnoCode(err);
  const hint =
    code === "EISDIR" || code === "ENOTDIR" || code === "EEXIST"
      ? " (another key uses this path as a directory, or a file as one of its directories)"
      : "";
  return new StorageError("put", key, `${messageOf(err)}${hint}`, { cause: err });
}

/** Runs `action`; if it fails for a missing directory (ENOENT), makes it with `makeDirectory` and runs it again. */
async function whenMissing<T>(action: () => Promise<T>, makeDirectory: () => Promise<unknown>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
    await makeDirectory();
    return action();
  }
}

/** fsync on the thread pool (it waits for the disk). */
function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsync(fd, (error) => (error ? reject(error) : resolve())));
}

/**
 * A new file created for writing, on the thread pool. Creating a file waits for the file system's journal
 * while other puts' fsyncs commit it: synchronously, that blocked the event loop ~1.4 ms per small put of a
 * batch (issue 7, measure 6: 0.42 s of a 302-path push's server profile in `open`).
 */
function createFd(file: string): Promise<number> {
  return new Promise((resolve, reject) =>
    openCallback(file, "wx", 0o644, (error, fd) => (error ? reject(error) : resolve(fd))),
  );
}

/** Opening and closing a directory are page-cache calls of microseconds; only its fsync waits. */
async function fsyncDirectory(dir: string): Promise<void> {
  const fd = openSync(dir, "r");
  try {
    await fsyncFd(fd);
  } finally {
    closeSync(fd);
  }
}

/** Runs `action`; if it fails for a missing directory (ENOENT), makes it and runs it again (all synchronous). */
function whenMissingSync<T>(action: () => T, directory: string): T {
  try {
    return action();
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
    mkdirSync(directory, { recursive: true });
    return action();
  }
}

/**
 * Reads `input` to its end into memory, or stops (overflowed) at the chunk that takes it past `limit`
 * bytes, leaving the rest of the stream unread and undestroyed for the caller.
 */
async function gather(
  input: Readable,
  limit: number,
  signal: AbortSignal | undefined,
): Promise<{ chunks: Buffer[]; size: number; overflowed: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  const abort = () => input.destroy(signal?.reason ?? new Error("aborted"));
  signal?.addEventListener("abort", abort, { once: true });
  try {
    for await (const chunk of input.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
      chunks.push(chunk);
      size += chunk.length;
      if (size > limit) return { chunks, size, overflowed: true };
    }
    return { chunks, size, overflowed: false };
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}

export function createLocalStorage(options: LocalStorageOptions): Storage {
  const root = path.resolve(options.root);
  const tmpDir = path.join(root, TMP);
  const fileOf = (key: string): string => path.join(root, ...key.split("/"));
  const tempFile = (): string => path.join(tmpDir, `${randomUUID()}.part`);

  // The bytes of the small objects read most recently, oldest first, answered by get and peek without a
  // file operation: open, fstat, read and close took ~60-100 µs of a small NAR request when the server woke
  // for it on this VM (ad-hoc timings inside the fast lane, session 14), and the stat that checked a kept
  // object's file before each use cost ~15 µs of the ~95 µs of CPU such a request took (session 17). They are
  // trusted as S3's are (s3.ts): nixstash never rewrites a key (every NAR and log goes under a fresh random
  // key, and its database row goes before its file), and put and delete forget a key when they are done.
  // Something else rewriting files under the root in place would be served stale bytes: set recentBytes to 0.
  const recent = new SmallObjects(options.recentBytes ?? RECENT_BYTES);
  const forget = (key: string) => recent.forget(key);

  async function put(
    key: string,
    body: NodeJS.ReadableStream | Readable,
    opts: PutOptions = {},
  ): Promise<{ size: number }> {
    let input = startPut(key, body, opts);
    const { size: expected, signal } = opts;
    const expectedAtMost = expected ?? opts.sizeHint;
    if (expectedAtMost !== undefined && expectedAtMost <= SMALL_PUT) {
      let gathered: Awaited<ReturnType<typeof gather>>;
      try {
        gathered = await gather(input, SMALL_PUT, signal);
      } catch (err) {
        input.destroy();
        if (signal?.aborted) throw abortedError("put", key, signal);
        throw new StorageError("put", key, messageOf(err), { cause: err });
      }
      if (!gathered.overflowed) return putSmall(key, gathered.chunks, gathered.size, expected);
      // The hint was short: the body goes the streaming way, what was gathered first. The caller's stream
      // goes with the stream read in its place (a put that fails before reading it still destroys it).
      const rest = input;
      input = Readable.from(
        (async function* () {
          yield* gathered.chunks;
          yield* rest;
        })(),
      );
      input.once("close", () => rest.destroy());
    }
    const tmp = tempFile();
    let written = 0;
    // A big object's pages go to disk while it is still being received (fdatasync on the thread pool, one
    // at a time; its error, if any, the final fsync reports again), so the fsync at the end is short.
    let writeback: Promise<void> | undefined;
    let writebackAt = WRITEBACK_EVERY;
    try {
      // Directories are made only when missing (the first put, or one removed since): each mkdir is a
      // thread-pool round trip, and a push of many small paths made two per path.
      const handle = await whenMissing(
        () => open(tmp, "wx", 0o644),
        () => mkdir(tmpDir, { recursive: true }),
      );
      // A Transform rather than an async generator: one fewer promise round per chunk of a big upload.
      const countBytes = new Transform({
        highWaterMark: STAGE_BUFFER,
        transform(bytes: Buffer, _encoding, done) {
          written += bytes.length;
          if (expected !== undefined && written > expected) {
            done(new StorageError("put", key, `body is longer than the declared size ${expected}`));
            return;
          }
          if (written >= writebackAt && !writeback) {
            writebackAt = written + WRITEBACK_EVERY;
            writeback = handle
              .datasync()
              .catch(() => {})
              .finally(() => {
                writeback = undefined;
              });
          }
          done(null, bytes);
        },
      });
      // flush: fsync before the stream closes its file, which pipeline waits for.
      const file = createWriteStream("", {
        fd: handle,
        flush: true,
        highWaterMark: STAGE_BUFFER,
      });
      try {
        await pipeline(input, countBytes, file, { signal });
      } finally {
        await writeback;
      }
      if (expected !== undefined && written !== expected) {
        throw new StorageError("put", key, `body has ${written} bytes, declared size is ${expected}`);
      }
      const dest = fileOf(key);
      await whenMissing(
        () => rename(tmp, dest),
        () => mkdir(path.dirname(dest), { recursive: true }),
      );
      forget(key);
      await fsyncDirectory(path.dirname(dest));
      return { size: written };
    } catch (err) {
      await unlink(tmp).catch(() => {});
      input.destroy();
      if (err instanceof StorageError) throw err;
      if (signal?.aborted) throw abortedError("put", key, signal);
      throw putFailed(key, err);
    }
  }

  /**
   * A small body, whole in memory, stored by the same steps as a streamed one: written to a temporary file,
   * fsynced, renamed over the key, directory fsynced. Write, close and rename are synchronous calls
   * (page-cache work of microseconds, as reads of small objects in get); creating the file (createFd) and
   * the two fsyncs, which wait for the journal or the disk, go to the thread pool.
   */
  async function putSmall(
    key: string,
    chunks: Buffer[],
    size: number,
    expected: number | undefined,
  ): Promise<{ size: number }> {
    if (expected !== undefined && size !== expected) {
      throw new StorageError("put", key, `body has ${size} bytes, declared size is ${expected}`);
    }
    const tmp = tempFile();
    let fd: number | undefined;
    try {
      fd = await whenMissing(
        () => createFd(tmp),
        () => mkdir(tmpDir, { recursive: true }),
      );
      const bytes = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      for (let at = 0; at < size; ) at += writeSync(fd, bytes, at);
      await fsyncFd(fd);
      closeSync(fd);
      fd = undefined;
      const dest = fileOf(key);
      whenMissingSync(() => renameSync(tmp, dest), path.dirname(dest));
      forget(key);
      await fsyncDirectory(path.dirname(dest));
      return { size };
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      try {
        unlinkSync(tmp);
      } catch {}
      throw putFailed(key, err);
    }
  }

  async function get(key: string, range?: ByteRange): Promise<Readable | null> {
    assertKey(key, "get");
    if (range) assertRange(range, key);
    const known = recent.use(key);
    if (known) return bufferedRange(known, range);
    // Opened, measured and (when small) read synchronously: most NARs are a few KiB, and four thread-pool
    // round trips (open, fstat, read, close) made a small NAR request twice as slow as a narinfo (issue 7).
    // These are page-cache operations of microseconds; nginx serves files with the same blocking calls.
    let fd: number;
    try {
      fd = openSync(fileOf(key), "r");
    } catch (err) {
      if (isAbsent(err)) return null;
      throw new StorageError("get", key, messageOf(err), { cause: err });
    }
    let start: number;
    let length: number;
    try {
      const info = fstatSync(fd);
      if (!info.isFile()) {
        closeSync(fd);
        return null;
      }
      start = range?.start ?? 0;
      const end = range ? lastByte(range, info.size) : info.size - 1;
      length = Math.max(0, end - start + 1);
      if (length <= SMALL_OBJECT) {
        // Its own memory, not a slice of Node's shared pool: kept in `recent`, a slice would hold the pool's
        // whole 8 KiB slab.
        const bytes = Buffer.allocUnsafeSlow(length);
        let filled = 0;
        while (filled < length) {
          const read = readSync(fd, bytes, filled, length - filled, start + filled);
          if (read === 0) break;
          filled += read;
        }
        closeSync(fd);
        const got = bytes.subarray(0, filled);
        if (start === 0 && filled === info.size) recent.remember(key, got);
        return bufferedBody(got);
      }
    } catch (err) {
      closeSync(fd);
      throw new StorageError("get", key, messageOf(err), { cause: err });
    }
    // The body owns the descriptor from here on and closes it when it ends or is destroyed.
    return new FileBody(fd, start, length);
  }

  async function statKey(key: string): Promise<{ size: number; modified: Date } | null> {
    assertKey(key, "stat");
    try {
      const info = await stat(fileOf(key));
      return info.isFile() ? { size: info.size, modified: info.mtime } : null;
    } catch (err) {
      if (isAbsent(err)) return null;
      throw new StorageError("stat", key, messageOf(err), { cause: err });
    }
  }

  async function deleteKey(key: string): Promise<void> {
    assertKey(key, "delete");
    try {
      await unlink(fileOf(key));
    } catch (err) {
      if (isAbsent(err)) return;
      throw new StorageError("delete", key, messageOf(err), { cause: err });
    } finally {
      forget(key);
    }
  }

  // Walks only the directories that can hold keys with this prefix; `.tmp` at the top is not an object.
  async function* walk(dir: string, dirKey: string, prefix: string): AsyncGenerator<StoredObject> {
    let entries: AsyncIterable<import("node:fs").Dirent>;
    try {
      entries = await opendir(dir);
    } catch (err) {
      if (isAbsent(err)) return;
      throw new StorageError("list", prefix, messageOf(err), { cause: err });
    }
    for await (const entry of entries) {
      if (dirKey === "" && entry.name === TMP) continue;
      const key = dirKey === "" ? entry.name : `${dirKey}/${entry.name}`;
      if (entry.isDirectory()) {
        const asPrefix = `${key}/`;
        if (asPrefix.startsWith(prefix) || prefix.startsWith(asPrefix)) {
          yield* walk(path.join(dir, entry.name), key, prefix);
        }
      } else if (entry.isFile() && key.startsWith(prefix) && isValidKey(key)) {
        try {
          const info = await stat(path.join(dir, entry.name));
          yield { key, size: info.size, modified: info.mtime };
        } catch (err) {
          if (!isAbsent(err)) throw new StorageError("list", prefix, messageOf(err), { cause: err });
          // deleted while we were listing: not there any more
        }
      }
    }
  }

  async function* list(prefix: string): AsyncGenerator<StoredObject> {
    assertPrefix(prefix, "list");
    const cut = prefix.lastIndexOf("/");
    const dirKey = cut === -1 ? "" : prefix.slice(0, cut);
    yield* walk(dirKey === "" ? root : fileOf(dirKey), dirKey, prefix);
  }

  async function presignGet(key: string, _expiresSeconds: number): Promise<string | null> {
    assertKey(key, "presignGet");
    return null;
  }

  async function check(): Promise<void> {
    try {
      await mkdir(root, { recursive: true });
      if (!(await stat(root)).isDirectory()) throw new Error("not a directory");
      await access(root, constants.R_OK | constants.W_OK);
    } catch (err) {
      throw new StorageError("check", undefined, `root ${root} is not usable: ${messageOf(err)}`, {
        cause: err,
      });
    }
  }

  return {
    kind: "local",
    put,
    get,
    peek: (key) => recent.use(key),
    keepsUpTo: recent.keepsUpTo,
    stat: statKey,
    delete: deleteKey,
    list,
    presignGet,
    check,
  };
}
