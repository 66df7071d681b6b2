// HTTP plumbing shared by the route files: request bodies as Node streams, byte ranges, the caller.
import { PassThrough, Readable } from "node:stream";
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import type { HttpBindings } from "@hono/node-server";
import type { Context as HonoContext } from "hono";
import type { z } from "zod";
import { decompress as zstdDecompress } from "zstd-napi";
import type { Context } from "../context.ts";
import { AppError, badRequest } from "../errors.ts";
import { FileBody } from "../file-body.ts";
import type { ByteRange } from "../storage/storage.ts";
import { STAGE_BUFFER } from "../streams.ts";
import { type Caller, identify } from "../verbs/auth.ts";

export type Env = {
  Bindings: Partial<HttpBindings>;
  /**
   * requestId and ctx: set first thing by the request middleware (request-log.ts); ctx is the server's
   * context with a logger that puts the request id on every line, the one handlers pass to verbs.
   */
  Variables: { caller: Caller; requestId: string; ctx: Context };
};
export type C = HonoContext<Env>;

/**
 * The request body as a Node stream. Under @hono/node-server it is fed from the socket through a PassThrough
 * the verb may destroy on a bad upload without killing the connection: the response still reaches the
 * client, and Node discards the unread rest. A client that hangs up mid-body fails the stream.
 */
export function requestBody(c: C): Readable {
  const incoming = c.env?.incoming;
  if (incoming && !incoming.readableDidRead) {
    const body = new PassThrough({ highWaterMark: STAGE_BUFFER });
    incoming.pipe(body);
    incoming.on("close", () => {
      if (!incoming.complete) body.destroy(Object.assign(new Error("aborted"), { code: "ECONNRESET" }));
    });
    return body;
  }
  const body = c.req.raw.body;
  return body ? Readable.fromWeb(body as import("node:stream/web").ReadableStream) : Readable.from([]);
}

/**
 * The bytes of a body read whole before it was returned (local storage reads a small NAR at once), or
 * undefined for a body still to be streamed: such a body goes out in one write, with its head.
 */
export function wholeBody(body: Readable, size: number): Buffer | undefined {
  return body.readableLength > 0 && body.readableLength === size ? (body.read() as Buffer) : undefined;
}

/** The header @hono/node-server reads as "the handler already wrote the response itself". */
const ALREADY_SENT = "x-hono-already-sent";
/**
 * The platform Response, taken when this module loads, before @hono/node-server's serve() swaps in its own
 * lightweight class. The adapter writes a bodiless response of its class straight out (head and end) and
 * honours ALREADY_SENT only on platform Responses, as its own RESPONSE_ALREADY_SENT is.
 */
const PlatformResponse = globalThis.Response;

/**
 * Answers with a Node stream as the body. Under @hono/node-server the stream is piped straight into the
 * socket response: converting it to a web stream and back cost NAR downloads more than half their speed
 * (issue 7). Headers set earlier by middleware (x-request-id, connection) are kept; the Response returned
 * carries the status for the request log and metrics, not the headers (they are on the socket already).
 * A failure mid-body or a client hanging up ends both.
 */
export function sendStream(c: C, status: number, headers: Record<string, string>, body: Readable): Response {
  const outgoing = c.env?.outgoing;
  if (!outgoing) return c.body(Readable.toWeb(body) as ReadableStream, status as 200, headers);
  // Set one by one rather than passed to writeHead: only headers set this way can be read back, and the
  // request log reads Content-Length to count the bytes served.
  for (const [name, value] of c.body(null, status as 200, headers).headers) outgoing.setHeader(name, value);
  outgoing.statusCode = status;
  const whole = wholeBody(body, Number(headers["content-length"]));
  if (whole) {
    // One write, head and body in the same packet, and no pipe to set up.
    outgoing.end(whole);
    return new PlatformResponse(null, { status, headers: SENT });
  }
  if (body instanceof FileBody) {
    // A file of local storage: sent through a few reused buffers (file-body.ts says why).
    void body.sendTo(outgoing);
    return new PlatformResponse(null, { status, headers: SENT });
  }
  // pipe() rather than stream.pipeline(): Node 20's pipeline aborts an AbortController when it finishes,
  // and building that DOMException cost more than sending a small NAR. A failed read cuts the response (the
  // client sees a short body, the request log an aborted request); a client hanging up closes the file.
  body.once("error", () => outgoing.destroy());
  outgoing.once("close", () => {
    if (!body.readableEnded) body.destroy();
  });
  body.pipe(outgoing);
  return new PlatformResponse(null, { status, headers: SENT });
}

