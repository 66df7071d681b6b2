// The native push API of a nixstash server, as the builder side speaks it: the cache's description (public
// and upstream keys), the batch "which are missing" query and streaming uploads (NAR body through zstd, path
// info in a header). Talks only HTTP.
import http from "node:http";
import https from "node:https";
import type { Readable } from "node:stream";
import { type PublicKey, parsePublicKey } from "../nix/index.ts";
import { type CompressedBody, createCompressorPool, type PieceSource } from "./zstd-compress.ts";

// A big NAR is compressed by zstd's own threads (ZSTD_c_nbWorkers), so the event loop only reads files and
// writes the socket (bench measure 6 went from 2.14x to 1.54x file:// with this and zstd-compress.ts).
// Small NARs stay on the event loop, where a thread pool per upload would cost more than it saves. Jobs of
// 2 MiB keep zstd's buffers to a few MiB, at no cost in ratio at level 3 (as the server does).
const THREADED_FROM = 4 * 1024 * 1024;
const COMPRESSION_THREADS = 2;
const JOB_SIZE = 2 * 1024 * 1024;

export interface PushPathInfo {
  storePath: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string | undefined;
  system?: string | undefined;
  ca?: string | undefined;
  upstream?: unknown[] | undefined;
}

export interface UploadResult {
  storePath: string;
  status: "stored" | "deduplicated" | "already-present";
  narHash: string;
  narSize: number;
  fileHash: string;
  fileSize: number;
}

/** One path of a batch upload: the NAR's source (hook/nar-dump.ts) and its path info. */
export interface BatchItem {
  info: PushPathInfo;
  nar: PieceSource;
}

/** Per item of a batch: the server's result, its refusal of that path, or the item's NAR source's error. */
export type BatchItemResult = { result: UploadResult } | { refused: PushError } | { sourceError: Error };

/** What GET /api/v1/caches/{name} answers. */
export interface CacheDescription {
  name: string;
  url: string;
  publicKey: string;
  publicKeys: string[];
  public: boolean;
  priority: number;
  storeDir: string;
  upstreamKeys: string[];
}

