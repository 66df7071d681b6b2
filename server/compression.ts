// The compressions Nix writes NARs in (narinfo `Compression:`, `?compression=` on a store URL), their file
// extensions, and streaming decoders for each. The server verifies every upload by decoding it; it stores the
// client's bytes as sent, except uncompressed uploads, which it stores as zstd. Every decoder makes output only
// as its consumer takes it (node:zlib's do; xz and bzip2 are driven so here; zstd hands each block to a
// synchronous sink before it decodes the next): a body of extreme ratio must reach the NarSize limit
// downstream before it can fill memory.
import { Duplex, type Transform, Writable } from "node:stream";
import { createBrotliDecompress, createGunzip } from "node:zlib";
import lzma from "lzma-native";
import { decodeNix32 } from "../nix/index.ts";
import { bunzip2 } from "./bzip2.ts";
import { zstdBinding as zstd } from "./zstd-binding.ts";

export const COMPRESSIONS = ["none", "zstd", "xz", "bzip2", "br", "gzip"] as const;
export type Compression = (typeof COMPRESSIONS)[number];

export const EXTENSION: Record<Compression, string> = {
  none: "",
  zstd: ".zst",
  xz: ".xz",
  bzip2: ".bz2",
  br: ".br",
  gzip: ".gz",
};

export function isCompression(name: string): name is Compression {
  return (COMPRESSIONS as readonly string[]).includes(name);
}

/** The compression a NAR file name such as `x.nar.xz` implies, or undefined for an unknown extension. */
export function compressionOfFile(file: string): Compression | undefined {
  const match = /\.nar(\.[a-z0-9]+)?$/.exec(file);
  if (!match) return undefined;
  const ext = match[1] ?? "";
  return COMPRESSIONS.find((c) => EXTENSION[c] === ext);
}

/** The file name of a NAR in a narinfo URL: `<nix32 FileHash>.nar<extension>`. */
export function narFileName(fileHash: string, compression: string): string {
  const extension = isCompression(compression) ? EXTENSION[compression] : "";
  return `${fileHash.slice("sha256:".length)}.nar${extension}`;
}

/** Reads a NAR file name back: its FileHash and compression, or what is wrong with it. */
export function parseNarFileName(
  file: string,
): { fileHash: string; compression: Compression } | { problem: string } {
  const match = /^([0-9a-df-np-sv-z]{52})\.nar(\.[a-z0-9]+)?$/.exec(file);
  const compression = compressionOfFile(file);
  if (!match || !compression) {
    return {
      problem: `${file} is not a NAR file name nixstash accepts (<nix32 FileHash>.nar[.zst|.xz|.bz2|.br|.gz])`,
    };
  }
  try {
    decodeNix32(match[1]!);
  } catch (error) {
    return { problem: `${file}: ${(error as Error).message}` };
  }
  return { fileHash: `sha256:${match[1]}`, compression };
}

/** Memory a decoder may use: bounds what a hostile upload (say, a huge xz dictionary) can make us allocate. */
const DECODER_MEMORY = 512 * 1024 * 1024;

/** A streaming decoder for the compressions other than zstd (which ZstdSinkDecoder decodes). */
export function decompressor(compression: Exclude<Compression, "none" | "zstd">): Duplex {
  switch (compression) {
    case "xz":
      return xzDecoder();
    case "bzip2":
      return bunzip2();
    case "br":
      return createBrotliDecompress();
    case "gzip":
      return createGunzip();
  }
}

/** Decoded bytes a ZstdSinkDecoder makes in one turn of the event loop before it lets other work run. */
const SINK_DECODE_TURN = 8 * 1024 * 1024;
/** What a ZstdSinkDecoder takes in before it pushes back: about the size of one socket read or two. */
const STAGE_INPUT = 64 * 1024;

type DCtx = InstanceType<typeof zstd.DCtx>;

/** A decoder context and the block it decodes into, kept together for the next body. */
export interface ReusableDecoding {
  dctx: DCtx;
  block: Buffer;
}

