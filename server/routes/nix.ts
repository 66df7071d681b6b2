// The binary cache protocol under /<cache>/…, as Nix substituters read it (see PROTOCOL.md). Routes only
// parse, authorise and call a verb; errors become one plain-text line Nix shows to the user.
import { performance } from "node:perf_hooks";
import { Readable } from "node:stream";
import { Hono } from "hono";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { FileBody } from "../file-body.ts";
import type { Lifecycle } from "../lifecycle.ts";
import { allows, authorize, type Caller, identify } from "../verbs/auth.ts";
import { findCache } from "../verbs/caches.ts";
import { checkCacheInfo, narKnown, putNarInfo, stageNarUpload } from "../verbs/nix-push.ts";
import {
  cacheInfoText,
  findNar,
  heldNar,
  listingText,
  narInfoText,
  openLog,
  openNar,
  realisationText,
  rememberedNarInfo,
} from "../verbs/serve.ts";
import { putLog, putRealisation } from "../verbs/uploads.ts";
import {
  type FastAnswer,
  type FastAnswerer,
  type FastRequest,
  type StreamedBody,
  streamedBody,
} from "./fast-lane.ts";
import {
  type C,
  caller,
  declaredLength,
  type Env,
  parseRange,
  readTextBody,
  requestBody,
  sendStream,
  wholeBody,
} from "./http.ts";
import { type RequestRecord, requestIdOf } from "./request-log.ts";

const HASH_FILE = /^([0-9a-df-np-sv-z]{32})\.(narinfo|ls)$/;
const NARINFO_TYPE = "text/x-nix-narinfo";
const CACHE_INFO_TYPE = "text/x-nix-cache-info";

/**
 * A narinfo (`hash` given) or the nix-cache-info of a cache the caller may read; undefined body: no such
 * path. Both lanes answer these: the Hono routes below, and the fast lane (nixFastReads).
 */
async function readHot(
  ctx: Context,
  input: { cacheName: string; hash: string | undefined; caller: () => Promise<Caller> },
): Promise<{ cache: CacheRow; body: string | undefined }> {
  const cache = await findCache({ ctx, input: { name: input.cacheName } });
  authorize(await input.caller(), cache, "pull");
  if (input.hash === undefined) return { cache, body: cacheInfoText(cache) };
  return { cache, body: await narInfoText({ ctx, input: { cache, hash: input.hash } }) };
}

