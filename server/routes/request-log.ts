// The middleware every request passes first: a request id, one structured access-log line, the HTTP
// metrics, and the in-flight count graceful shutdown waits on.
//
// Request id: a caller's `X-Request-Id` is kept when it looks like an id (so a load balancer's id follows the
// request through), otherwise a fresh UUID. It is echoed in the `X-Request-Id` response header, added to the
// JSON body of API errors (app.ts), and put on every log line written while the request is handled, verbs'
// lines included: the request's context (`c.var.ctx`, what route handlers pass to verbs) is the server's with
// a logger bound to the id. Not an AsyncLocalStorage: on Node 20 one turns on promise hooks for the whole
// process, and every promise then costs a hook call (ad-hoc A/B, the bench closure pushed into PostgreSQL +
// RGW: the server's CPU 2.85-2.92 s with it, 2.48-2.79 without).
//
// The access line is written when the response has been sent completely (or the client went away), so its
// duration covers a NAR streamed for minutes, not just the time to the first byte:
//   {"level":30,"reqId":"…","method":"GET","path":"/main/nar/….nar.zst","route":"/:cache/nar/:file",
//    "status":200,"ms":812.4,"bytesOut":52428800,"msg":"request"}
// Secrets never reach it: no headers are logged but User-Agent, no query strings, no bodies; tokens travel
// only in Authorization, which is never read here.
//
// Route labels are the matched route *patterns* (bounded cardinality for Prometheus); the one pattern that
// serves two kinds of file, `/:cache/:file`, is told apart as `/:cache/<hash>.narinfo` and `/:cache/<hash>.ls`.
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { MiddlewareHandler } from "hono";
import { matchedRoutes } from "hono/route";
import type { Context } from "../context.ts";
import { AppError } from "../errors.ts";
import type { Lifecycle } from "../lifecycle.ts";
import type { BoundCounter, BoundHistogram, Counter, Labels } from "../metrics.ts";
import { type C, declaredLength, type Env } from "./http.ts";

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

type UploadApi = "native" | "batch" | "nix";

/** Which upload API a request is, from its method and path alone (known before routing). */
function uploadApiOf(method: string, path: string): UploadApi | undefined {
  if (method === "POST" && /^\/api\/v1\/caches\/[^/]+\/paths$/.test(path)) return "batch";
  if (method !== "PUT") return undefined;
  if (/^\/api\/v1\/caches\/[^/]+\/paths\/[^/]+$/.test(path)) return "native";
  if (/^\/[^/]+\/nar\/[^/]+$/.test(path) || /^\/[^/]+\/[0-9a-df-np-sv-z]{32}\.narinfo$/.test(path))
    return "nix";
  return undefined;
}

export function routeLabel(c: C): string {
  const route = matchedRoutes(c)[c.req.routeIndex];
  if (!route || route.path === "/*" || route.path === "*") return "unmatched";
  if (route.path === "/:cache/:file") {
    if (c.req.path.endsWith(".narinfo")) return "/:cache/<hash>.narinfo";
    if (c.req.path.endsWith(".ls")) return "/:cache/<hash>.ls";
  }
  return route.path;
}

/** What one answered request was, for the metrics and the access line (both lanes report the same). */
export interface RequestRecord {
  requestId: string;
  method: string;
  path: string;
  route: string;
  status: number;
  seconds: number;
  bytesOut: number;
  bytesIn?: number | undefined;
  aborted?: boolean | undefined;
  /** The cache named in the path, when the request reached one that exists. */
  cache: string | undefined;
  uploadApi?: UploadApi | undefined;
  error?: Error | undefined;
  remote: string | undefined;
  userAgent: string | undefined;
}

/** The caller's request id when it looks like one, else a fresh UUID. */
export function requestIdOf(given: string | undefined): string {
  return given && REQUEST_ID.test(given) ? given : randomUUID();
}

/** Meters and logs answered requests: the Hono middleware below and the fast lane (fast-lane.ts) share it. */
export function createRequestRecorder(ctx: Context): (r: RequestRecord) => void {
  const metrics = ctx.metrics;
  const log = ctx.log;
  // The series a request lands in, resolved once per route/method/status: a label lookup joins and hashes
  // the label values, which the hot routes would otherwise do several times per request. Looked up through
  // maps keyed by the values themselves (route and method strings are the same objects request after
  // request, their hashes cached), not by a key string built per request.
  const seriesOf = new Map<string, Map<string, Map<number, HttpSeries>>>();
  return (r) => {
    if (metrics) {
      const byMethod = child(seriesOf, r.route, newMap<string, Map<number, HttpSeries>>);
      const byStatus = child(byMethod, r.method, newMap<number, HttpSeries>);
      const series = child(byStatus, r.status, () =>
        httpSeries(metrics, { method: r.method, route: r.route, status: String(r.status) }),
      );
      record(metrics, series, r);
    }
    // Skipped whole, not just unwritten, when the level drops it (the benchmark runs at warn).
    const level = r.status >= 500 ? "warn" : "info";
    if (log.isLevelEnabled(level)) {
      const line = {
        reqId: r.requestId,
        method: r.method,
        path: r.path,
        route: r.route,
        status: r.status,
        ms: Math.round(r.seconds * 10_000) / 10,
        bytesOut: r.bytesOut,
        ...(r.bytesIn === undefined ? {} : { bytesIn: r.bytesIn }),
        ...(r.aborted ? { aborted: true } : {}),
        remote: r.remote,
        userAgent: r.userAgent,
      };
      log[level](line, "request");
    }
  };
}

