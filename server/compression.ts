// The compressions Nix writes NARs in (narinfo `Compression:`, `?compression=` on a store URL), their file
// extensions, and streaming decoders for each. The server verifies every upload by decoding it; it stores the
// client's bytes as sent, except uncompressed uploads, which it stores as zstd.
import { Duplex, Transform, type TransformCallback } from "node:stream";
import { createBrotliDecompress, createGunzip } from "node:zlib";
import lzma from "lzma-native";
import unbzip2Stream from "unbzip2-stream";
import { decodeNix32 } from "../nix/index.ts";
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

export function decompressor(compression: Exclude<Compression, "none">): Duplex {
  switch (compression) {
    case "zstd":
      return zstdDecoder();
    case "xz":
      return lzma.createDecompressor({ memlimit: DECODER_MEMORY });
    case "bzip2":
      return new Bunzip2();
    case "br":
      return createBrotliDecompress();
    case "gzip":
      return createGunzip();
  }
}

/**
 * zstd decoding one block (ZSTD_DStreamOutSize, 128 KiB) at a time, each handed on only when the consumer
 * asks for more. zstd-napi's DecompressStream pushes all the output of an input chunk at once, ignoring
 * backpressure: zeros compress about 30,000:1, so one 256 KiB chunk of a hostile body could have become
 * gigabytes in memory before the NarSize limit downstream saw its first byte. The loop and the error for
 * a body that ends inside a frame are DecompressStream's.
 */
function zstdDecoder(): Duplex {
  return Duplex.from(async function* (source: AsyncIterable<Buffer>) {
    const dctx = new zstd.DCtx();
    const blockSize = zstd.dStreamOutSize();
    let inFrame = false;
    for await (const chunk of source) {
      let rest: Uint8Array = chunk;
      for (;;) {
        const block = Buffer.allocUnsafe(blockSize);
        const [ret, produced, consumed] = dctx.decompressStream(block, rest);
        rest = rest.subarray(consumed);
        if (produced > 0) yield block.subarray(0, produced);
        if (rest.length === 0 && (produced < blockSize || ret === 0)) {
          inFrame = ret !== 0;
          break;
        }
      }
    }
    if (inFrame) throw new Error("Stream ended in middle of compressed data frame");
  });
}

/**
 * unbzip2-stream is an old-style "through" stream that node:stream's pipeline cannot track (it reports a
 * premature close); this wraps it in a real Transform and names its errors.
 */
class Bunzip2 extends Transform {
  readonly #inner = unbzip2Stream();
  constructor() {
    super();
    this.#inner.on("data", (data: Buffer) => this.push(data));
    this.#inner.on("error", (error: Error) => this.destroy(bzip2Error(error)));
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      this.#inner.write(chunk);
      done();
    } catch (error) {
      done(bzip2Error(error as Error));
    }
  }
  override _flush(done: TransformCallback): void {
    this.#inner.once("end", () => done());
    try {
      this.#inner.end();
    } catch (error) {
      done(bzip2Error(error as Error));
    }
  }
}

function bzip2Error(cause: Error): Error {
  return Object.assign(new Error(`corrupt or truncated bzip2 data (${cause.message})`, { cause }), {
    code: "BZIP2_ERROR",
  });
}
