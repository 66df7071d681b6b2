// zstd compression of uploads on contexts reused from one upload to the next.
//
// zstd-napi's CompressStream makes a compression context per stream and reports its memory to V8 as external
// memory (a few MiB at level 3, tens of MiB with worker threads), given back only when the stream is garbage
// collected. A push of a few hundred paths therefore had V8 run a full collection every few paths to keep up
// (a CPU profile of `nixstash push` shows it: `npm run bench -- --only 6 --profile`). Here a context returns
// to its pool when its frame has ended, which leaves it clean for the next stream with its parameters kept;
// a stream cut off or failed mid-frame drops its context instead. The compression loop is CompressStream's,
// on the same binding.
//
// `compress` makes the compressed body straight from a synchronous source (hook/nar-dump.ts) without a
// stream of NAR chunks in between: each piece the source leaves in the stream's scratch buffer goes to
// compressStream2 whole (zstd copies what it consumes into its own buffers, so the scratch is free again when
// the call returns), and what zstd produces is gathered in one output buffer, kept with the context, then
// pushed as an exact-size copy. Per upload that allocates the compressed bytes and nothing else, where a
// fresh 128 KiB output buffer per push (and a fresh buffer per file read) kept V8's full collections busy.
// An upload's request takes the body through `sendTo` instead, which allocates nothing per upload: zstd
// writes into a few output buffers kept by the pool, each written to the request as it is and taken back
// only in its write's callback. Those exact-size copies were fresh memory, and touching it for the first
// time (page faults) cost the push of the benchmark closure a quarter of a second of CPU.
import { createRequire } from "node:module";
import { Readable, Transform, type TransformCallback, type Writable } from "node:stream";
import type * as Binding from "zstd-napi/binding.js";

const zstd = createRequire(import.meta.url)("zstd-napi/binding.js") as typeof Binding;
type CCtx = InstanceType<typeof zstd.CCtx>;

export interface CompressionSettings {
  level: number;
  /** zstd's own worker threads (ZSTD_c_nbWorkers); 0 compresses on the calling thread. */
  threads: number;
  /** Bytes per worker job (ZSTD_c_jobSize), when threads > 0. */
  jobSize?: number;
}

/**
 * Pieces of input produced on demand into a caller's scratch buffer, each valid until the next `next()`;
 * `return()` lets the source let go of what it holds (an open file). A NarSource is one.
 */
export type PieceSource = (scratch: Buffer) => Iterator<Uint8Array, unknown, undefined>;

/** One zstd frame of a source: a Readable, or sent straight to a request with `sendTo`. */
export interface CompressedBody extends Readable {
  /**
   * Compresses the whole source into `out` and ends it, through output buffers reused from one upload to
   * the next; resolves once the last write went out. Stops, without ending `out`, when `out` closes or the
   * body is destroyed; the source's and zstd's errors destroy the body with their own message (and reject).
   * Use either this or the body as a Readable, not both.
   */
  sendTo(out: Writable): Promise<void>;
  /** Whether sendTo wrote the whole frame and ended `out`. */
  readonly sent: boolean;
}

export interface CompressorPool {
  /** A Transform that compresses what goes through it into one zstd frame. */
  stream(settings: CompressionSettings): Transform;
  /**
   * One zstd frame of what `source` produces, as a Readable that pulls from the source only while its
   * consumer wants more; the source's errors fail the stream, with their own message.
   */
  compress(source: PieceSource, settings: CompressionSettings): CompressedBody;
  /**
   * One zstd frame of all that `source` produces, at once, on this thread (for small NARs: a batch upload
   * holds its entries whole). The source's errors are thrown with their own message.
   */
  compressWhole(source: PieceSource, settings: CompressionSettings): Buffer;
  /** Contexts waiting for reuse (for tests). */
  readonly idle: number;
  /** Scratch buffers waiting for reuse (for tests). */
  readonly idleScratch: number;
}

/** Idle contexts kept per setting: more than the uploads a push runs at once is memory for nothing. */
const KEEP_IDLE = 8;
const EMPTY = new Uint8Array(0);
/** What `compress` gives its source to fill: big pieces mean few calls into zstd and few reads. */
export const SCRATCH_SIZE = 1 << 20;
/**
 * Input compressed before `compress` lets the event loop run. Reads and compression are synchronous, and
 * a consumer that always takes more (a socket whose kernel buffer drains as fast as it fills) would
 * otherwise keep one upload going in a chain of process.nextTick callbacks, with the other uploads, the
 * server's answers and timers waiting.
 */
