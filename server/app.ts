// Composes the HTTP server from its parts. All dependencies come in through the context (and, for the
// request middleware, the options below); nothing here holds state of its own.
import { Hono } from "hono";
import { PatternRouter } from "hono/router/pattern-router";
import type { Context } from "./context.ts";
import { AppError } from "./errors.ts";
import { createLifecycle, type Lifecycle } from "./lifecycle.ts";
import { adminRoutes } from "./routes/admin.ts";
import { apiRoutes } from "./routes/api.ts";
import { dashboardRoutes } from "./routes/dashboard.ts";
import type { Env } from "./routes/http.ts";
import { nixRoutes } from "./routes/nix.ts";
import { opsRoutes } from "./routes/ops.ts";
import { observeRequests, type RequestRecord } from "./routes/request-log.ts";

export interface AppOptions {
  /** In-flight requests and draining state, for graceful shutdown and /readyz. */
  lifecycle?: Lifecycle | undefined;
  /** Meters and logs answered requests; start.ts shares it with the fast lane. */
  recorder?: ((r: RequestRecord) => void) | undefined;
}

export function createApp(ctx: Context, options: AppOptions = {}) {
  // Hono's default SmartRouter cannot use its RegExpRouter for this route table (`/:cache/:file` beside
  // `/:cache/nix-cache-info`, the dashboard's `:asset` beside `api/`, `keys/rotate` beside `keys/:id/…`)
  // and falls back to its TrieRouter; PatternRouter (one regex per route, tried in order) matches the same
  // routes in about half the time (2.2 against 4.5 µs for a narinfo or NAR path, 49 routes).
  const app = new Hono<Env>({ router: new PatternRouter() });
  const lifecycle = options.lifecycle ?? createLifecycle();
  app.use(
    observeRequests(ctx, {
      lifecycle,
      recorder: options.recorder,
    }),
  );

  app.onError((error, c) => {
    const api = c.req.path.startsWith("/api/") || c.req.path.startsWith("/-/");
    const requestId = c.get("requestId");
    // Nix 2.8 retries a PUT that failed with 5xx/408/429 without resending its body, hanging up to 300 s
    // each time. A write that fails on our side (storage or database down) therefore answers 424 Failed
    // Dependency: Nix stops at once and shows the message; nothing was stored, and the push can be rerun.
    const nixWrite = !api && c.req.method === "PUT";
    if (error instanceof AppError) {
      if (error.status >= 500)
        ctx.log.warn({ err: error, path: c.req.path, reqId: requestId }, error.message);
      else ctx.log.debug({ code: error.code, path: c.req.path, reqId: requestId }, error.message);
      const headers: Record<string, string> = {};
      // Not for the dashboard's JSON: a Basic challenge would make the browser pop up its own login dialog.
      if (error.status === 401 && !c.req.path.startsWith("/-/"))
        headers["www-authenticate"] = 'Basic realm="nixstash"';
      if (error.code === "range_not_satisfiable") headers["content-range"] = `bytes */${error.details?.size}`;
      if (api)
        return c.json(
          { error: error.code, message: error.message, ...error.details, requestId },
          error.status as 400,
          headers,
        );
      return c.text(`${error.message}\n`, error.status as 400, headers);
    }
    ctx.log.error(
      { err: error, method: c.req.method, path: c.req.path, reqId: requestId },
      "unhandled error",
    );
    if (nixWrite) {
      return c.text(
        `nixstash could not store this (storage or database unavailable); nothing was stored, try again\n`,
        424,
      );
    }
    const message = "internal server error";
    return api
      ? c.json({ error: "internal", message, requestId }, 500)
      : c.text(`${message} (request ${requestId})\n`, 500);
  });

  app.notFound((c) =>
    c.req.path.startsWith("/api/") || c.req.path.startsWith("/-/")
      ? c.json({ error: "not_found", message: `no route ${c.req.method} ${c.req.path}` }, 404)
      : c.text("not found\n", 404),
  );

  app.route("/", opsRoutes(lifecycle));
  app.route("/", dashboardRoutes());
  app.route("/api/v1", adminRoutes());
  app.route("/api/v1", apiRoutes());
  app.route("/", nixRoutes());
  return app;
}
