// Storage in an S3 bucket (AWS, R2, MinIO, Ceph RGW, Garage) through the `minio` client: the production
// driver, shared by every server replica. Keys map to object names `<prefix><key>`.
//
// Uploads are streamed in parts we cut ourselves, not with minio's putObject, because for a stream of unknown
// size putObject buffers 528 MiB parts in memory, and because its multipart path resumes whatever earlier
// upload it finds for the same name and never aborts a failed one. Here:
// - bodies that end within the first part (narinfo, most NARs) go up in one PUT;
// - longer ones go up as a multipart upload of `partSize` parts, at most `concurrency` in flight, their
//   buffers reused, so memory stays at about (concurrency + 1) x partSize whatever the object size;
// - any failure (the body errors, the caller aborts, the size differs from the declared one, S3 refuses a
//   part) aborts the multipart upload: S3 discards its parts and nothing appears at the key. An upload
//   interrupted by a crash shows up in ListMultipartUploads (and a bucket lifecycle rule can expire it).
// Ceph RGW 16.2 answers multipart completion with an empty ETag, so nothing here relies on that ETag; the
// completed object's size is checked with a HEAD instead.
//
// Small objects this process wrote or read whole stay in memory (`held`, 16 MiB in all): get answers them
// without a request, and peek() lets a NAR request be answered with them instead of a redirect, which costs
// the client a second request to the bucket (~1.4 ms for Ceph RGW here, against ~0.1 ms from memory); a
// small NAR not held yet is read whole once (up to keepsUpTo) and kept. They are trusted without asking the
// bucket because nixstash never rewrites a key: every NAR and log is stored under a fresh random key, and
// its database row goes before its object is deleted. Another writer that rewrites keys in the same bucket
// (under this prefix) would be served stale bytes: give it a prefix of its own, or set recentBytes to 0.
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import type { Client } from "minio";
import { KeyChanges } from "./key-changes.ts";
import { bufferedBody, bufferedRange, ownBytes, RECENT_BYTES, SmallObjects } from "./small-objects.ts";
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

export interface S3StorageOptions {
  /** URL of the S3 API, such as `http://127.0.0.1:7480` or `https://s3.eu-west-1.amazonaws.com`. */
  endPoint: string;
  /** URL clients reach the S3 API at, for presigned URLs (defaults to endPoint). */
  publicEndPoint?: string;
  accessKey: string;
  secretKey: string;
  region: string;
  bucket: string;
  /** Path-style (`host/bucket/key`) rather than virtual-host-style (`bucket.host/key`) addressing. */
  pathStyle: boolean;
  /** Prepended to every key, such as `nixstash/` (a `/` is added when missing). */
  prefix?: string;
  /** Multipart part size in bytes, at least 5 MiB (S3's minimum); default 5 MiB. */
  partSize?: number;
  /** Parts uploaded at the same time by one put; default 2. */
  concurrency?: number;
  /** Create the bucket at start when it does not exist. */
  createBucket?: boolean;
  /** Bytes of small objects kept in memory after a put or a whole read (see `held`); default 16 MiB, 0 = none. */
  recentBytes?: number;
}

const MiB = 1024 * 1024;
const MIN_PART = 5 * MiB;
const MAX_PART = 5 * 1024 * MiB;
/**
 * (concurrency + 1) part buffers live for the length of a multipart put: 3 x 5 MiB with the defaults, against
 * 48 MiB with 16 MiB parts, which put a big NAR's ingest over its 200 MiB RSS budget (issue 7, measure 5).
 * A body of unknown size may then reach 10,000 x 5 MiB = 48.8 GiB; a declared size picks bigger parts.
 */
const DEFAULT_PART = 5 * MiB;
const MAX_PARTS = 10_000;
/** Below this, a body is collected in its own chunks; past it, part buffers are taken from the pool. */
const SMALL_BODY = MiB;
const PRESIGN_MAX_SECONDS = 7 * 24 * 3600;
/** Presigned URLs kept for reuse at most (see presignGet). */
const PRESIGNED_MAX = 10_000;
const PART_ATTEMPTS = 3;

interface S3ErrorLike {
  code?: string;
  message?: string;
}

function codeOf(err: unknown): string | undefined {
  return (err as S3ErrorLike | undefined)?.code;
}

function explain(err: unknown): string {
  const code = codeOf(err);
  const message = err instanceof Error ? err.message : String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}

const isAbsent = (err: unknown): boolean => {
  const code = codeOf(err);
  return code === "NoSuchKey" || code === "NotFound";
};

