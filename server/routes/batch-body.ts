// The body of a batch upload (POST /api/v1/caches/{name}/paths, Content-Type application/x-nixstash-batch):
// entries one after another, each
//
//   one line of JSON, the path info of a single upload plus "bodySize" (and "encoding"), ended by "\n";
//   exactly bodySize bytes: the NAR, zstd-compressed or plain.
//
// This reads the framing only (the JSON object and the bytes after it); what the object says is checked by
// the route, entry by entry. A body that cannot be framed (a line that is not a JSON object with a bodySize,
// a body that ends inside an entry, past the limits) is refused whole, naming the entry.
import type { Readable } from "node:stream";
import { AppError, badRequest } from "../errors.ts";

export const BATCH_CONTENT_TYPE = "application/x-nixstash-batch";

export interface BatchLimits {
  entries: number;
  headerBytes: number;
  /** Of all the entries' bodies together (the batch is held until its paths are stored). */
  bodyBytes: number;
}

export const BATCH_LIMITS: BatchLimits = {
  entries: 1000,
  headerBytes: 4 * 1024 * 1024,
  bodyBytes: 32 * 1024 * 1024,
};

export interface RawBatchEntry {
  header: Record<string, unknown>;
  body: Buffer;
}

const NEWLINE = 0x0a;

export async function* readBatchBody(
  body: Readable,
  limits: BatchLimits = BATCH_LIMITS,
): AsyncGenerator<RawBatchEntry> {
  const reader = new ByteReader(body[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
  let bodyBytes = 0;
  for (let n = 1; ; n++) {
    const line = await reader.line(limits.headerBytes);
    if (line === undefined) {
      if (reader.length > 0) throw badRequest(`batch entry ${n}: the body ends inside its JSON line`);
      if (n === 1) throw badRequest("empty batch: no entries");
      return;
    }
    if (line === "too long")
      throw new AppError(
        "payload_too_large",
        `batch entry ${n}: JSON line longer than ${limits.headerBytes} bytes`,
      );
    if (n > limits.entries)
      throw new AppError("payload_too_large", `more than ${limits.entries} entries in one batch`);
    let header: unknown;
    try {
      header = JSON.parse(line.toString("utf8"));
    } catch {
      throw badRequest(`batch entry ${n}: the line is not valid JSON`);
    }
    if (typeof header !== "object" || header === null || Array.isArray(header))
      throw badRequest(`batch entry ${n}: the line is not a JSON object`);
    const size = (header as { bodySize?: unknown }).bodySize;
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0)
      throw badRequest(`batch entry ${n}: bodySize must be the length in bytes of the NAR body that follows`);
    bodyBytes += size;
    if (bodyBytes > limits.bodyBytes)
      throw new AppError(
        "payload_too_large",
        `batch entry ${n}: the bodies of one batch may hold at most ${limits.bodyBytes} bytes`,
      );
    if (!(await reader.fill(size)))
      throw badRequest(`batch entry ${n}: the body ends after ${reader.length} of its ${size} bytes`);
    yield { header: header as Record<string, unknown>, body: reader.take(size) };
  }
}

/** Lines and exact-length pieces of a stream of chunks, without copying a chunk more than once. */
class ByteReader {
  readonly #source: AsyncIterator<Buffer>;
  #chunks: Buffer[] = [];
  #length = 0;
  #ended = false;
  /** Bytes at the front already searched for a newline. */
  #searched = 0;

  constructor(source: AsyncIterator<Buffer>) {
    this.#source = source;
  }

  get length(): number {
    return this.#length;
  }

  async #more(): Promise<boolean> {
    if (this.#ended) return false;
    const next = await this.#source.next();
    if (next.done) {
      this.#ended = true;
      return false;
    }
    if (next.value.length > 0) {
      this.#chunks.push(next.value);
      this.#length += next.value.length;
    }
    return true;
  }

  /** Whether `n` bytes are there (reading more as needed). */
  async fill(n: number): Promise<boolean> {
    while (this.#length < n) if (!(await this.#more())) return false;
    return true;
  }

  /** The next `n` bytes (fill(n) first). */
  take(n: number): Buffer {
    let out: Buffer;
    const first = this.#chunks[0];
    if (first && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const chunk = this.#chunks[0]!;
        const used = Math.min(chunk.length, n - at);
        chunk.copy(out, at, 0, used);
        at += used;
        if (used === chunk.length) this.#chunks.shift();
        else this.#chunks[0] = chunk.subarray(used);
      }
    }
    this.#length -= n;
    this.#searched = 0;
    return out;
  }

  /** The next line without its "\n"; undefined at the end of the stream; "too long" past `max` bytes. */
  async line(max: number): Promise<Buffer | "too long" | undefined> {
    for (;;) {
      let offset = 0;
      for (const chunk of this.#chunks) {
        const from = Math.max(0, this.#searched - offset);
        const at = from < chunk.length ? chunk.indexOf(NEWLINE, from) : -1;
        if (at >= 0) {
          const line = this.take(offset + at + 1);
          return line.subarray(0, line.length - 1);
        }
        offset += chunk.length;
      }
      this.#searched = this.#length;
      if (this.#length > max) return "too long";
      if (!(await this.#more())) return undefined;
    }
  }
}