export class PushError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
  /** Whether trying again later may help (server down or overloaded), as opposed to a refusal. */
  get retryable(): boolean {
    return this.status === 0 || this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

export interface ClientOptions {
  /** e.g. http://127.0.0.1:8080 */
  server: string;
  cache: string;
  token: string;
}

export function createClient(options: ClientOptions) {
  const base = `${options.server.replace(/\/+$/, "")}/api/v1/caches/${encodeURIComponent(options.cache)}`;
  const auth = { authorization: `Bearer ${options.token}` };
  // Connections kept for the next upload; idle ones do not keep the process alive (Node unrefs them).
  const httpAgent = new http.Agent({ keepAlive: true });
  const httpsAgent = new https.Agent({ keepAlive: true });
  // Compression contexts reused across uploads (zstd-compress.ts).
  const compressors = createCompressorPool();

  /** A JSON request: the parsed answer of a 2xx, else a PushError. */
  async function call<T>(method: "GET" | "POST", url: string, body?: unknown): Promise<T> {
    const { status, text } = await send(
      method,
      url,
      body === undefined ? auth : { ...auth, "content-type": "application/json" },
      body === undefined ? undefined : Buffer.from(JSON.stringify(body)),
      undefined,
    );
    if (status >= 200 && status < 300) return JSON.parse(text) as T;
    throw errorOf(status, text);
  }

  /** The cache's description: its public keys (for nix.conf) and the upstream keys it accepts as proof. */
  const describe = () => call<CacheDescription>("GET", base);

  return {
    describe,

    /**
     * The upstream keys the cache accepts as proof (its description), parsed; a key that does not parse is
     * left out and told to `ignored`.
     */
    async upstreamKeys(ignored?: (text: string, error: unknown) => void): Promise<PublicKey[]> {
      const keys: PublicKey[] = [];
      for (const text of (await describe()).upstreamKeys) {
        try {
          keys.push(parsePublicKey(text));
        } catch (error) {
          ignored?.(text, error);
        }
      }
      return keys;
    },

    /** The given paths (as given) that the cache lacks. */
    async missing(paths: readonly string[]): Promise<string[]> {
      return (await call<{ missing: string[] }>("POST", `${base}/missing`, { paths })).missing;
    },

    /**
     * Streams one path's NAR (compressed with zstd on the way) with its path info. Through node:http rather
     * than fetch: fetch's web streams cost as much CPU again as the zstd compression itself (measured on
     * the benchmark closure: 9.3 s against 6.0 s of client CPU for 530 MiB of NAR). The NAR is best given
     * as a source (hook/nar-dump.ts's narSource): it is then compressed as it is read, with no stream of
     * NAR chunks in between (zstd-compress.ts); a Readable of it works too.
     */
    async upload(
      info: PushPathInfo,
      nar: Readable | PieceSource,
      opts: { zstdLevel?: number; signal?: AbortSignal } = {},
    ): Promise<UploadResult> {
      const hash = info.storePath.slice(
        info.storePath.lastIndexOf("/") + 1,
        info.storePath.lastIndexOf("/") + 33,
      );
      const threaded = info.narSize >= THREADED_FROM;
      const settings = {
        level: opts.zstdLevel ?? 3,
        threads: threaded ? COMPRESSION_THREADS : 0,
        ...(threaded ? { jobSize: JOB_SIZE } : {}),
      };
      let body: Readable | CompressedBody;
      if (typeof nar === "function") {
        body = compressors.compress(nar, settings);
      } else {
        body = nar.pipe(compressors.stream(settings));
        nar.on("error", (error) => body.destroy(error));
      }
      const { status, text } = await send(
        "PUT",
        `${base}/paths/${hash}`,
        {
          ...auth,
          "content-type": "application/x-nix-nar",
          "content-encoding": "zstd",
          "x-nixstash-path-info": JSON.stringify(info),
        },
        body,
        opts.signal,
      );
      if (status >= 200 && status < 300) return JSON.parse(text) as UploadResult;
      throw errorOf(status, text);
    },

    uploadBatch,
  };

  /**
   * Many small paths in one request (POST /paths, application/x-nixstash-batch): each NAR compressed whole,
   * its path info on a JSON line before it. Throws a PushError when the batch as a whole was refused, with
   * code "batch_unsupported" from a server that predates batches; otherwise a result per item, in order.
   */
  async function uploadBatch(
    items: readonly BatchItem[],
    opts: { zstdLevel?: number; signal?: AbortSignal } = {},
  ): Promise<BatchItemResult[]> {
    const settings = { level: opts.zstdLevel ?? 3, threads: 0 };
    const results: (BatchItemResult | undefined)[] = items.map(() => undefined);
    const parts: Buffer[] = [];
    const sent: number[] = [];
    for (const [i, item] of items.entries()) {
      let body: Buffer;
      try {
        body = compressors.compressWhole(item.nar, settings);
      } catch (error) {
        results[i] = { sourceError: error as Error };
        continue;
      }
      parts.push(
        Buffer.from(`${JSON.stringify({ ...item.info, encoding: "zstd", bodySize: body.length })}\n`),
      );
      parts.push(body);
      sent.push(i);
    }
    if (sent.length > 0) {
      const { status, text } = await send(
        "POST",
        `${base}/paths`,
        { ...auth, "content-type": "application/x-nixstash-batch" },
        Buffer.concat(parts),
        opts.signal,
      );
      if (status < 200 || status >= 300) {
        const error = errorOf(status, text);
        // A server from before batches has no such route (404 "no route …", or 405).
        if (status === 405 || (status === 404 && /^no route/.test(error.message)))
          throw new PushError(status, "batch_unsupported", error.message);
        throw error;
      }
      const answer = JSON.parse(text) as {
        results: (UploadResult | { error: string; status: number; message: string })[];
      };
      if (answer.results?.length !== sent.length)
        throw new PushError(
          502,
          "bad_answer",
          `batch of ${sent.length} answered with ${answer.results?.length} results`,
        );
      for (const [k, i] of sent.entries()) {
        const one = answer.results[k]!;
        results[i] =
          "error" in one ? { refused: new PushError(one.status, one.error, one.message) } : { result: one };
      }
    }
    return results.map((r) => r!);
  }

  /**
   * One request through node:http (fetch, for the JSON calls too, cost each push ~50 ms of loading undici
   * before its first request); resolves to the answer (any status), rejects with a PushError when there is
   * none. A compressed body goes out through its sendTo (no copy of what zstd writes), a stream through
   * pipe, bytes at once.
   */
  function send(
    method: "GET" | "POST" | "PUT",
    url: string,
    headers: Record<string, string>,
    body: Readable | CompressedBody | Buffer | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ status: number; text: string }> {
    const stream = body === undefined || Buffer.isBuffer(body) ? undefined : body;
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (error: Error) => {
        if (settled) return;
        settled = true;
        stream?.destroy();
        request.destroy();
        if (signal?.aborted) reject(new PushError(0, "aborted", "request aborted"));
        else reject(new PushError(0, "unreachable", `cannot reach ${options.server}: ${error.message}`));
      };
      const target = new URL(url);
      const request = (target.protocol === "https:" ? https : http).request(target, {
        method,
        headers,
        agent: target.protocol === "https:" ? httpsAgent : httpAgent,
        ...(signal ? { signal } : {}),
      });
      // Like fetch's defaults: a server silent for 5 minutes is taken for gone.
      request.setTimeout(300_000, () => fail(new Error("no answer for 300 s")));
      request.on("error", fail);
      const direct = stream && "sendTo" in stream ? (stream as CompressedBody) : undefined;
      request.on("response", (res) => {
        // An early answer (a refusal before the whole body went out) ends the upload.
        if (stream && (res.statusCode === undefined || res.statusCode >= 300)) {
          if (direct) {
            if (!direct.sent) direct.destroy();
          } else stream.unpipe(request);
        }
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", fail);
        res.on("end", () => {
          if (settled) return;
          settled = true;
          // A body still going out (an early refusal) is cut, and its connection is not reused.
          if (stream && !(direct ? direct.sent : stream.readableEnded)) {
            stream.destroy();
            request.destroy();
          }
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") });
        });
      });
      if (!stream) request.end(body);
      else {
        stream.on("error", fail);
        if (direct) direct.sendTo(request).catch(fail);
        else stream.pipe(request);
      }
    });
  }
}

function errorOf(status: number, text: string): PushError {
  let body: { error?: string; message?: string } = {};
  try {
    body = JSON.parse(text);
  } catch {
    body = { message: text.trim() };
  }
  return new PushError(status, body.error ?? "http_error", body.message ?? `HTTP ${status}`);
}

export type Client = ReturnType<typeof createClient>;
