// The one small interface every storage driver implements (local directory, S3 bucket), and the rules they
// share: what a key may look like, what a byte range means, and the single error type they throw. Domain
// verbs only ever see `Storage`; test/storage/conformance.ts holds every driver to this contract.
//
// Keys are `/`-separated relative paths such as `nar/1b9p…q.nar.zst`. They are validated identically for
// every driver, so a key that works on local disk also works on S3 and the other way round: no empty key,
// no leading or trailing `/`, no empty, `.` or `..` segment, no backslash or control character, at most
// 1024 bytes of UTF-8, and not under `.tmp/` (reserved: the local driver keeps its in-flight uploads there).
import { finished, Readable } from "node:stream";

export interface StoredObject {
  key: string;
  size: number;
  modified: Date;
}

/** Bytes start..end, both inclusive (as in HTTP `Range: bytes=start-end`); no end = to the end of the object. */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface PutOptions {
  /** The declared length: a body that turns out longer or shorter fails the put and stores nothing. */
  size?: number;
  /**
   * About how long the body will be when its exact length is unknown (a NAR compressed on the way): not
   * checked, only used to choose how to write it (S3: a part size that fits 10,000 parts; local: a small
   * body in one go).
   */
  sizeHint?: number;
  contentType?: string;
  /** Aborting fails the put and stores nothing. */
  signal?: AbortSignal;
}

export interface Storage {
  readonly kind: "local" | "s3";
  /**
   * Atomically stores the stream at key: the object appears only complete; a failing/aborted body or a size
   * mismatch leaves nothing at key (an object already there stays as it was) and no temporary debris that
   * cleanup could not find. Overwrites. Memory stays bounded whatever the size.
   */
  put(key: string, body: NodeJS.ReadableStream | Readable, opts?: PutOptions): Promise<{ size: number }>;
  /**
   * The object's bytes, or null when absent. With a range: the bytes of the range that exist (an end past
   * the object is clamped; a start at or past the end gives an empty stream, as an HTTP layer answering 416
   * would check with `stat` first).
   */
  get(key: string, range?: ByteRange): Promise<Readable | null>;
  stat(key: string): Promise<{ size: number; modified: Date } | null>;
  /** Idempotent: deleting an absent key succeeds. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with prefix (a plain string prefix, not only whole segments), in no particular order. */
  list(prefix: string): AsyncIterable<StoredObject>;
  /**
   * The whole object's bytes when this process holds them in memory and can vouch for them without any I/O,
   * else undefined. For small objects only (both drivers keep those a whole read returned, S3 also those
   * it wrote); a driver may keep none.
   */
  peek(key: string): Buffer | undefined;
  /**
   * Whole objects up to this many bytes that get reads are kept, for peek to answer afterwards; 0 when the
   * driver keeps none that way (a reader of a small object may then prefer a redirect).
   */
  readonly keepsUpTo: number;
  /** A URL a client can GET directly (presigned), or null if this driver cannot redirect. */
  presignGet(key: string, expiresSeconds: number): Promise<string | null>;
  /** Throws when the backend is unreachable or unusable (used by readiness checks). */
  check(): Promise<void>;
}

/** Every failure of a storage operation; the message names the driver, operation and key. */
export class StorageError extends Error {
  override readonly name = "StorageError";
  readonly operation: string;
  readonly key: string | undefined;

  constructor(operation: string, key: string | undefined, message: string, options?: { cause?: unknown }) {
    super(`storage ${operation}${key === undefined ? "" : ` ${JSON.stringify(key)}`}: ${message}`, options);
    this.operation = operation;
    this.key = key;
  }
}

const MAX_KEY_BYTES = 1024;
const RESERVED_TOP = ".tmp";

function badCharacters(text: string): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  return /[\u0000-\u001f\u007f\\]/.test(text);
}

/** Whether key is a valid object key (see the header for the rules). */
export function isValidKey(key: string): boolean {
  return keyProblem(key) === undefined;
}

/** Throws StorageError unless key is a valid object key (see the header for the rules). */
export function assertKey(key: string, operation: string): void {
  const why = keyProblem(key);
  if (why) throw new StorageError(operation, key, `invalid key: ${why}`);
}