const INPUT_PER_TURN = 8 << 20;

/** Output buffers of sendTo: one is filled by zstd while one goes out, the others are with the socket. */
const SEND_CHUNK = 256 * 1024;
const SEND_IN_FLIGHT = 2;

/** A context with the output buffer that goes with it (reused as long as the context is). */
interface Pooled {
  cctx: CCtx;
  out: Buffer;
}

export function createCompressorPool(): CompressorPool {
  const idle = new Map<string, Pooled[]>();
  const scratches: Buffer[] = [];
  const outputs: Buffer[] = [];
  const sendBuffers = {
    take: () => outputs.pop() ?? Buffer.allocUnsafeSlow(SEND_CHUNK),
    give: (buffer: Buffer) => {
      if (outputs.length < KEEP_IDLE * SEND_IN_FLIGHT) outputs.push(buffer);
    },
  };
  const take = (settings: CompressionSettings) => {
    const key = `${settings.level}/${settings.threads}/${settings.jobSize ?? 0}`;
    const pooled = idle.get(key)?.pop() ?? {
      cctx: newContext(settings),
      out: Buffer.allocUnsafe(zstd.cStreamOutSize()),
    };
    const release = (done: Pooled) => {
      const list = idle.get(key) ?? [];
      if (list.length < KEEP_IDLE) list.push(done);
      idle.set(key, list);
    };
    return { pooled, release };
  };
  return {
    stream(settings) {
      const { pooled, release } = take(settings);
      return new PooledCompressStream(pooled, release);
    },
    compress(source, settings) {
      const { pooled, release } = take(settings);
      const scratch = scratches.pop() ?? Buffer.allocUnsafe(SCRATCH_SIZE);
      return new PooledCompressReadable(pooled, source(scratch), {
        release,
        releaseScratch: () => {
          if (scratches.length < KEEP_IDLE) scratches.push(scratch);
        },
        sendBuffers,
      });
    },
    compressWhole(source, settings) {
      const { pooled, release } = take(settings);
      const scratch = scratches.pop() ?? Buffer.allocUnsafe(SCRATCH_SIZE);
      const pieces = source(scratch);
      const chunks: Buffer[] = [];
      const emit = (chunk: Buffer) => chunks.push(chunk);
      let done = false;
      try {
        for (let next = pieces.next(); !next.done; next = pieces.next())
          compressInto(pooled, next.value, zstd.EndDirective.continue, emit, () => false);
        compressInto(pooled, EMPTY, zstd.EndDirective.end, emit, () => false);
        done = true;
      } finally {
        pieces.return?.();
        if (scratches.length < KEEP_IDLE) scratches.push(scratch);
        // A frame cut off by an error leaves its context mid-frame: dropped, not reused.
        if (done) release(pooled);
      }
      return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    },
    get idle() {
      let n = 0;
      for (const list of idle.values()) n += list.length;
      return n;
    },
    get idleScratch() {
      return scratches.length;
    },
  };
}

function newContext(settings: CompressionSettings): CCtx {
  const cctx = new zstd.CCtx();
  cctx.setParameter(zstd.CParameter.compressionLevel, settings.level);
  if (settings.threads > 0) {
    cctx.setParameter(zstd.CParameter.nbWorkers, settings.threads);
    if (settings.jobSize) cctx.setParameter(zstd.CParameter.jobSize, settings.jobSize);
  }
  return cctx;
}

/**
 * Feeds all of `input` to the pooled context (for `end`, the rest of the frame too). What zstd produces
 * gathers in the context's output buffer and goes to `emit` as exact-size copies (small ones come from
 * Node's shared pool) whenever the buffer is full and once the input is in. `gone()` is asked between calls
 * into zstd: a consumer called by `emit` may have destroyed the stream, and the context is not its any more.
 */
