// The administration API under /api/v1 (next to routes/api.ts, which has cache creation, tokens creation and
// the push endpoints): caches, keys, paths, pins, stats, garbage collection, token listing and revocation,
// and the OpenAPI document. Routes validate with zod, authorise, and call one verb each.
import { Hono } from "hono";
import { z } from "zod";
import { isStorePathHash } from "../../nix/index.ts";
import { badRequest, forbidden, unauthorized } from "../errors.ts";
import {
  findAnyCache,
  listCaches,
  purgeCache,
  restoreCache,
  softDeleteCache,
  updateCache,
} from "../verbs/admin-caches.ts";
import { isServerAdmin, listTokens, revokeToken } from "../verbs/admin-tokens.ts";
import { allows, authorize, authorizeAdmin, type Permission, type Principal } from "../verbs/auth.ts";
import { findCache } from "../verbs/caches.ts";
import { listGcRuns, runCollection } from "../verbs/gc.ts";
import { addKey, listKeys, retireKey } from "../verbs/keys.ts";
import { deletePath, listPaths, setPin, showPath } from "../verbs/paths.ts";
import { cacheStats } from "../verbs/stats.ts";
import { type C, caller, type Env, parse } from "./http.ts";
import { openApiDocument } from "./openapi.ts";

const flag = z.enum(["true", "false", "1", "0"]).transform((v) => v === "true" || v === "1");

const settingsBody = z
  .object({
    public: z.boolean(),
    priority: z.number().int().min(0).max(10000),
    description: z.string().max(2000),
    upstreamKeys: z.array(z.string()).max(32),
    retentionSeconds: z
      .number()
      .int()
      .min(60)
      .max(100 * 365 * 86400)
      .nullable(),
    quotaBytes: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).nullable(),
  })
  .partial()
  .strict();

const keyBody = z
  .object({ name: z.string().min(1).max(100).optional(), secretKey: z.string().min(1).max(1000).optional() })
  .strict();

const gcBody = z.object({ dryRun: z.boolean().default(false), deep: z.boolean().default(false) }).strict();

const pathsQuery = z.object({
  q: z.string().max(200).optional(),
  pinned: flag.optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.coerce.number().int().min(1).optional(),
});

const limitQuery = z.object({ limit: z.coerce.number().int().min(1).max(100).default(20) });

/** A small JSON body; an empty one counts as {} (every field of these bodies is optional). */
async function jsonBody(c: C): Promise<unknown> {
  const text = (await c.req.text()).trim();
  if (text === "") return {};
  if (text.length > 64 * 1024) throw badRequest("JSON body larger than 64 KiB");
  try {
    return JSON.parse(text);
  } catch {
    throw badRequest("body is not valid JSON");
  }
}

function pathHash(c: C): string {
  const raw = c.req.param("hash") ?? "";
  const hash = raw.slice(0, 32);
  if (!isStorePathHash(hash) || (raw.length > 32 && raw[32] !== "-"))
    throw badRequest(`not a store path hash or basename: ${JSON.stringify(raw)}`);
  return hash;
}

