// Operations endpoints, outside any cache's namespace (cache names cannot be these words: caches.ts):
//   GET /healthz  liveness: the process answers HTTP (200 "ok")
//   GET /readyz   readiness: database and storage reachable and not shutting down (200, else 503), JSON
//   GET /metrics  Prometheus text format (metrics.ts)
// A load balancer or Kubernetes uses /readyz to route traffic and /healthz to restart a wedged process.
import { Hono } from "hono";
import type { Lifecycle } from "../lifecycle.ts";
import { CONTENT_TYPE } from "../metrics.ts";
import { checkReadiness } from "../verbs/health.ts";
import type { Env } from "./http.ts";

const READINESS_TIMEOUT_MS = 5_000;

export function opsRoutes(lifecycle: Lifecycle) {
  const app = new Hono<Env>();

  app.get("/healthz", (c) => c.text("ok\n", 200, { "cache-control": "no-store" }));

  app.get("/readyz", async (c) => {
    const readiness = await checkReadiness({
      ctx: c.var.ctx,
      input: { draining: lifecycle.draining, timeoutMs: READINESS_TIMEOUT_MS },
    });
    return c.json(readiness, readiness.ready ? 200 : 503, { "cache-control": "no-store" });
  });

  app.get("/metrics", (c) => {
    const { metrics } = c.var.ctx;
    if (!metrics) return c.text("metrics are not enabled in this server\n", 404);
    return c.body(metrics.registry.render(), 200, {
      "content-type": CONTENT_TYPE,
      "cache-control": "no-store",
    });
  });

  return app;
}
