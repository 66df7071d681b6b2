// The web dashboard: one static page (server/dashboard/: HTML, CSS, JS; no build step) at `/`, and the two
// JSON endpoints it reads under `/-/dashboard/api/`. `/-/` cannot collide with a cache: cache names start
// with a letter or digit. The page sends the token the user typed as `Authorization: Bearer`; nothing is
// kept server-side. A strict Content-Security-Policy allows only this server's own script and style, and the
// script writes every value with textContent, so names and paths from the database cannot inject markup.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Hono } from "hono";
import { badRequest } from "../errors.ts";
import { dashboardCaches, dashboardSearch } from "../verbs/dashboard.ts";
import { type C, caller, type Env } from "./http.ts";

const ASSET_DIR = join(import.meta.dirname, "../dashboard");
const ASSETS: Record<string, string> = {
  "app.js": "text/javascript; charset=utf-8",
  "style.css": "text/css; charset=utf-8",
};

const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

export function dashboardRoutes() {
  // Read once: the files are small and part of the release, not user content.
  const files = new Map<string, { body: string; type: string }>();
  files.set("index.html", {
    body: readFileSync(join(ASSET_DIR, "index.html"), "utf8"),
    type: "text/html; charset=utf-8",
  });
  for (const [name, type] of Object.entries(ASSETS))
    files.set(name, { body: readFileSync(join(ASSET_DIR, name), "utf8"), type });

  const app = new Hono<Env>();
  const serveFile = (c: C, name: string) => {
    const file = files.get(name)!;
    return c.body(file.body, 200, {
      "content-type": file.type,
      "cache-control": "no-cache",
      ...SECURITY_HEADERS,
    });
  };

  app.get("/", (c) => serveFile(c, "index.html"));
  app.get("/-/dashboard/:asset", (c) => {
    const asset = c.req.param("asset");
    return Object.hasOwn(ASSETS, asset) ? serveFile(c, asset) : c.text("not found\n", 404);
  });

  app.get("/-/dashboard/api/caches", async (c) => {
    const result = await dashboardCaches({ ctx: c.var.ctx, input: { caller: await caller(c.var.ctx, c) } });
    return c.json(result, 200, { "cache-control": "no-store" });
  });

  app.get("/-/dashboard/api/caches/:name/paths", async (c) => {
    const query = (c.req.query("q") ?? "").trim();
    if (query.length < 2 || query.length > 200) throw badRequest("search for 2 to 200 characters");
    const result = await dashboardSearch({
      ctx: c.var.ctx,
      input: { caller: await caller(c.var.ctx, c), cache: c.req.param("name"), query },
    });
    return c.json(result, 200, { "cache-control": "no-store" });
  });

  return app;
}