export function nixRoutes() {
  const app = new Hono<Env>();

  async function readableCache(c: C): Promise<CacheRow> {
    const cache = await findCache({ ctx: c.var.ctx, input: { name: c.req.param("cache") ?? "" } });
    authorize(await caller(c.var.ctx, c), cache, "pull");
    return cache;
  }

  async function writableCache(c: C) {
    const cache = await findCache({ ctx: c.var.ctx, input: { name: c.req.param("cache") ?? "" } });
    const principal = authorize(await caller(c.var.ctx, c), cache, "push");
    return { cache, pushedBy: principal?.tokenId ?? null };
  }

  const text = (c: C, body: string | undefined, type: string) => {
    if (body === undefined) return c.text("not found\n", 404);
    const headers = { "content-type": type, "content-length": String(Buffer.byteLength(body)) };
    return c.req.method === "HEAD" ? c.body(null, 200, headers) : c.body(body, 200, headers);
  };

  const hot = (c: C, hash: string | undefined) =>
    readHot(c.var.ctx, { cacheName: c.req.param("cache") ?? "", hash, caller: () => caller(c.var.ctx, c) });

  app.get("/:cache/nix-cache-info", async (c) => text(c, (await hot(c, undefined)).body, CACHE_INFO_TYPE));

  app.get("/:cache/:file", async (c) => {
    const match = HASH_FILE.exec(c.req.param("file"));
    if (!match) return c.text("not found\n", 404);
    if (match[2] === "narinfo") return text(c, (await hot(c, match[1]!)).body, NARINFO_TYPE);
    const cache = await readableCache(c);
    return text(
      c,
      await listingText({ ctx: c.var.ctx, input: { cache, hash: match[1]! } }),
      "application/json",
    );
  });

  app.get("/:cache/nar/:file", async (c) => {
    const cache = await readableCache(c);
    if (c.req.method === "HEAD") {
      // A pusher's HEAD (before its PUT) also sees NARs staged in this cache, so Nix does not upload twice.
      const who = await caller(c.var.ctx, c);
      if (who.principal && allows(who.principal, cache.name, "push")) {
        const known = await narKnown({ ctx: c.var.ctx, input: { cache, file: c.req.param("file") } });
        if (!known) return c.text("not found\n", 404);
        return c.body(null, 200, {
          "content-type": "application/x-nix-nar",
          "content-length": String(known.size),
        });
      }
    }
    const nar = await findNar({ ctx: c.var.ctx, input: { cache, file: c.req.param("file") } });
    if (!nar) return c.text("not found\n", 404);
    const headers: Record<string, string> = { "content-type": NAR_TYPE, ...NAR_HEADERS };
    if (c.req.method === "HEAD") {
      return c.body(null, 200, { ...headers, "content-length": String(nar.fileSize) });
    }
    const range = parseRange(c.req.header("range"), nar.fileSize);
    const opened = await openNar({
      ctx: c.var.ctx,
      input: { nar, cacheId: cache.id, ...(range ? { range } : {}) },
    });
    if (opened.kind === "redirect") return c.redirect(opened.url, 302);
    headers["content-length"] = String(opened.size);
    if (opened.range)
      headers["content-range"] = `bytes ${opened.range.start}-${opened.range.end}/${nar.fileSize}`;
    return sendStream(c, opened.range ? 206 : 200, headers, opened.body);
  });

  app.get("/:cache/log/:drv", async (c) => {
    const cache = await readableCache(c);
    const log = await openLog({ ctx: c.var.ctx, input: { cache, drv: c.req.param("drv") } });
    if (!log) return c.text("not found\n", 404);
    const headers = { "content-type": "text/plain; charset=utf-8", "content-length": String(log.size) };
    if (c.req.method === "HEAD") {
      log.body.destroy();
      return c.body(null, 200, headers);
    }
    return sendStream(c, 200, headers, log.body);
  });

  // Realisations: `realisations/<drvHash>!<out>.doi` (clients up to 2.34), `build-trace-v2/<drv>/<out>.doi`.
  const REALISATION_ROUTES = ["/:cache/realisations/:id", "/:cache/build-trace-v2/:drv/:output"];
  const outputIdOf = (c: C): string | undefined => {
    const last = c.req.param("id") ?? c.req.param("output") ?? "";
    if (!last.endsWith(".doi")) return undefined;
    const drv = c.req.param("drv");
    const name = last.slice(0, -".doi".length);
    return drv ? `${drv}/${name}` : name;
  };
  for (const route of REALISATION_ROUTES) {
    app.get(route, async (c) => {
      const outputId = outputIdOf(c);
      if (!outputId) return c.text("not found\n", 404);
      const cache = await readableCache(c);
      return text(
        c,
        await realisationText({ ctx: c.var.ctx, input: { cache, outputId } }),
        "application/json",
      );
    });
  }

  // ---- writes, as `nix copy --to`, `nix store copy-log --to` and `nix store sign --store` make them
  const ok = (c: C) => c.body(null, 200);

  app.put("/:cache/nix-cache-info", async (c) => {
    const { cache } = await writableCache(c);
    checkCacheInfo(cache, await readTextBody(c, 64 * 1024));
    return ok(c);
  });

  app.put("/:cache/nar/:file", async (c) => {
    const { cache } = await writableCache(c);
    await stageNarUpload({
      ctx: c.var.ctx,
      input: { cache, file: c.req.param("file"), body: requestBody(c), bodySize: declaredLength(c) },
    });
    return ok(c);
  });

  app.put("/:cache/:file", async (c) => {
    const match = HASH_FILE.exec(c.req.param("file"));
    if (!match) return c.text("not found\n", 404);
    const { cache, pushedBy } = await writableCache(c);
    const text = await readTextBody(c, 16 * 1024 * 1024);
    // .ls listings are computed from the NAR itself; the client's copy is not needed.
    if (match[2] === "narinfo")
      await putNarInfo({ ctx: c.var.ctx, input: { cache, hash: match[1]!, text, pushedBy } });
    return ok(c);
  });

  app.put("/:cache/log/:drv", async (c) => {
    const { cache } = await writableCache(c);
    const drv = c.req.param("drv");
    if (!/^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+\.drv$/.test(drv))
      return c.text(`${drv} is not a derivation name\n`, 400);
    const encoding = c.req.header("content-encoding");
    const body =
      encoding && encoding !== "identity"
        ? Readable.from([await readTextBody(c, 256 * 1024 * 1024)])
        : requestBody(c);
    await putLog({ ctx: c.var.ctx, input: { cache, drv, body } });
    return ok(c);
  });

  for (const route of REALISATION_ROUTES) {
    app.put(route, async (c) => {
      const outputId = outputIdOf(c);
      if (!outputId) return c.text("not found\n", 404);
      const { cache } = await writableCache(c);
      const content = await readTextBody(c, 1024 * 1024);
      await putRealisation({ ctx: c.var.ctx, input: { cache, outputId, content } });
      return ok(c);
    });
  }

  return app;
}

