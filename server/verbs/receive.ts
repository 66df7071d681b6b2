// Receiving a NAR upload, the one place bytes enter storage. The body is read once: hashed and counted as
// received, decoded in its compression and fed to the NAR reader (nix/nar.ts), and written to storage — as
// sent, or compressed to zstd when it came uncompressed. The result says what was received, what was
// stored, and what the NAR is (NarHash, NarSize, listing). Any failure tears the whole pipeline down and
// storage keeps nothing at the key; callers record the key as a pending upload first.
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { CompressStream } from "zstd-napi";
import { formatHash, formatListing, NarReader, NixFormatError } from "../../nix/index.ts";
import { type Compression, decompressor } from "../compression.ts";
import type { Context } from "../context.ts";
import { AppError, badRequest } from "../errors.ts";
import { FeedTap, HashTap, pipeInto, TeeTap } from "../streams.ts";

export interface FileFacts {
  compression: Compression;
  fileHash: string;
  fileSize: number;
}

export interface ReceivedNar {
  received: FileFacts;
  stored: FileFacts;
  narHash: string;
  narSize: number;
  listing: string;
}

export interface ReceiveInput {
  body: Readable;
  compression: Compression;
  storageKey: string;
  /** Fail as soon as the decoded NAR exceeds this many bytes (a claimed NarSize). */
  narSizeLimit?: number;
  /** Names the upload in error messages. */
  what: string;
}

export async function receiveNar({
  ctx,
  input,
}: {
  ctx: Context;
  input: ReceiveInput;
}): Promise<ReceivedNar> {
  const reader = new NarReader();
  const tooLong = () =>
    new AppError(
      "size_mismatch",
      `NAR of ${input.what} is larger than the claimed NarSize ${input.narSizeLimit}`,
    );
  const narTap = new HashTap(input.narSizeLimit, tooLong);
  const feed = new FeedTap((chunk) => reader.update(chunk));
  const receivedTap = new HashTap();
  const store = (output: Readable) => ctx.storage.put(input.storageKey, output);
  let storedTap = receivedTap;
  try {
    if (input.compression === "none") {
      storedTap = new HashTap();
      const compress = new CompressStream({ compressionLevel: ctx.settings.zstdLevel });
      await pipeInto(store, input.body, receivedTap, narTap, feed, compress, storedTap);
    } else {
      // Stored as sent; a decoded copy feeds the validator on the side.
      const decode = decompressor(input.compression);
      const verifying = pipeline(decode, narTap, feed, async (source: AsyncIterable<Buffer>) => {
        for await (const _ of source);
      });
      await Promise.all([pipeInto(store, input.body, receivedTap, new TeeTap(decode)), verifying]);
    }
  } catch (error) {
    throw asUploadError(error, input);
  } finally {
    ctx.metrics?.ingestReceivedBytes.inc(undefined, receivedTap.size);
  }
  let summary: ReturnType<NarReader["finish"]>;
  try {
    summary = reader.finish();
  } catch (error) {
    throw asUploadError(error, input);
  }
  const receivedHash = formatHash(receivedTap.digest());
  return {
    received: { compression: input.compression, fileHash: receivedHash, fileSize: receivedTap.size },
    stored:
      storedTap === receivedTap
        ? { compression: input.compression, fileHash: receivedHash, fileSize: receivedTap.size }
        : { compression: "zstd", fileHash: formatHash(storedTap.digest()), fileSize: storedTap.size },
    narHash: summary.narHash,
    narSize: summary.narSize,
    listing: formatListing(summary.listing),
  };
}

function asUploadError(error: unknown, input: ReceiveInput): Error {
  if (error instanceof AppError) return error;
  if (error instanceof NixFormatError)
    return new AppError("invalid_nar", `invalid NAR for ${input.what}: ${error.message}`);
  const { code: rawCode, message, name } = error as { code?: unknown; message?: string; name?: string };
  // Decoders report errors differently: zstd-napi and zlib with string codes, lzma-native with a number
  // code and an LZMA_* name.
  const code = typeof rawCode === "string" ? rawCode : name?.startsWith("LZMA") ? name : undefined;
  if (code === "ECONNRESET" || code === "ERR_STREAM_PREMATURE_CLOSE" || message === "aborted") {
    return badRequest(`upload of ${input.what} was cut off before the end of its body`);
  }
  if (input.compression !== "none" && isDecoderError(code, message)) {
    return badRequest(`body of ${input.what} is not valid ${input.compression}: ${message}`);
  }
  return error as Error;
}

function isDecoderError(code: string | undefined, message: string | undefined): boolean {
  if (
    code?.startsWith("ZSTD") ||
    code?.startsWith("Z_") ||
    code?.startsWith("LZMA") ||
    code === "BZIP2_ERROR"
  )
    return true;
  return /zstd|frame|corrupt|unknown header|format|bzip|bad magic|incorrect header|unexpected end|decompress|data error|LZMA/i.test(
    message ?? "",
  );
}