/**
 * zstd decoding on this thread, each decoded block handed to `sink` synchronously, into one block reused for
 * the whole body: the shape of the worker's decoder (decode-pool.ts), for uploads that find no worker idle.
 * Not zstd-napi's DecompressStream, which pushes all the output of an input chunk at once whatever the
 * consumer's backpressure (zeros compress ~30,000:1: one 256 KiB chunk of a hostile body could become
 * gigabytes); its loop and its error for a body that ends inside a frame are kept.
 * The sink (count, parse, hash) is done with a block when it returns, so an upload allocates nothing per
 * block, and memory stays one block however the body decodes. A body of extreme ratio is decoded at most
 * SINK_DECODE_TURN bytes per turn of the event loop (the sink's NarSize limit ends it). The context and
 * block may come from a pool: `release` gets them back, the context clean, after the body ended at a frame's
 * end; a failed body drops them.
 */
export class ZstdSinkDecoder extends Writable {
  readonly #sink: (block: Buffer) => void;
  #dctx: DCtx | undefined;
  readonly #block: Buffer;
  readonly #release: ((reused: ReusableDecoding) => void) | undefined;
  #inFrame = false;

  constructor(
    sink: (block: Buffer) => void,
    reuse?: ReusableDecoding & { release(reused: ReusableDecoding): void },
  ) {
    super({ highWaterMark: STAGE_INPUT });
    this.#sink = sink;
    this.#dctx = reuse?.dctx ?? new zstd.DCtx();
    this.#block = reuse?.block ?? Buffer.allocUnsafeSlow(zstd.dStreamOutSize());
    this.#release = reuse?.release;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    this.#decode(chunk, done);
  }

  #decode(input: Uint8Array, done: (error?: Error | null) => void): void {
    const dctx = this.#dctx;
    if (!dctx) {
      done(new Error("zstd decoder used after its end"));
      return;
    }
    const block = this.#block;
    let rest = input;
    let made = 0;
    try {
      for (;;) {
        const [ret, produced, consumed] = dctx.decompressStream(block, rest);
        rest = rest.subarray(consumed);
        if (produced > 0) this.#sink(block.subarray(0, produced));
        made += produced;
        if (rest.length === 0 && (produced < block.length || ret === 0)) {
          this.#inFrame = ret !== 0;
          break;
        }
        if (made >= SINK_DECODE_TURN) {
          setImmediate(() => this.#decode(rest, done));
          return;
        }
      }
    } catch (error) {
      done(error as Error);
      return;
    }
    done();
  }

  override _final(done: (error?: Error | null) => void): void {
    if (this.#inFrame) {
      done(new Error("Stream ended in middle of compressed data frame"));
      return;
    }
    const dctx = this.#dctx;
    this.#dctx = undefined;
    if (dctx) this.#release?.({ dctx, block: this.#block });
    done();
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    this.#dctx = undefined;
    done(error);
  }
}

/**
 * Input handed to liblzma per call. lzma-native decodes all of a call's input on its thread pool before
 * JS sees any of it, ignoring backpressure; LZMA2 reaches ~7,000:1 on zeros, so this bounds what one call
 * can make to ~30 MB. Smaller slices cost a thread-pool round trip per 4 KiB of body.
 */
const XZ_SLICE = 4 * 1024;

/**
 * xz decoding a slice of input at a time, the next slice fed only once the consumer has taken all the
 * output of the last. The decoder's readable side never pushes back (it would hold back the write callback
 * this waits for): what it holds is bounded by one slice's output instead.
 */
function xzDecoder(): Duplex {
  return Duplex.from(async function* (source: AsyncIterable<Buffer>) {
    const inner: Transform = lzma.createDecompressor({ memlimit: DECODER_MEMORY });
    const output: Buffer[] = [];
    inner.on("data", (chunk: Buffer) => output.push(chunk));
    // lzma-native reports a failure with an 'error' event and never calls back the write that caused it.
    const failed = new Promise<never>((_, reject) => inner.once("error", reject));
    failed.catch(() => {});
    try {
      for await (const chunk of source) {
        for (let at = 0; at < chunk.length; at += XZ_SLICE) {
          const slice = chunk.subarray(at, at + XZ_SLICE);
          await Promise.race([new Promise((resolve) => inner.write(slice, resolve)), failed]);
          yield* output.splice(0);
        }
      }
      await Promise.race([new Promise((resolve) => inner.once("end", resolve).end()), failed]);
      yield* output.splice(0);
    } finally {
      inner.destroy();
    }
  });
}