const FAST_TARGET = /^\/([a-z0-9][a-z0-9._-]{0,62})\/(?:([0-9a-df-np-sv-z]{32})\.narinfo|nix-cache-info)$/;
const FAST_NAR = /^\/([a-z0-9][a-z0-9._-]{0,62})\/nar\/([0-9a-df-np-sv-z]{52}\.nar(?:\.[a-z0-9]{1,8})?)$/;
const NAR_TYPE = "application/x-nix-nar";
/** A NAR's response headers besides its type and length, on both lanes. */
const NAR_HEADERS = {
  "accept-ranges": "bytes",
  "cache-control": "public, max-age=31536000, immutable",
} as const;
const NOBODY: Caller = { principal: null };
const NOTHING = () => {};
const NOT_FOUND = "not found\n";
const NOT_FOUND_TYPE = "text/plain; charset=UTF-8";

/**
 * readHot without waiting, for an anonymous caller: the answer when all it needs is remembered (a public
 * cache's row, the path's record or, on SQLite, its absence: see repo.ts), else undefined. Most narinfo
 * reads of a busy cache are answered this way, without a promise.
 */
function readHotNow(
  ctx: Context,
  input: { cacheName: string; hash: string | undefined },
): { cache: CacheRow; body: string | Buffer | undefined } | undefined {
  const cache = ctx.repo.peekCacheByName(input.cacheName);
  if (!cache?.public) return undefined;
  if (input.hash === undefined) return { cache, body: cacheInfoText(cache) };
  const body = rememberedNarInfo({ ctx, input: { cache, hash: input.hash } });
  return body === undefined ? undefined : { cache, body: body ?? undefined };
}

/**
 * readNarFast without waiting, for an anonymous caller: a public cache's NAR whose row is remembered and
 * whose bytes storage holds in memory (heldNar), else undefined. The small NARs of a warm cache (most of a
 * closure's paths) are answered this way, without a promise or a stream.
 */
function readNarNow(ctx: Context, input: { cacheName: string; file: string }) {
  const cache = ctx.repo.peekCacheByName(input.cacheName);
  if (!cache?.public) return undefined;
  const body = heldNar({ ctx, input: { cache, file: input.file } });
  return body ? { cache, body } : undefined;
}

/**
 * A NAR GET for the fast lane, read as the NAR route reads it (same cache, authorisation, row and access
 * record): its bytes (a small NAR, read whole or held in memory), the file to send (local storage or the
 * disk cache's copy), the stream of a first read through the disk cache, or where to redirect (S3).
 * Undefined (and nothing recorded) for what the route must answer: a NAR it does not know, or one streamed
 * from the bucket with redirects off. Errors propagate, and the lane leaves the request to the route.
 */
async function readNarFast(
  ctx: Context,
  input: { cacheName: string; file: string; caller: () => Promise<Caller> },
): Promise<
  { cache: CacheRow; body: Buffer | StreamedBody } | { cache: CacheRow; redirect: string } | undefined
> {
  const cache = await findCache({ ctx, input: { name: input.cacheName } });
  authorize(await input.caller(), cache, "pull");
  const nar = await findNar({ ctx, input: { cache, file: input.file } });
  if (!nar) return undefined;
  if (ctx.storage.kind !== "local" && !ctx.settings.redirectNars && nar.fileSize > ctx.storage.keepsUpTo)
    return undefined;
  const opened = await openNar({ ctx, input: { nar, cacheId: cache.id } });
  if (opened.kind === "redirect") return { cache, redirect: opened.url };
  const body = opened.body;
  const whole = wholeBody(body, opened.size);
  if (whole) return { cache, body: whole };
  if (body instanceof FileBody)
    return {
      cache,
      body: { size: opened.size, writeTo: (socket) => body.writeTo(socket), discard: () => body.destroy() },
    };
  // A first read through the disk cache (the bucket's GET that also makes the copy).
  return { cache, body: streamedBody(body, opened.size) };
}

/**
 * The fast lane's answers (fast-lane.ts): GET/HEAD of narinfos and nix-cache-info, read by readHot exactly
 * as the routes above read them, and GETs of NARs (readNarFast: sent, or redirected to the bucket). Whatever
 * those refuse or fail on (no such cache or NAR, credentials that do not allow reading, a database error),
 * and every HEAD or range of a NAR, is declined, and the Hono app answers it with its usual message.
 */