export function adminRoutes() {
  const app = new Hono<Env>();

  /** The caller, refusing a bad token outright (the API tells a client its token is wrong). */
  const who = async (c: C) => {
    const found = await caller(c.var.ctx, c);
    if (!found.principal && "problem" in found && found.problem)
      throw unauthorized(`${found.problem}: check the token`);
    return found;
  };
  const cacheFor = async (c: C, permission: Permission, options: { anyState?: boolean } = {}) => {
    const name = c.req.param("name") ?? "";
    const cache = options.anyState
      ? await findAnyCache({ ctx: c.var.ctx, input: { name } })
      : await findCache({ ctx: c.var.ctx, input: { name } });
    const found = await who(c);
    const principal = authorize(found, cache, permission);
    return { cache, principal, isAdmin: principal !== null && allows(principal, cache.name, "admin") };
  };
  const anyAdmin = async (c: C): Promise<Principal> => {
    const found = await who(c);
    if (!found.principal) throw unauthorized();
    if (!found.principal.permissions.has("admin"))
      throw forbidden(`token ${found.principal.name} has no admin permission`);
    return found.principal;
  };

  app.get("/openapi.json", (c) => c.json(openApiDocument(c.var.ctx.settings.publicUrl)));

  app.get("/whoami", async (c) => {
    const found = await who(c);
    if (!found.principal) throw unauthorized();
    const p = found.principal;
    return c.json({
      id: p.tokenId,
      name: p.name,
      caches: p.patterns,
      permissions: [...p.permissions],
      serverAdmin: isServerAdmin(p),
    });
  });

  // ---- caches
  app.get("/caches", async (c) => {
    const found = await who(c);
    const includeDeleted = parse(flag.optional(), c.req.query("deleted"), "deleted") ?? false;
    return c.json({
      caches: await listCaches({ ctx: c.var.ctx, input: { principal: found.principal, includeDeleted } }),
    });
  });

  app.patch("/caches/:name", async (c) => {
    const { cache } = await cacheFor(c, "admin");
    const patch = parse(settingsBody, await jsonBody(c), "settings");
    return c.json(await updateCache({ ctx: c.var.ctx, input: { cache, patch } }));
  });

  app.delete("/caches/:name", async (c) => {
    const { cache } = await cacheFor(c, "admin", { anyState: true });
    const purge = parse(flag.optional(), c.req.query("purge"), "purge") ?? false;
    const confirm = c.req.query("confirm");
    if (purge) return c.json(await purgeCache({ ctx: c.var.ctx, input: { cache, confirm } }));
    if (cache.deletedAt !== null)
      throw badRequest(`cache ${cache.name} is already deleted; purge=true purges it`);
    return c.json(await softDeleteCache({ ctx: c.var.ctx, input: { cache, confirm } }));
  });

  app.post("/caches/:name/restore", async (c) => {
    const { cache } = await cacheFor(c, "admin", { anyState: true });
    return c.json(await restoreCache({ ctx: c.var.ctx, input: { cache } }));
  });

  // ---- signing keys
  app.get("/caches/:name/keys", async (c) => {
    const { cache } = await cacheFor(c, "admin");
    return c.json(await listKeys({ ctx: c.var.ctx, input: { cache } }));
  });

  const addKeyRoute = async (c: C) => {
    const { cache } = await cacheFor(c, "admin");
    const body = parse(keyBody, await jsonBody(c), "key");
    return c.json(
      await addKey({ ctx: c.var.ctx, input: { cache, name: body.name, secretKey: body.secretKey } }),
      201,
    );
  };
  app.post("/caches/:name/keys", addKeyRoute);
  app.post("/caches/:name/keys/rotate", addKeyRoute);

  app.post("/caches/:name/keys/:id/retire", async (c) => {
    const { cache } = await cacheFor(c, "admin");
    const keyId = parse(z.coerce.number().int().min(1), c.req.param("id"), "key id");
    return c.json(await retireKey({ ctx: c.var.ctx, input: { cache, keyId } }));
  });

  // ---- paths
  app.get("/caches/:name/paths", async (c) => {
    const { cache } = await cacheFor(c, "pull");
    const q = parse(pathsQuery, c.req.query(), "query");
    return c.json(
      await listPaths({
        ctx: c.var.ctx,
        input: { cache, search: q.q, pinned: q.pinned, cursor: q.cursor, limit: q.limit },
      }),
    );
  });

  app.get("/caches/:name/paths/:hash", async (c) => {
    const { cache, isAdmin } = await cacheFor(c, "pull");
    return c.json(
      await showPath({ ctx: c.var.ctx, input: { cache, hash: pathHash(c), showPusher: isAdmin } }),
    );
  });

  app.delete("/caches/:name/paths/:hash", async (c) => {
    const { cache } = await cacheFor(c, "delete");
    const referrers = parse(flag.optional(), c.req.query("referrers"), "referrers") ?? false;
    return c.json(await deletePath({ ctx: c.var.ctx, input: { cache, hash: pathHash(c), referrers } }));
  });

  app.put("/caches/:name/paths/:hash/pin", async (c) => {
    const { cache } = await cacheFor(c, "push");
    return c.json(await setPin({ ctx: c.var.ctx, input: { cache, hash: pathHash(c), pinned: true } }));
  });

  app.delete("/caches/:name/paths/:hash/pin", async (c) => {
    const { cache } = await cacheFor(c, "delete");
    return c.json(await setPin({ ctx: c.var.ctx, input: { cache, hash: pathHash(c), pinned: false } }));
  });

  // ---- stats
  app.get("/caches/:name/stats", async (c) => {
    const { cache } = await cacheFor(c, "pull");
    const { days } = parse(
      z.object({ days: z.coerce.number().int().min(1).max(366).default(30) }),
      c.req.query(),
      "query",
    );
    return c.json(await cacheStats({ ctx: c.var.ctx, input: { cache, days } }));
  });

  // ---- garbage collection
  app.post("/caches/:name/gc", async (c) => {
    const { cache, principal } = await cacheFor(c, "admin");
    const body = parse(gcBody, await jsonBody(c), "request");
    if (body.deep && !(principal && isServerAdmin(principal)))
      throw forbidden('a deep scan lists the whole bucket: it needs admin on "*"');
    return c.json(
      await runCollection({
        ctx: c.var.ctx,
        input: { cache, dryRun: body.dryRun, deep: body.deep, trigger: "api" },
      }),
    );
  });

  app.get("/caches/:name/gc/runs", async (c) => {
    const { cache } = await cacheFor(c, "admin");
    const { limit } = parse(limitQuery, c.req.query(), "query");
    return c.json({ runs: await listGcRuns({ ctx: c.var.ctx, input: { limit, cache: cache.name } }) });
  });

  app.post("/gc", async (c) => {
    authorizeAdmin(await who(c));
    const body = parse(gcBody, await jsonBody(c), "request");
    return c.json(
      await runCollection({
        ctx: c.var.ctx,
        input: { dryRun: body.dryRun, deep: body.deep, trigger: "api" },
      }),
    );
  });

  app.get("/gc/runs", async (c) => {
    authorizeAdmin(await who(c));
    const { limit } = parse(limitQuery, c.req.query(), "query");
    return c.json({ runs: await listGcRuns({ ctx: c.var.ctx, input: { limit } }) });
  });

  // ---- tokens
  app.get("/tokens", async (c) => {
    const principal = await anyAdmin(c);
    const includeInactive = parse(flag.optional(), c.req.query("all"), "all") ?? false;
    return c.json({ tokens: await listTokens({ ctx: c.var.ctx, input: { principal, includeInactive } }) });
  });

  app.delete("/tokens/:id", async (c) => {
    const principal = await anyAdmin(c);
    const id = parse(z.coerce.number().int().min(1), c.req.param("id"), "token id");
    return c.json(await revokeToken({ ctx: c.var.ctx, input: { principal, id } }));
  });

  return app;
}