export function observeRequests(
  ctx: Context,
  deps: { lifecycle: Lifecycle; recorder?: ((r: RequestRecord) => void) | undefined },
): MiddlewareHandler<Env> {
  const { lifecycle } = deps;
  const metrics = ctx.metrics;
  const recordRequest = deps.recorder ?? createRequestRecorder(ctx);
  return async (c, next) => {
    const started = performance.now();
    const requestId = requestIdOf(c.req.header("x-request-id"));
    c.set("requestId", requestId);
    c.set("ctx", { ...ctx, log: ctx.log.child({ reqId: requestId }) });
    c.header("x-request-id", requestId);
    // While draining, every response asks the client to reconnect elsewhere (keep-alive connections would
    // otherwise keep feeding this replica).
    if (lifecycle.draining) c.header("connection", "close");
    const done = lifecycle.begin();
    const method = c.req.method;
    const uploadApi = uploadApiOf(method, c.req.path);
    metrics?.httpInFlight.inc();
    if (uploadApi) metrics?.uploadsInFlight.inc({ api: uploadApi });
    const outgoing = c.env?.outgoing;
    // The response is complete (or the client went away) when the socket response closes; listened for
    // from the start, as a client may hang up while the handler still runs.
    let closed = !outgoing;
    let onClosed: (() => void) | undefined;
    outgoing?.once("close", () => {
      closed = true;
      onClosed?.();
    });

    try {
      await next();
    } finally {
      const route = routeLabel(c);
      const status = c.res.status;
      const error = c.error;
      const finish = () => {
        const aborted = outgoing ? !outgoing.writableFinished : false;
        // The adapter sets Content-Length on the socket response for bodies it measured itself (JSON, text).
        const declared = Number(
          outgoing?.getHeader("content-length") ?? c.res.headers.get("content-length") ?? Number.NaN,
        );
        try {
          recordRequest({
            requestId,
            method,
            path: c.req.path,
            route,
            status,
            seconds: (performance.now() - started) / 1000,
            bytesOut: !aborted && Number.isFinite(declared) && method !== "HEAD" ? declared : 0,
            bytesIn: declaredLength(c),
            aborted,
            cache: c.req.param("cache"),
            uploadApi,
            error,
            remote: c.env?.incoming?.socket?.remoteAddress,
            userAgent: c.req.header("user-agent"),
          });
        } finally {
          metrics?.httpInFlight.dec();
          if (uploadApi) metrics?.uploadsInFlight.dec({ api: uploadApi });
          done();
        }
      };
      // Run after the handler's own continuation, as before (in-process requests have no socket response).
      if (closed) queueMicrotask(finish);
      else onClosed = finish;
    }
  };
}

interface HttpSeries {
  requests: BoundCounter;
  duration: BoundHistogram;
  /** Bound at the first bytes sent: a route that never sends a body exports no series. */
  responseBytes?: BoundCounter;
  /** This series' per-cache counter (narinfo hits or misses, NAR bytes or redirects), by cache name. */
  perCache?: Map<string, BoundCounter>;
}

function httpSeries(metrics: NonNullable<Context["metrics"]>, labels: Labels): HttpSeries {
  return {
    requests: metrics.httpRequests.bind(labels),
    duration: metrics.httpDuration.bind(labels),
  };
}

function newMap<K, V>(): Map<K, V> {
  return new Map();
}

/** map's value for key, made (and kept) on first use. */
function child<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}

/** The per-cache counter a request adds to, if any: it depends on route, method and status alone. */
function perCacheCounter(
  metrics: NonNullable<Context["metrics"]>,
  r: RequestRecord,
): { metric: Counter; labels?: Labels; amount: number } | undefined {
  // Only answers about a cache that exists carry its name (an unknown name fails in findCache: r.error).
  if (r.route === "/:cache/<hash>.narinfo" && !r.error && (r.status === 200 || r.status === 404))
    return {
      metric: metrics.narinfoRequests,
      labels: { result: r.status === 200 ? "hit" : "miss" },
      amount: 1,
    };
  if (r.route === "/:cache/nar/:file" && r.method === "GET") {
    if (r.status === 302) return { metric: metrics.narRedirects, amount: 1 };
    if ((r.status === 200 || r.status === 206) && r.bytesOut > 0)
      return { metric: metrics.narServedBytes, amount: r.bytesOut };
  }
  return undefined;
}

function record(metrics: NonNullable<Context["metrics"]>, series: HttpSeries, r: RequestRecord): void {
  series.requests.inc();
  series.duration.observe(r.seconds);
  if (r.bytesOut > 0) {
    series.responseBytes ??= metrics.responseBytes.bind({ route: r.route });
    series.responseBytes.inc(r.bytesOut);
  }
  const counter = perCacheCounter(metrics, r);
  if (counter) {
    series.perCache ??= new Map();
    const cache = r.cache ?? "";
    child(series.perCache, cache, () => counter.metric.bind({ cache, ...counter.labels })).inc(
      counter.amount,
    );
  }
  if (r.uploadApi && (r.error || r.status >= 400)) {
    const reason = r.error instanceof AppError ? r.error.code : r.error ? "internal" : `http_${r.status}`;
    metrics.ingestFailures.inc({ api: r.uploadApi, reason });
  }
}
