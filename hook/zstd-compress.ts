// zstd compression of uploads on contexts reused from one upload to the next.
//
// zstd-napi's CompressStream makes a compression context per stream and reports its memory to V8 as external
// memory (a few MiB at level 3, tens of MiB with worker threads), given back only when the stream is garbage
// collected. A push of a few hundred paths therefore had V8 run a full collection every few paths to keep up
// (a CPU profile of `nixstash push` shows it: `npm run bench -- --only 6 --profile`). Here a context returns
// to its pool when its frame has ended, which leaves it clean for the next stream with its parameters kept;
// a stream cut off or failed mid-frame drops its context instead. The compression loop is CompressStream's,
// on the same binding.
import { createRequire } from "node:module";
import { Transform, type TransformCallback } from "node:stream";
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

export interface CompressorPool {
  /** A Transform that compresses what goes through it into one zstd frame. */
  stream(settings: CompressionSettings): Transform;
  /** Contexts waiting for reuse (for tests). */
  readonly idle: number;
}

/** Idle contexts kept per setting: more than the uploads a push runs at once is memory for nothing. */
const KEEP_IDLE = 8;
const EMPTY = new Uint8Array(0);

export function createCompressorPool(): CompressorPool {
  const idle = new Map<string, CCtx[]>();
  return {
    stream(settings) {
      const key = `${settings.level}/${settings.threads}/${settings.jobSize ?? 0}`;
      const cctx = idle.get(key)?.pop() ?? newContext(settings);
      return new PooledCompressStream(cctx, (done) => {
        const list = idle.get(key) ?? [];
        if (list.length < KEEP_IDLE) list.push(done);
        idle.set(key, list);
      });
    },
    get idle() {
      let n = 0;
      for (const list of idle.values()) n += list.length;
      return n;
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

class PooledCompressStream extends Transform {
  #cctx: CCtx | undefined;
  readonly #release: (cctx: CCtx) => void;
  readonly #outSize = zstd.cStreamOutSize();
  #out: Buffer;

  constructor(cctx: CCtx, release: (cctx: CCtx) => void) {
    super();
    this.#cctx = cctx;
    this.#release = release;
    this.#out = Buffer.allocUnsafe(this.#outSize);
  }

  #compress(input: Uint8Array, end: Binding.EndDirective): void {
    const cctx = this.#cctx;
    if (!cctx) throw new Error("zstd stream used after its end");
    let rest = input;
    for (;;) {
      const [ret, produced, consumed] = cctx.compressStream2(this.#out, rest, end);
      if (produced > 0) {
        this.push(this.#out.subarray(0, produced));
        this.#out = Buffer.allocUnsafe(this.#outSize);
      }
      rest = rest.subarray(consumed);
      if (rest.length === 0 && (end === zstd.EndDirective.continue || ret === 0)) return;
    }
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
    const cctx = this.#cctx!;
    this.#cctx = undefined;
    this.#release(cctx);
    done();
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    // Cut off mid-frame (or failed): the context is not reused; the garbage collector frees it.
    this.#cctx = undefined;
    done(error);
  }
}