function compressInto(
  pooled: Pooled | undefined,
  input: Uint8Array,
  end: Binding.EndDirective,
  emit: (chunk: Buffer) => void,
  gone: () => boolean,
): void {
  if (!pooled) throw new Error("zstd stream used after its end");
  const { cctx, out } = pooled;
  let fill = 0;
  const flush = () => {
    if (fill === 0) return;
    const chunk = Buffer.allocUnsafe(fill);
    out.copy(chunk, 0, 0, fill);
    fill = 0;
    emit(chunk);
  };
  let rest = input;
  for (;;) {
    const [ret, produced, consumed] = cctx.compressStream2(out.subarray(fill), rest, end);
    fill += produced;
    if (fill === out.length) flush();
    rest = rest.subarray(consumed);
    if (rest.length === 0 && (end === zstd.EndDirective.continue || ret === 0)) break;
    if (gone()) throw new Error("zstd stream destroyed while compressing");
  }
  flush();
}

class PooledCompressStream extends Transform {
  #pooled: Pooled | undefined;
  readonly #release: (pooled: Pooled) => void;

  constructor(pooled: Pooled, release: (pooled: Pooled) => void) {
    super();
    this.#pooled = pooled;
    this.#release = release;
  }

  #compress(input: Uint8Array, end: Binding.EndDirective): void {
    compressInto(
      this.#pooled,
      input,
      end,
      (chunk) => this.push(chunk),
      () => this.destroyed,
    );
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      this.#compress(chunk, zstd.EndDirective.continue);
      done();
    } catch (error) {
      done(error as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      this.#compress(EMPTY, zstd.EndDirective.end);
    } catch (error) {
      done(error as Error);
      return;
    }
    // The frame is complete: the context is clean for the next stream.
    const pooled = this.#pooled!;
    this.#pooled = undefined;
    this.#release(pooled);
    done();
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    // Cut off mid-frame (or failed): the context is not reused; the garbage collector frees it.
    this.#pooled = undefined;
    done(error);
  }
}

/**
 * The body of an upload: pulls pieces from a source, compresses each as soon as it is there, and pushes
 * what zstd produced. Stops pulling when push() says the consumer has enough (at most one piece's output,
 * plus the frame's end, goes over that), so a slow socket never makes it read ahead.
 */
class PooledCompressReadable extends Readable implements CompressedBody {
  #pooled: Pooled | undefined;
  #pieces: Iterator<Uint8Array, unknown, undefined> | undefined;
  readonly #release: (pooled: Pooled) => void;
  #releaseScratch: (() => void) | undefined;
  readonly #sendBuffers: { take(): Buffer; give(buffer: Buffer): void };
  #sent = false;
  /** push() asked for no more, or the stream was destroyed from a consumer called by push(). */
  #stop = false;
  /** Input taken since the event loop last ran (see INPUT_PER_TURN). */
  #inputThisTurn = 0;
  #turnPending = false;

  constructor(
    pooled: Pooled,
    pieces: Iterator<Uint8Array, unknown, undefined>,
    hooks: {
      release: (pooled: Pooled) => void;
      releaseScratch: () => void;
      sendBuffers: { take(): Buffer; give(buffer: Buffer): void };
    },
  ) {
    super();
    this.#pooled = pooled;
    this.#pieces = pieces;
    this.#release = hooks.release;
    this.#releaseScratch = hooks.releaseScratch;
    this.#sendBuffers = hooks.sendBuffers;
  }

  get sent(): boolean {
    return this.#sent;
  }