/** Network trouble or a server-side hiccup: worth sending the same part again. */
function isTransient(err: unknown): boolean {
  const code = codeOf(err) ?? "";
  return [
    "ECONNRESET",
    "EPIPE",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "InternalError",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
  ].includes(code);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

type ClientClass = typeof import("minio").Client;

function clientFor(Client: ClientClass, url: string, options: S3StorageOptions, partSize: number): Client {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new StorageError("configure", undefined, `S3 endpoint ${JSON.stringify(url)} is not a URL`);
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || parsed.pathname.replace(/\/+$/, "")) {
    throw new StorageError(
      "configure",
      undefined,
      `S3 endpoint ${JSON.stringify(url)} must be http(s)://host[:port] without a path`,
    );
  }
  const useSSL = parsed.protocol === "https:";
  return new Client({
    endPoint: parsed.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: parsed.port ? Number(parsed.port) : useSSL ? 443 : 80,
    useSSL,
    accessKey: options.accessKey,
    secretKey: options.secretKey,
    region: options.region,
    pathStyle: options.pathStyle,
    partSize,
    // Retries are ours (per part, where they matter); minio's also print to the console.
    retryOptions: { disableRetry: true },
  });
}

/**
 * A fixed number of reusable part buffers for one put: taking one waits while all are in use (that is the
 * back-pressure). Buffers come from `spare` (kept by the storage between puts) before new ones are made, and
 * `retire()` puts the free ones back there, up to `keep`: a push sends dozens of objects past SMALL_BODY, and
 * fresh 5 MiB buffers for each (touched for the first time, then left to the garbage collector) cost a push
 * of the benchmark closure more CPU in page faults and full collections than its S3 requests did.
 */
