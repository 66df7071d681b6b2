// The compressions Nix writes NARs in (narinfo `Compression:`, `?compression=` on a store URL), their file
// extensions, and streaming decoders for each. The server verifies every upload by decoding it; it stores the
// client's bytes as sent, except uncompressed uploads, which it stores as zstd. Every decoder makes output only
// as its consumer reads (node:zlib's do; zstd, xz and bzip2 are driven so here): a body of extreme ratio must
// reach the NarSize limit downstream before it can fill memory.
import { Duplex, type Transform } from "node:stream";
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

export function decompressor(compression: Exclude<Compression, "none">): Duplex {
  switch (compression) {
    case "zstd":
      return zstdDecoder();
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
