// The native push API of a nixstash server, as the builder side speaks it: the cache's description (public
// and upstream keys), the batch "which are missing" query and streaming uploads (NAR body through zstd, path
// info in a header). Talks only HTTP.
import { Readable } from "node:stream";
import { CompressStream } from "zstd-napi";

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

/** fetch's "fetch failed" hides the useful part (ECONNREFUSED, a DNS error) in its cause. */
function describeCause(error: Error): string {
  const cause = error.cause as { message?: string; code?: string } | undefined;
  return cause?.message || cause?.code || error.message;
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

  async function call(url: string, init: RequestInit & { duplex?: "half" }): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (error) {
      if (init.signal?.aborted) throw new PushError(0, "aborted", "request aborted");
      throw new PushError(
        0,
        "unreachable",
        `cannot reach ${options.server}: ${describeCause(error as Error)}`,
      );
    }
    if (res.ok) return res;
    const text = await res.text();
    let body: { error?: string; message?: string } = {};
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text.trim() };
    }
    throw new PushError(res.status, body.error ?? "http_error", body.message ?? `HTTP ${res.status}`);
  }

  return {
    /** The cache's description: its public keys (for nix.conf) and the upstream keys it accepts as proof. */
    async describe(): Promise<CacheDescription> {
      const res = await call(base, { headers: auth });
      return (await res.json()) as CacheDescription;
    },

    /** The given paths (as given) that the cache lacks. */
    async missing(paths: readonly string[]): Promise<string[]> {
      const res = await call(`${base}/missing`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ paths }),
      });
      return ((await res.json()) as { missing: string[] }).missing;
    },

    /** Streams one path's NAR (compressed with zstd on the way) with its path info. */
    async upload(
      info: PushPathInfo,
      nar: Readable,
      opts: { zstdLevel?: number; signal?: AbortSignal } = {},
    ): Promise<UploadResult> {
      const hash = info.storePath.slice(
        info.storePath.lastIndexOf("/") + 1,
        info.storePath.lastIndexOf("/") + 33,
      );
      const body = nar.pipe(new CompressStream({ compressionLevel: opts.zstdLevel ?? 3 }));
      nar.on("error", (error) => body.destroy(error));
      const res = await call(`${base}/paths/${hash}`, {
        method: "PUT",
        headers: {
          ...auth,
          "content-type": "application/x-nix-nar",
          "content-encoding": "zstd",
          "x-nixstash-path-info": JSON.stringify(info),
        },
        body: Readable.toWeb(body) as ReadableStream,
        duplex: "half",
        signal: opts.signal ?? null,
      });
      return (await res.json()) as UploadResult;
    },
  };
}

export type Client = ReturnType<typeof createClient>;