export function nixFastReads(
  ctx: Context,
  deps: { lifecycle: Lifecycle; recorder: (r: RequestRecord) => void },
): FastAnswerer {
  const metrics = ctx.metrics;
  /** A lane request that is answered later: counted in flight (shutdown waits for it) until `end` runs. */
  const inFlight = () => {
    const finish = deps.lifecycle.begin();
    metrics?.httpInFlight.inc();
    return () => {
      metrics?.httpInFlight.dec();
      finish();
    };
  };
  /**
   * A lane request answered before the lane's call returns: nothing can see it in flight, so neither the
   * lifecycle's in-flight count nor the gauge counts it, and its `end` does nothing; it is activity all the
   * same (trim-when-quiet.ts).
   */
  const atOnce = () => {
    deps.lifecycle.answeredAtOnce();
    return NOTHING;
  };
  const callerOf = (authorization: string | undefined) => async () =>
    authorization ? identify({ ctx, input: { authorization } }) : NOBODY;
  /**
   * The lane's answer, metered and logged as the route's would be once it is written (`end` runs then). A
   * NAR gives its `size`: fewer bytes out than that is an aborted download.
   */
  const answered = (
    request: FastRequest,
    reply: Omit<FastAnswer, "requestId" | "done"> & { route: string; cache: string; size?: number },
    started: number,
    end: () => void,
  ): FastAnswer => {
    const requestId = requestIdOf(request.requestId);
    const { status, route, cache, size } = reply;
    // Object shapes fixed (no rest or spread): this runs for every narinfo, and spreading here cost
    // measure 2 a third of its rate (ad-hoc A/B, session 13).
    return {
      status,
      contentType: reply.contentType,
      headers: reply.headers,
      body: reply.body,
      requestId,
      done: (bytesOut) => {
        try {
          deps.recorder({
            requestId,
            method: request.method,
            path: request.target,
            route,
            status,
            seconds: (performance.now() - started) / 1000,
            bytesOut,
            aborted: size === undefined ? undefined : bytesOut < size,
            cache,
            remote: request.remoteAddress,
            userAgent: request.userAgent,
          });
        } finally {
          end();
        }
      },
    };
  };
  const answer = (
    request: FastRequest,
    hash: string | undefined,
    read: { cache: CacheRow; body: string | Buffer | undefined },
    started: number,
    end: () => void,
  ): FastAnswer => {
    const status = read.body === undefined ? 404 : 200;
    return answered(
      request,
      {
        status,
        contentType: status === 404 ? NOT_FOUND_TYPE : hash ? NARINFO_TYPE : CACHE_INFO_TYPE,
        body: read.body ?? NOT_FOUND,
        route: hash ? "/:cache/<hash>.narinfo" : "/:cache/nix-cache-info",
        cache: read.cache.name,
      },
      started,
      end,
    );
  };
  /** A NAR GET without a range: answered once read or redirected (in flight meanwhile). */
  const nar = (request: FastRequest): FastAnswer | Promise<FastAnswer | undefined> | undefined => {
    if (request.method !== "GET" || request.range) return undefined;
    const match = FAST_NAR.exec(request.target);
    if (!match) return undefined;
    const started = performance.now();
    const now = request.authorization
      ? undefined
      : readNarNow(ctx, { cacheName: match[1]!, file: match[2]! });
    // Answered before this call returns, as a remembered narinfo is (below).
    if (now)
      return answered(
        request,
        {
          status: 200,
          contentType: NAR_TYPE,
          headers: NAR_HEADERS,
          body: now.body,
          route: "/:cache/nar/:file",
          cache: now.cache.name,
          size: now.body.length,
        },
        started,
        atOnce(),
      );
    const end = inFlight();
    return readNarFast(ctx, {
      cacheName: match[1]!,
      file: match[2]!,
      caller: callerOf(request.authorization),
    }).then(
      (read) => {
        if (!read) {
          end();
          return undefined;
        }
        if ("redirect" in read)
          return answered(
            request,
            {
              status: 302,
              contentType: undefined,
              headers: { location: read.redirect },
              body: "",
              route: "/:cache/nar/:file",
              cache: read.cache.name,
            },
            started,
            end,
          );
        const body = read.body;
        const size = Buffer.isBuffer(body) ? body.length : body.size;
        return answered(
          request,
          {
            status: 200,
            contentType: NAR_TYPE,
            headers: NAR_HEADERS,
            body,
            route: "/:cache/nar/:file",
            cache: read.cache.name,
            size,
          },
          started,
          end,
        );
      },
      () => {
        end();
        return undefined;
      },
    );
  };
  return (request) => {
    const match = FAST_TARGET.exec(request.target);
    if (!match) return nar(request);
    const cacheName = match[1]!;
    const hash = match[2];
    const started = performance.now();
    const authorization = request.authorization;
    // Answered before this call returns when the narinfo is remembered (the lane writes it at once).
    const now = authorization ? undefined : readHotNow(ctx, { cacheName, hash });
    if (now) return answer(request, hash, now, started, atOnce());
    const end = inFlight();
    return readHot(ctx, { cacheName, hash, caller: callerOf(authorization) }).then(
      (read) => answer(request, hash, read, started, end),
      () => {
        end();
        return undefined;
      },
    );
  };
}
