// Receiving a NAR upload, the one place bytes enter storage. The body is read once: hashed and counted as
// received, decoded in its compression and fed to the NAR reader (nix/nar.ts), and written to storage — as
// sent, or compressed to zstd when it came uncompressed. The result says what was received, what was
// stored, and what the NAR is (NarHash, NarSize, listing). Any failure tears the whole pipeline down and
// storage keeps nothing at the key; callers record the key as a pending upload first.
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { CompressStream } from "zstd-napi";
import { formatHash, NixFormatError } from "../../nix/index.ts";
import { type Compression, decompressor } from "../compression.ts";
import type { Context } from "../context.ts";
import { ZstdNarDecoder } from "../decode-pool.ts";
import { AppError, badRequest } from "../errors.ts";
import { NarCheck, NarTooLong, type VerifiedNar } from "../nar-check.ts";
import { FeedTap, HashTap, pipeInto, TeeTap } from "../streams.ts";
import type { BodyBytesSeen } from "../young-garbage.ts";

// An uncompressed body is compressed by zstd's own threads (ZSTD_c_nbWorkers), off the event loop, so
// compression and the socket, NarReader and hashing on the main thread use both cores of a small machine.
// Jobs of 2 MiB keep zstd's buffers to a few MiB per upload (its default, 4 windows, is 8 MiB a job and
// ~50 MiB in all) at no cost in ratio at level 3.
const COMPRESSION_THREADS = 2;
const COMPRESSION_JOB_SIZE = 2 * 1024 * 1024;

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
  /** The body's declared length (Content-Length), when the client gave one; never checked here. */
  bodySize?: number;
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
  // Counts, parses and hashes the decoded NAR on this thread; a zstd body is checked by its decoder instead
  // (on a worker, or here), so it needs none.
  const check = input.compression === "zstd" ? undefined : new NarCheck(input.narSizeLimit);
  const feed = (into: NarCheck) => new FeedTap((chunk) => into.update(chunk));
  const seen = ctx.bodyBytesSeen;
  // What is stored is about as long as the body (a compressed body is stored as sent) or at most about the
  // NAR (zstd of a plain one): either size lets S3 pick parts big enough for NARs past 10,000 default parts.
  const known = [input.narSizeLimit, input.bodySize].filter((n): n is number => n !== undefined);
  const sizeHint = known.length > 0 ? Math.ceil(Math.max(...known) * 1.01) + 65_536 : undefined;
  const store = (output: Readable) =>
    ctx.storage.put(input.storageKey, output, sizeHint === undefined ? {} : { sizeHint });
  // An uncompressed body is the NAR itself: the check's NarHash is its FileHash, so it is hashed once.
  const receivedTap = input.compression === "none" ? undefined : new BodyTap(seen);
  const storedTap = receivedTap ?? new HashTap();
  let nar: VerifiedNar;
  try {
    if (input.compression === "none") {
      const compress = new CompressStream({
        compressionLevel: ctx.settings.zstdLevel,
        nbWorkers: COMPRESSION_THREADS,
        jobSize: COMPRESSION_JOB_SIZE,
      });
      // The body is the NAR: checked as it comes, and counted for the young-garbage collector.
      const taken = new FeedTap((chunk) => {
        check!.update(chunk);
        seen?.(chunk.length);
      });
      await pipeInto(store, input.body, taken, compress, storedTap);
      nar = check!.finish();
    } else if (input.compression === "zstd") {
      // Stored as sent; a copy goes to a decoder that checks the NAR as it decodes it. zstd (what
      // `nixstash push` sends) decodes on a worker thread when one is idle and the NAR is not small
      // (decode-pool.ts), so decoding and checking use a second core, or else here.
      const decoder =
        ctx.decoders?.acquire({ narSizeLimit: input.narSizeLimit }) ?? new ZstdNarDecoder(input.narSizeLimit);
      await pipeInto(store, input.body, storedTap, new TeeTap(decoder));
      nar = decoder.verified();
    } else {
      const decode = decompressor(input.compression);
      const verifying = pipeline(decode, feed(check!), async (source: AsyncIterable<Buffer>) => {
        for await (const _ of source);
      });
      // The stored stream ends only after verification has: a decoder may fail after its last input.
      await Promise.all([pipeInto(store, input.body, storedTap, new TeeTap(decode, verifying)), verifying]);
      nar = check!.finish();
    }
  } catch (error) {
    throw asUploadError(error, input);
  } finally {
    ctx.metrics?.ingestReceivedBytes.inc(undefined, receivedTap?.size ?? check?.size ?? 0);
  }
  const received: FileFacts = receivedTap
    ? {
        compression: input.compression,
        fileHash: formatHash(receivedTap.digest()),
        fileSize: receivedTap.size,
      }
    : { compression: "none", fileHash: nar.narHash, fileSize: nar.narSize };
  return {
    received,
    stored:
      storedTap === receivedTap
        ? received
        : { compression: "zstd", fileHash: formatHash(storedTap.digest()), fileSize: storedTap.size },
    narHash: nar.narHash,
    narSize: nar.narSize,
    listing: nar.listing,
  };
}

function asUploadError(error: unknown, input: ReceiveInput): Error {
  if (error instanceof AppError) return error;
  if (error instanceof NarTooLong)
    return new AppError(
      "size_mismatch",
      `NAR of ${input.what} is larger than the claimed NarSize ${input.narSizeLimit}`,
    );
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

/** The HashTap of a compressed body, the first stage it passes: also tells `seen` the bytes taken in. */
class BodyTap extends HashTap {
  readonly #seen: BodyBytesSeen | undefined;
  constructor(seen: BodyBytesSeen | undefined) {
    super();
    this.#seen = seen;
  }
  protected override see(chunk: Buffer): void {
    super.see(chunk);
    this.#seen?.(chunk.length);
  }
}
