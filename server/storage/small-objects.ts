// The bytes of small objects a storage driver keeps in memory, most recently used last, within a limit of
// bytes in all. Both drivers keep one: local storage for the small files it read, S3 for the small objects
// it wrote or read; both trust it without I/O, since nixstash never rewrites a key (see s3.ts). Most NARs are a
// few KiB, and each request answered from here skips a file read or a round trip to the bucket.
import { Readable } from "node:stream";
import type { ByteRange } from "./storage.ts";

/** Objects up to this size are kept (and, on local storage, read in one synchronous call). */
export const SMALL_OBJECT = 64 * 1024;
/** Bytes kept by default (each driver has a `recentBytes` option; 0 keeps none). */
export const RECENT_BYTES = 16 * 1024 * 1024;
/** About what an entry costs in memory besides its bytes (key, map entry, record, Buffer). */
const ENTRY_COST = 256;

export class SmallObjects {
  readonly #entries = new Map<string, Buffer>();
  #size = 0;

  constructor(readonly limit: number) {}

  /** Objects up to this size are kept: SMALL_OBJECT, or 0 with no memory for them (Storage.keepsUpTo). */
  get keepsUpTo(): number {
    return this.limit > 0 ? SMALL_OBJECT : 0;
  }

  /** Counted with what an entry costs besides its bytes, so that many tiny objects stay within the limit too. */
  static #sizeOf(bytes: Buffer): number {
    return bytes.length + ENTRY_COST;
  }

  /** The bytes under key, made the most recently used. */
  use(key: string): Buffer | undefined {
    const bytes = this.#entries.get(key);
    if (bytes) {
      this.#entries.delete(key);
      this.#entries.set(key, bytes);
    }
    return bytes;
  }

  /** Keeps bytes under key (replacing any), dropping the least recently used past the limit. */
  remember(key: string, bytes: Buffer): void {
    this.forget(key);
    if (bytes.length > SMALL_OBJECT || SmallObjects.#sizeOf(bytes) > this.limit) return;
    this.#entries.set(key, bytes);
    this.#size += SmallObjects.#sizeOf(bytes);
    for (const [oldest, old] of this.#entries) {
      if (this.#size <= this.limit) break;
      this.#entries.delete(oldest);
      this.#size -= SmallObjects.#sizeOf(old);
    }
  }

  forget(key: string): void {
    const bytes = this.#entries.get(key);
    if (!bytes) return;
    this.#entries.delete(key);
    this.#size -= SmallObjects.#sizeOf(bytes);
  }
}

/**
 * Bytes in memory of their own: a Buffer that is a view of a larger allocation (a socket read, Node's 8 KiB
 * pool) is copied, since keeping the view would keep all of it.
 */
export function ownBytes(bytes: Buffer): Buffer {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) return bytes;
  const own = Buffer.allocUnsafeSlow(bytes.length);
  bytes.copy(own);
  return own;
}

/** A stream with all of bytes already pushed: a reader finds them buffered (sendStream writes them at once). */
export function bufferedBody(bytes: Buffer): Readable {
  const whole = new Readable({ read() {} });
  if (bytes.length > 0) whole.push(bytes);
  whole.push(null);
  return whole;
}

/** The last byte of range in an object of size bytes: its end, clamped to the object. */
export function lastByte(range: ByteRange, size: number): number {
  return Math.min(range.end ?? size - 1, size - 1);
}

/** The bytes of range within bytes (empty for a start at or past the end), as a stream. */
export function bufferedRange(bytes: Buffer, range: ByteRange | undefined): Readable {
  if (!range) return bufferedBody(bytes);
  return bufferedBody(bytes.subarray(Math.min(range.start, bytes.length), lastByte(range, bytes.length) + 1));
}