  async sendTo(out: Writable): Promise<void> {
    const { take, give } = this.#sendBuffers;
    let gone = out.destroyed;
    /** `out` closed, or this body was destroyed (by the caller, or by an error). */
    const stopped = () => gone || this.destroyed;
    let wake: (() => void) | undefined;
    const onClose = () => {
      gone = true;
      wake?.();
    };
    out.once("close", onClose);
    this.once("close", onClose);
    let held = 0;
    /** Waits until at most `limit` buffers are with `out`, or sending stopped. */
    const heldAtMost = async (limit: number) => {
      while (held > limit && !stopped())
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
    };
    let buffer: Buffer | undefined;
    const send = (full: Buffer, length: number) => {
      held++;
      out.write(full.subarray(0, length), () => {
        held--;
        give(full);
        wake?.();
      });
    };
    try {
      const pooled = this.#pooled;
      const pieces = this.#pieces;
      if (!pooled || !pieces) throw new Error("zstd stream used after its end");
      let piece: Uint8Array = EMPTY;
      let sourceDone = false;
      let inputThisTurn = 0;
      buffer = take();
      let fill = 0;
      for (;;) {
        if (stopped()) return;
        if (piece.length === 0 && !sourceDone) {
          if (inputThisTurn >= INPUT_PER_TURN) {
            // Let the event loop run (see INPUT_PER_TURN); the socket's callbacks may never make us wait.
            inputThisTurn = 0;
            await new Promise((resolve) => setImmediate(resolve));
            if (stopped()) return;
          }
          const next = pieces.next();
          if (next.done) sourceDone = true;
          else {
            piece = next.value;
            inputThisTurn += piece.length;
          }
        }
        const directive = sourceDone ? zstd.EndDirective.end : zstd.EndDirective.continue;
        const [ret, produced, consumed] = pooled.cctx.compressStream2(
          buffer.subarray(fill),
          piece,
          directive,
        );
        fill += produced;
        piece = piece.subarray(consumed);
        const frameDone = sourceDone && ret === 0;
        if (fill === buffer.length || (frameDone && fill > 0)) {
          send(buffer, fill);
          buffer = undefined;
          await heldAtMost(SEND_IN_FLIGHT - 1);
          if (stopped()) return;
          buffer = take();
          fill = 0;
        }
        if (frameDone) break;
      }
      // The frame is complete: the context is clean for the next stream, and the source is spent.
      this.#pooled = undefined;
      this.#release(pooled);
      this.#letGoOfSource();
      await heldAtMost(0);
      if (stopped()) return;
      this.#sent = true;
      out.end();
    } catch (error) {
      this.destroy(error as Error);
      throw error;
    } finally {
      if (buffer) give(buffer);
      out.off("close", onClose);
      this.off("close", onClose);
      // Stopped before the end: the context (mid-frame) is dropped and the source closed, as by a destroy.
      if (!this.#sent && !this.destroyed) this.destroy();
    }
  }

  override _read(): void {
    if (this.#turnPending) return;
    this.#stop = false;
    try {
      while (!this.#stop) {
        const pieces = this.#pieces;
        if (!pieces) return;
        if (this.#inputThisTurn >= INPUT_PER_TURN) {
          // Carry on after the event loop's next turn; Readable calls _read again only after a push.
          this.#turnPending = true;
          setImmediate(() => {
            this.#turnPending = false;
            this.#inputThisTurn = 0;
            if (!this.destroyed) this._read();
          });
          return;
        }
        const next = pieces.next();
        if (this.destroyed) return;
        if (next.done) {
          this.#finish();
          return;
        }
        this.#inputThisTurn += next.value.length;
        // The whole piece goes into zstd's buffers; what it produced so far goes out now.
        this.#compress(next.value, zstd.EndDirective.continue);
      }
    } catch (error) {
      this.destroy(error as Error);
    }
  }

  /** Feeds all of `input` (and, for `end`, the rest of the frame) to zstd and pushes what it produced. */
  #compress(input: Uint8Array, end: Binding.EndDirective): void {
    compressInto(
      this.#pooled,
      input,
      end,
      (chunk) => {
        if (!this.push(chunk)) this.#stop = true;
      },
      () => this.destroyed,
    );
  }

  #finish(): void {
    this.#compress(EMPTY, zstd.EndDirective.end);
    if (this.destroyed) return;
    // The frame is complete: the context is clean for the next stream, and the source is spent.
    const pooled = this.#pooled!;
    this.#pooled = undefined;
    this.#release(pooled);
    this.#letGoOfSource();
    this.push(null);
  }

  #letGoOfSource(): void {
    const pieces = this.#pieces;
    this.#pieces = undefined;
    const releaseScratch = this.#releaseScratch;
    this.#releaseScratch = undefined;
    try {
      pieces?.return?.();
    } finally {
      // Nothing refers to the scratch any more: pushed chunks are copies, and the source is closed.
      releaseScratch?.();
    }
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    // Cut off mid-frame (or failed): the context is not reused; the garbage collector frees it.
    this.#pooled = undefined;
    try {
      this.#letGoOfSource();
    } catch (closeError) {
      done(error ?? (closeError as Error));
      return;
    }
    done(error);
  }
}