function keyProblem(key: unknown): string | undefined {
  if (typeof key !== "string" || key.length === 0) return "empty";
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) return `longer than ${MAX_KEY_BYTES} bytes`;
  if (badCharacters(key)) return "contains a backslash or control character";
  if (key.startsWith("/")) return "starts with /";
  const segments = key.split("/");
  if (segments.some((s) => s === "")) return "has an empty segment";
  if (segments.some((s) => s === "." || s === "..")) return "has a . or .. segment";
  if (segments[0] === RESERVED_TOP) return `${RESERVED_TOP}/ is reserved`;
  return undefined;
}

/**
 * Throws StorageError unless prefix can start a valid key: empty, or a key (trailing `/` allowed, and the
 * last segment may be partial).
 */
export function assertPrefix(prefix: string, operation: string): void {
  if (prefix === "") return;
  const trimmed = prefix.endsWith("/") ? prefix.slice(0, -1) : prefix;
  const why = trimmed === "" ? "starts with /" : keyProblem(trimmed);
  if (why) throw new StorageError(operation, prefix, `invalid prefix: ${why}`);
}

/** Throws StorageError unless range is a valid ByteRange. */
export function assertRange(range: ByteRange, key: string): void {
  const { start, end } = range;
  const ok =
    Number.isSafeInteger(start) &&
    start >= 0 &&
    (end === undefined || (Number.isSafeInteger(end) && end >= start));
  if (!ok) throw new StorageError("get", key, `invalid range ${JSON.stringify(range)}`);
}

/** Throws StorageError unless size is a valid declared size (a non-negative safe integer) or absent. */
export function assertSize(size: number | undefined, key: string): void {
  if (size !== undefined && !(Number.isSafeInteger(size) && size >= 0)) {
    throw new StorageError("put", key, `invalid declared size ${size}`);
  }
}

/**
 * What every driver's put checks first: the key and declared size, and a signal already aborted (the body is
 * destroyed then). The body comes back as a Readable (asReadable).
 */
export function startPut(key: string, body: NodeJS.ReadableStream | Readable, opts: PutOptions): Readable {
  assertKey(key, "put");
  assertSize(opts.size, key);
  const input = asReadable(body);
  if (opts.signal?.aborted) {
    input.destroy();
    throw abortedError("put", key, opts.signal);
  }
  return input;
}

/** The body as a Readable (old-style streams are wrapped), so drivers can pipe, iterate and destroy it. */
export function asReadable(body: NodeJS.ReadableStream | Readable): Readable {
  return body instanceof Readable ? body : new Readable().wrap(body);
}

/**
 * The chunks of a byte stream one at a time, as they were pushed into it. `for await` over a Readable calls
 * read(), which joins every chunk waiting in the stream's buffer into a new Buffer: a copy of each byte
 * whenever the consumer is the slower side, as a put waiting on its parts' uploads is (145 ms of a
 * server's CPU in a push of the bench's closure to S3). Here the stream flows one chunk at a time and
 * pauses until that chunk is taken. Throws the stream's error; a consumer that stops early destroys it.
 */
export async function* chunksOf(stream: Readable): AsyncGenerator<Buffer> {
  const waiting: Buffer[] = [];
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const signal = () => {
    const resolve = wake;
    wake = undefined;
    resolve?.();
  };
  const onData = (chunk: Buffer | string) => {
    waiting.push(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
    stream.pause();
    signal();
  };
  const stopWatching = finished(stream, (error) => {
    ended = true;
    failure = error ?? undefined;
    signal();
  });
  stream.on("data", onData);
  try {
    for (;;) {
      const chunk = waiting.shift();
      if (chunk) {
        yield chunk;
        continue;
      }
      if (failure) throw failure;
      if (ended) return;
      const next = new Promise<void>((resolve) => {
        wake = resolve;
      });
      stream.resume();
      await next;
    }
  } finally {
    stream.off("data", onData);
    stopWatching();
    if (!ended) stream.destroy();
  }
}

/** An error raised because the caller's signal was aborted, naming the operation. */
export function abortedError(operation: string, key: string, signal: AbortSignal): StorageError {
  return new StorageError(operation, key, "aborted", { cause: signal.reason });
}