class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiting: Array<(buffer: Buffer) => void> = [];
  private allocated = 0;

  constructor(
    private readonly size: number,
    private readonly max: number,
    private readonly spare: Buffer[] = [],
    private readonly keep = 0,
  ) {}

  take(): Promise<Buffer> {
    const buffer = this.free.pop();
    if (buffer) return Promise.resolve(buffer);
    if (this.allocated < this.max) {
      this.allocated++;
      return Promise.resolve(this.spare.pop() ?? Buffer.allocUnsafeSlow(this.size));
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  give(buffer: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(buffer);
    else this.free.push(buffer);
  }

  /** The put is over: its free buffers go back to the spares (a buffer still out is left to the collector). */
  retire(): void {
    for (const buffer of this.free.splice(0)) if (this.spare.length < this.keep) this.spare.push(buffer);
  }
}

interface Part {
  /** The bytes to send: `buffer` itself, or its beginning for the last part. */
  bytes: Buffer;
  /** The pool buffer to give back once sent, if any. */
  buffer?: Buffer;
}

/**
 * Cuts a body into parts of exactly partSize bytes (the last one shorter, possibly empty). The first bytes,
 * up to SMALL_BODY, are kept as the chunks they came in, so a small body never costs a whole part buffer.
 */
async function* cutParts(
  body: AsyncIterable<Buffer>,
  partSize: number,
  pool: BufferPool,
  onBytes: (total: number) => void,
): AsyncGenerator<Part> {
  let total = 0;
  let early: Buffer[] | undefined = [];
  let earlyBytes = 0;
  let current: Buffer | undefined;
  let filled = 0;
  for await (let bytes of body) {
    total += bytes.length;
    onBytes(total);
    if (early) {
      early.push(bytes);
      earlyBytes += bytes.length;
      if (earlyBytes < Math.min(SMALL_BODY, partSize)) continue;
      bytes = early.length === 1 ? bytes : Buffer.concat(early, earlyBytes);
      early = undefined;
    }
    while (bytes.length > 0) {
      if (!current) {
        current = await pool.take();
        filled = 0;
      }
      const n = Math.min(bytes.length, partSize - filled);
      bytes.copy(current, filled, 0, n);
      filled += n;
      bytes = bytes.subarray(n);
      if (filled === partSize) {
        yield { bytes: current, buffer: current };
        current = undefined;
      }
    }
  }
  if (early) yield { bytes: Buffer.concat(early, earlyBytes) };
  else if (current) yield { bytes: current.subarray(0, filled), buffer: current };
  else yield { bytes: Buffer.alloc(0) };
}

export async function createS3Storage(options: S3StorageOptions): Promise<Storage> {
  const partSize = options.partSize ?? DEFAULT_PART;
  if (!Number.isSafeInteger(partSize) || partSize < MIN_PART || partSize > MAX_PART) {
    throw new StorageError("configure", undefined, `S3 partSize ${partSize} is not within 5 MiB..5 GiB`);
  }
  const concurrency = options.concurrency ?? 2;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new StorageError("configure", undefined, `S3 concurrency ${concurrency} is not a positive integer`);
  }
  let base = options.prefix ?? "";
  if (base !== "" && !base.endsWith("/")) base += "/";
  assertPrefix(base, "configure");
  const { bucket } = options;
  // Loaded here, not at start-up: the minio client is ~17 MiB of RSS a server on local storage never needs.
  const { Client } = await import("minio");
  const client = clientFor(Client, options.endPoint, options, partSize);
  /** Part buffers of `partSize` between puts (see BufferPool). */
  const spareParts: Buffer[] = [];
  /** Small objects written or read whole by this process (see the header). */
  const held = new SmallObjects(options.recentBytes ?? RECENT_BYTES);
  const keepsUpTo = held.keepsUpTo;
  // What a whole read may keep (see keepWhole and KeyChanges).
  const changes = new KeyChanges(1024);
  const change = (key: string) => {
    held.forget(key);
    changes.change(key);
  };
  const presigner = options.publicEndPoint
    ? clientFor(Client, options.publicEndPoint, options, partSize)
    : client;
  const nameOf = (key: string): string => base + key;

  const fail = (operation: string, key: string | undefined, err: unknown): StorageError =>
    err instanceof StorageError
      ? err
      : new StorageError(operation, key, `s3 bucket ${bucket}: ${explain(err)}`, { cause: err });

  if (options.createBucket) {
    try {
      if (!(await client.bucketExists(bucket))) await client.makeBucket(bucket, options.region);
    } catch (err) {
      // Another replica may have created it in the meantime.
      const exists = await client.bucketExists(bucket).catch(() => false);
      if (!exists) throw fail("createBucket", undefined, err);
    }
  }

  // Over https the payload is not part of the signature (UNSIGNED-PAYLOAD): S3 checks an MD5 instead. Over
  // plain http minio signs the payload's SHA-256, which checks it already.
  const integrity = (bytes: Buffer): Record<string, string> =>
    client.enableSHA256 ? {} : { "Content-MD5": createHash("md5").update(bytes).digest("base64") };

  /**
   * An object in one PUT. Not minio's putObject, which hashes a buffer twice (MD5 always, and SHA-256 for
   * the signature over plain http): most NARs are stored this way, and one hash checks them as well.
   */
  async function putWhole(name: string, bytes: Buffer, headers: Record<string, string>) {
    await client.makeRequestAsyncOmit(
      { method: "PUT", bucketName: bucket, objectName: name, headers: { ...headers, ...integrity(bytes) } },
      bytes,
      [200],
    );
  }

  async function uploadPart(name: string, uploadId: string, partNumber: number, bytes: Buffer) {
    const headers = integrity(bytes);
    for (let attempt = 1; ; attempt++) {
      try {
        const { etag } = await client.uploadPart(
          { bucketName: bucket, objectName: name, uploadID: uploadId, partNumber, headers },
          bytes,
        );
        return { part: partNumber, etag };
      } catch (err) {
        if (attempt >= PART_ATTEMPTS || !isTransient(err)) throw err;
        await sleep(200 * attempt);
      }
    }
  }

  async function put(
    key: string,
    body: NodeJS.ReadableStream | Readable,
    opts: PutOptions = {},
  ): Promise<{ size: number }> {
    const input = startPut(key, body, opts);
    const { size: expected, sizeHint, signal } = opts;
    const name = nameOf(key);
    const onAbort = () => input.destroy(abortedError("put", key, signal!));
    signal?.addEventListener("abort", onAbort, { once: true });
    // Whatever happens to this put, what memory held for the key may no longer be what the bucket holds.
    change(key);
    const headers = { "Content-Type": opts.contentType ?? "application/octet-stream" };
    // A known (or roughly known) size may need bigger parts to fit S3's 10,000 parts.
    const planned = expected ?? sizeHint;
    const thisPartSize =
      planned === undefined ? partSize : Math.max(partSize, Math.ceil(planned / MAX_PARTS / MiB) * MiB);
    // Spare buffers are kept for the usual part size only: (concurrency + 1) of them, what one put holds.
    const pool =
      thisPartSize === partSize
        ? new BufferPool(thisPartSize, concurrency + 1, spareParts, concurrency + 1)
        : new BufferPool(thisPartSize, concurrency + 1);
    const parts = cutParts(chunksOf(input), thisPartSize, pool, (total) => {
      if (expected !== undefined && total > expected) {
        throw new StorageError("put", key, `body is longer than the declared size ${expected}`);
      }
    });
    const checkTotal = (total: number) => {
      if (expected !== undefined && total !== expected) {
        throw new StorageError("put", key, `body has ${total} bytes, declared size is ${expected}`);
      }
    };

    let uploadId: string | undefined;
    /** The key's change was counted at the end already (the small path), after which its bytes were kept. */
    let doneChanging = false;
    const inFlight = new Set<Promise<unknown>>();
    let partFailure: { error: unknown } | undefined;
    try {
      let total = 0;
      let partNumber = 0;
      const done: Array<{ part: number; etag: string }> = [];
      for await (const part of parts) {
        if (partFailure) throw partFailure.error;
        total += part.bytes.length;
        if (uploadId === undefined) {
          if (!part.buffer || part.bytes.length < thisPartSize) {
            // The whole body fitted in the first part: one plain PUT.
            checkTotal(total);
            if (signal?.aborted) throw abortedError("put", key, signal);
            await putWhole(name, part.bytes, headers);
            // Counted again now that it is done (a read begun meanwhile may have read the older bytes), and
            // then the new bytes kept.
            change(key);
            if (part.bytes.length <= keepsUpTo) held.remember(key, ownBytes(part.bytes));
            doneChanging = true;
            if (part.buffer) pool.give(part.buffer);
            return { size: total };
          }
          uploadId = await client.initiateNewMultipartUpload(bucket, name, headers);
        }
        if (part.bytes.length === 0 && partNumber > 0) break; // the body ended exactly at a part boundary
        partNumber++;
        if (partNumber > MAX_PARTS) {
          throw new StorageError(
            "put",
            key,
            `more than ${MAX_PARTS} parts of ${thisPartSize} bytes: declare the size`,
          );
        }
        const upload = uploadPart(name, uploadId, partNumber, part.bytes).then(
          (result) => {
            done.push(result);
          },
          (error: unknown) => {
            partFailure ??= { error };
          },
        );
        // Sent or failed, the buffer is free again (a failure must not leave the part cutter waiting for one).
        if (part.buffer) {
          const buffer = part.buffer;
          void upload.then(() => pool.give(buffer));
        }
        inFlight.add(upload);
        void upload.finally(() => inFlight.delete(upload));
        // Back-pressure also comes from the pool; this bounds the requests too.
        while (inFlight.size >= concurrency && !partFailure) await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
      if (partFailure) throw partFailure.error;
      if (signal?.aborted) throw abortedError("put", key, signal);
      checkTotal(total);
      if (uploadId === undefined) throw new StorageError("put", key, "no parts were produced"); // unreachable
      done.sort((a, b) => a.part - b.part);
      await client.completeMultipartUpload(bucket, name, uploadId, done);
      uploadId = undefined; // from here the object exists: failures below must delete it instead
      // Defensive: S3 said done, check it holds every byte (a HEAD that fails is no reason to fail the put).
      const stored = await client.statObject(bucket, name).catch(() => undefined);
      if (stored && stored.size !== total) {
        await client.removeObject(bucket, name).catch(() => {});
        throw new StorageError("put", key, `S3 stored ${stored.size} bytes of ${total}`);
      }
      return { size: total };
    } catch (err) {
      input.destroy();
      await Promise.allSettled(inFlight);
      if (uploadId !== undefined) {
        await client.abortMultipartUpload(bucket, name, uploadId).catch(() => {
          // Left for ListMultipartUploads-based cleanup (or a lifecycle rule) to find.
        });
      }
      if (err instanceof StorageError) throw err;
      if (signal?.aborted) throw abortedError("put", key, signal);
      throw fail("put", key, err);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      pool.retire();
      if (!doneChanging) change(key);
    }
  }

  async function get(key: string, range?: ByteRange): Promise<Readable | null> {
    assertKey(key, "get");
    if (range) assertRange(range, key);
    const known = held.use(key);
    if (known) return bufferedRange(known, range);
    const name = nameOf(key);
    const seen = changes.count;
    try {
      if (!range || (range.start === 0 && range.end === undefined)) {
        const body = await client.getObject(bucket, name);
        return isSmall(body) ? await keepWhole(key, body, seen) : body;
      }
      const length = range.end === undefined ? 0 : range.end - range.start + 1;
      return await client.getPartialObject(bucket, name, range.start, length);
    } catch (err) {
      if (isAbsent(err)) return null;
      // A range starting past the end: the contract says empty (the key exists, or S3 would say NoSuchKey).
      if (codeOf(err) === "InvalidRange") return Readable.from([]);
      throw fail("get", key, err);
    }
  }

  /** Whether a GET's answer says its object is small enough to keep (its Content-Length). */
  const isSmall = (body: Readable): boolean => {
    const length = Number(
      (body as Readable & { headers?: Record<string, string> }).headers?.["content-length"],
    );
    return Number.isSafeInteger(length) && length <= keepsUpTo;
  };

  /**
   * A small object read whole, kept, and handed over as one buffered body. Not kept when a put or delete of
   * its key began or ended since the read began (`seen`, changes.count then): the bytes read may be older
   * than what that put left.
   */
  async function keepWhole(key: string, body: Readable, seen: number): Promise<Readable> {
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of body) chunks.push(chunk as Buffer);
    } catch (err) {
      throw fail("get", key, err);
    }
    const bytes = ownBytes(Buffer.concat(chunks));
    if (!changes.changedSince(key, seen)) held.remember(key, bytes);
    return bufferedBody(bytes);
  }

  async function statKey(key: string): Promise<{ size: number; modified: Date } | null> {
    assertKey(key, "stat");
    try {
      const info = await client.statObject(bucket, nameOf(key));
      return { size: info.size, modified: info.lastModified };
    } catch (err) {
      if (isAbsent(err)) return null;
      throw fail("stat", key, err);
    }
  }

  async function deleteKey(key: string): Promise<void> {
    assertKey(key, "delete");
    change(key);
    try {
      await client.removeObject(bucket, nameOf(key));
    } catch (err) {
      if (isAbsent(err)) return;
      throw fail("delete", key, err);
    } finally {
      // Again once done: a whole read begun while the delete was on its way may have read the object.
      change(key);
    }
  }

  async function* list(prefix: string): AsyncGenerator<StoredObject> {
    assertPrefix(prefix, "list");
    const stream = client.listObjectsV2(bucket, base + prefix, true);
    try {
      for await (const item of stream) {
        const entry = item as { name?: string; size: number; lastModified?: Date };
        if (entry.name === undefined || !entry.name.startsWith(base)) continue;
        yield {
          key: entry.name.slice(base.length),
          size: entry.size,
          modified: entry.lastModified ?? new Date(0),
        };
      }
    } catch (err) {
      throw fail("list", prefix, err);
    } finally {
      stream.destroy();
    }
  }

  // Presigned URLs are reused: each is a SigV4 signature over its canonical request (a few HMACs and
  // hashes, ~0.1 ms), and a busy cache redirects the same NARs again and again. A URL is signed for the
  // expiry asked plus a reuse window (a tenth of it, at most 5 minutes) and handed out only within that
  // window, so every URL handed out is still valid for at least the expiry asked.
  const presigned = new Map<string, { url: string; until: number }>();
  async function presignGet(key: string, expiresSeconds: number): Promise<string | null> {
    assertKey(key, "presignGet");
    if (!Number.isSafeInteger(expiresSeconds) || expiresSeconds < 1 || expiresSeconds > PRESIGN_MAX_SECONDS) {
      throw new StorageError(
        "presignGet",
        key,
        `expiry ${expiresSeconds}s is not within 1..${PRESIGN_MAX_SECONDS}`,
      );
    }
    const memoKey = `${expiresSeconds}/${key}`;
    const now = Date.now();
    const known = presigned.get(memoKey);
    if (known && known.until > now) return known.url;
    const window = Math.min(Math.floor(expiresSeconds / 10), 300, PRESIGN_MAX_SECONDS - expiresSeconds);
    try {
      const url = await presigner.presignedGetObject(
        bucket,
        nameOf(key),
        expiresSeconds + window,
        {},
        new Date(now),
      );
      presigned.delete(memoKey);
      if (window > 0) {
        if (presigned.size >= PRESIGNED_MAX) presigned.delete(presigned.keys().next().value!);
        presigned.set(memoKey, { url, until: now + window * 1000 });
      }
      return url;
    } catch (err) {
      throw fail("presignGet", key, err);
    }
  }

  async function check(): Promise<void> {
    let exists: boolean;
    try {
      exists = await client.bucketExists(bucket);
    } catch (err) {
      throw fail("check", undefined, err);
    }
    if (!exists) throw new StorageError("check", undefined, `s3 bucket ${bucket} does not exist`);
  }

  return {
    kind: "s3",
    put,
    get,
    peek: (key) => held.use(key),
    keepsUpTo,
    stat: statKey,
    delete: deleteKey,
    list,
    presignGet,
    check,
  };
}
