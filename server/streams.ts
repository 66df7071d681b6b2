// Small stream stages of the ingest pipeline. Each sees every byte once, holds none of them, and keeps
// backpressure intact, so a NAR of any size passes through in constant memory.
import { createHash, type Hash } from "node:crypto";
import { PassThrough, Transform, type TransformCallback, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

/**
 * Bytes each stage may hold before it pushes back. Node's 16 KiB default made a 1 GiB upload thousands of
 * times more stage-to-stage hand-offs, each waiting on the slowest consumer (storage writes).
 */
export const STAGE_BUFFER = 256 * 1024;

/** Passes bytes through while counting them; fails past `limit` bytes. */
export class CountTap extends Transform {
  #size = 0;
  readonly #limit: number;
  readonly #onLimit: () => Error;
  constructor(limit = Number.POSITIVE_INFINITY, onLimit: () => Error = () => new Error("too many bytes")) {
    super({ highWaterMark: STAGE_BUFFER });
    this.#limit = limit;
    this.#onLimit = onLimit;
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.#size += chunk.length;
    if (this.#size > this.#limit) {
      done(this.#onLimit());
      return;
    }
    this.see(chunk);
    done(null, chunk);
  }
  /** Called with each chunk within the limit, before it is passed on. */
  protected see(_chunk: Buffer): void {}
  get size(): number {
    return this.#size;
  }
}

/** A CountTap that also hashes (sha256) what passes. */
export class HashTap extends CountTap {
  readonly #hash: Hash = createHash("sha256");
  protected override see(chunk: Buffer): void {
    this.#hash.update(chunk);
  }
  /** The sha256 digest; call once, after the stream finished. */
  digest(): Buffer {
    return this.#hash.digest();
  }
}

/** Passes bytes through and feeds each chunk to `sink` synchronously; an exception from sink fails the stream. */
export class FeedTap extends Transform {
  readonly #sink: (chunk: Buffer) => void;
  constructor(sink: (chunk: Buffer) => void) {
    super({ highWaterMark: STAGE_BUFFER });
    this.#sink = sink;
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      this.#sink(chunk);
    } catch (error) {
      done(error as Error);
      return;
    }
    done(null, chunk);
  }
}

/**
 * Passes bytes through and also writes them to `side`, waiting for the side to drain (backpressure on both
 * branches). At the end it ends the side; the caller awaits the side's own completion.
 */
export class TeeTap extends Transform {
  readonly #side: Writable;
  readonly #settled: Promise<unknown> | undefined;
  /**
   * With `settled`, the end of the stream waits for it too (and fails with it): a side that is a pipeline
   * of its own may still fail after it took the last byte, and what this stream feeds (storage) must not
   * complete before it has.
   */
  constructor(side: Writable, settled?: Promise<unknown>) {
    super({ highWaterMark: STAGE_BUFFER });
    this.#side = side;
    this.#settled = settled;
    side.on("error", (error) => this.destroy(error));
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    if (this.#side.write(chunk)) done(null, chunk);
    else this.#side.once("drain", () => done(null, chunk));
  }
  override _flush(done: TransformCallback): void {
    const settled = this.#settled;
    if (!settled) {
      this.#side.end(() => done());
      return;
    }
    this.#side.end();
    settled.then(
      () => done(),
      (error: Error) => done(error),
    );
  }
  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    // Torn down by a failure: take the side with us. After a normal end the side finishes on its own
    // (destroying it then would cut off output it has not delivered yet).
    if (error) this.#side.destroy(error);
    done(error);
  }
}

/**
 * Runs `stages` as one pipeline whose output `consume` reads (e.g. storage.put). The consumer gets a
 * PassThrough it may start reading whenever it likes; a failure on either side tears down both.
 */
export async function pipeInto<T>(
  consume: (output: PassThrough) => Promise<T>,
  ...stages: [NodeJS.ReadableStream, ...NodeJS.ReadWriteStream[]]
): Promise<T> {
  const output = new PassThrough({ highWaterMark: STAGE_BUFFER });
  const consuming = consume(output).catch((error) => {
    output.destroy(error);
    throw error;
  });
  const [result] = await Promise.all([consuming, pipeline([...stages, output])]);
  return result;
}