/** The headers are already on the wire; the adapter reads this one only (a platform Response copies it). */
const SENT = { [ALREADY_SENT]: "true" } as const;

export async function caller(ctx: Context, c: C): Promise<Caller> {
  const known = c.get("caller");
  if (known) return known;
  const found = await identify({ ctx, input: { authorization: c.req.header("authorization") } });
  c.set("caller", found);
  return found;
}

/** A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range; undefined for none; throws 416 when unsatisfiable. */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (!header) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return undefined; // multi-range or malformed: serve the whole object, as RFC 9110 allows
  const [, a, b] = match;
  let start: number;
  let end: number;
  if (a === "") {
    const suffix = Number(b);
    if (!b || suffix === 0) throw rangeNotSatisfiable(size);
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === "" ? size - 1 : Math.min(Number(b), size - 1);
  }
  if (start >= size || end < start) throw rangeNotSatisfiable(size);
  return { start, end };
}

function rangeNotSatisfiable(size: number): AppError {
  return new AppError("range_not_satisfiable", `range not satisfiable (object is ${size} bytes)`, { size });
}

/** The request's Content-Length, when it has a valid one. */
export function declaredLength(c: C): number | undefined {
  const length = Number(c.req.header("content-length") ?? Number.NaN);
  return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}

export async function readJson(c: C, limit = 16 * 1024 * 1024): Promise<unknown> {
  if ((declaredLength(c) ?? 0) > limit)
    throw new AppError("payload_too_large", `JSON body larger than ${limit} bytes`);
  const text = await c.req.text();
  if (text.length > limit) throw new AppError("payload_too_large", `JSON body larger than ${limit} bytes`);
  try {
    return JSON.parse(text);
  } catch {
    throw badRequest("body is not valid JSON");
  }
}

/**
 * A small text body (narinfo, listing, log, realisation, cache info), decoded from the Content-Encoding
 * newer Nix clients may use (gzip, br, zstd). Refused past `limit` bytes, before and after decoding.
 */
export async function readTextBody(c: C, limit: number): Promise<string> {
  if ((declaredLength(c) ?? 0) > limit)
    throw new AppError("payload_too_large", `body larger than ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of requestBody(c) as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new AppError("payload_too_large", `body larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks);
  const encoding = (c.req.header("content-encoding") ?? "identity").trim().toLowerCase();
  let decoded: Buffer;
  try {
    if (encoding === "identity" || encoding === "") decoded = raw;
    else if (encoding === "gzip" || encoding === "x-gzip")
      decoded = gunzipSync(raw, { maxOutputLength: limit });
    else if (encoding === "br") decoded = brotliDecompressSync(raw, { maxOutputLength: limit });
    else if (encoding === "zstd") decoded = zstdDecompress(raw);
    else throw new AppError("unsupported_media_type", `Content-Encoding ${encoding} is not supported`);
  } catch (error) {
    if (error instanceof AppError) throw error;
    throw badRequest(`body is not valid ${encoding}: ${(error as Error).message}`);
  }
  if (decoded.length > limit) throw new AppError("payload_too_large", `body larger than ${limit} bytes`);
  return decoded.toString("utf8");
}

/** Validates a request value with zod; the first problem becomes a 400 naming the field. */
export function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const where = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
  throw badRequest(`invalid ${what}${where}: ${issue?.message ?? "malformed"}`);
}
