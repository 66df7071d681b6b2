// The native JSON API under /api/v1: cache and token administration, the batch "what is missing" query and
// streaming uploads. Routes validate into typed inputs (zod + nix/ parsers), authorise, call one verb.
import { Hono } from "hono";
import { z } from "zod";
import { NixFormatError, normaliseHash, parseStorePath, parseStorePathBasename } from "../../nix/index.ts";
import type { CacheRow } from "../db/repo.ts";
import { AppError, badRequest, unauthorized } from "../errors.ts";
import { authorizeTokenScope } from "../verbs/admin-tokens.ts";
import { allows, authorize, PERMISSIONS, type Principal } from "../verbs/auth.ts";
import { createCache, describeCache, findCache } from "../verbs/caches.ts";
import { type BodyEncoding, ingestPath, type PathClaim, type UpstreamProof } from "../verbs/ingest.ts";
import { type BatchEntry, ingestBatch } from "../verbs/ingest-batch.ts";
import { createToken } from "../verbs/tokens.ts";
import { findMissing, putLog, putRealisation } from "../verbs/uploads.ts";
import { BATCH_CONTENT_TYPE, type RawBatchEntry, readBatchBody } from "./batch-body.ts";
import { type C, caller, type Env, parse, readJson, requestBody } from "./http.ts";

/** Header carrying the JSON path info of a streaming upload. */
export const PATH_INFO_HEADER = "x-nixstash-path-info";

/** Runs a nix/ parser, turning its format errors into 400s that name the field. */
function nixField<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (error) {
    if (error instanceof NixFormatError) throw badRequest(`invalid ${what}: ${error.message}`);
    throw error;
  }
}

const newCacheBody = z.object({
  name: z.string(),
  public: z.boolean().optional(),
  priority: z.number().int().min(0).max(10000).optional(),
  description: z.string().max(2000).optional(),
  upstreamKeys: z.array(z.string()).max(32).optional(),
  retentionSeconds: z
    .number()
    .int()
    .min(60)
    .max(100 * 365 * 86400)
    .nullish(),
  quotaBytes: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).nullish(),
});

const newTokenBody = z.object({
  name: z.string().min(1).max(100),
  caches: z.array(z.string()).min(1).max(100),
  permissions: z.array(z.enum(PERMISSIONS)).min(1),
  expiresAt: z.union([z.number().int(), z.iso.datetime().transform((s) => Date.parse(s))]).nullish(),
});

const storePathText = z.string().min(1).max(400);
const pathInfoBody = z.object({
  storePath: storePathText,
  narHash: z.string().min(1).max(200),
  narSize: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  references: z.array(storePathText).max(100_000).default([]),
  deriver: storePathText.nullish(),
  system: z.string().max(100).nullish(),
  ca: z.string().max(500).nullish(),
  upstream: z
    .array(
      z.object({
        storePath: storePathText,
        narHash: z.string().min(1).max(200),
        narSize: z.number().int().positive(),
        references: z.array(storePathText).max(100_000),
        sigs: z.array(z.string().max(500)).max(16),
      }),
    )
    .max(100_000)
    .default([]),
});

const missingBody = z.object({ paths: z.array(z.string().min(1).max(400)).max(100_000) });

/** Accepts a basename or a full path in the cache's store dir; returns the basename. */
function basenameIn(cache: CacheRow, text: string, what: string): string {
  return nixField(what, () =>
    text.includes("/")
      ? parseStorePath(text, cache.storeDir).basename
      : parseStorePathBasename(text, cache.storeDir).basename,
  );
}

/** A path info (of an upload, or of a batch entry, where `hash` is undefined) as a claim. */
function pathClaim(
  cache: CacheRow,
  hash: string | undefined,
  raw: unknown,
): { claim: PathClaim; upstream: UpstreamProof[] } {
  const info = parse(pathInfoBody, raw, "path info");
  const storePath = nixField("storePath", () => parseStorePath(info.storePath, cache.storeDir));
  if (hash !== undefined && storePath.hash !== hash)
    throw badRequest(`storePath ${info.storePath} does not match the URL's hash ${hash}`);
  const claim: PathClaim = {
    storePath,
    narHash: nixField("narHash", () => normaliseHash(info.narHash)),
    narSize: info.narSize,
    references: [...new Set(info.references.map((r) => basenameIn(cache, r, "reference")))].sort(),
    deriver: info.deriver ? basenameIn(cache, info.deriver, "deriver") : null,
    system: info.system ?? null,
    ca: info.ca ?? null,
  };
  const upstream = info.upstream.map((proof) => ({
    storePath: nixField("upstream storePath", () => parseStorePath(proof.storePath, cache.storeDir)).path,
    narHash: nixField("upstream narHash", () => normaliseHash(proof.narHash)),
    narSize: proof.narSize,
    references: proof.references.map((r) => basenameIn(cache, r, "upstream reference")),
    sigs: proof.sigs,
  }));
  return { claim, upstream };
}

function bodyEncoding(c: C): BodyEncoding {
  const encoding = (c.req.header("content-encoding") ?? "identity").trim().toLowerCase();
  if (encoding === "zstd") return "zstd";
  if (encoding === "identity" || encoding === "") return "none";
  throw new AppError(
    "unsupported_media_type",
    `Content-Encoding ${encoding} is not accepted: send the NAR plain or zstd`,
  );
}

/** A batch's entries as the verb takes them: each entry's claim, or what is wrong with it. */
async function* batchEntries(
  cache: CacheRow,
  body: AsyncIterable<RawBatchEntry>,
): AsyncGenerator<BatchEntry> {
  for await (const { header, body: nar } of body) {
    const storePath = typeof header.storePath === "string" ? header.storePath : "(no storePath)";
    try {
      const { bodySize: _size, encoding: rawEncoding, ...info } = header;
      const encoding = rawEncoding ?? "zstd";
      if (encoding !== "zstd" && encoding !== "none")
        throw new AppError(
          "unsupported_media_type",
          `encoding ${String(encoding)}: send the NAR plain or zstd`,
        );
      yield { storePath, ...pathClaim(cache, undefined, info), encoding, body: nar };
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      yield { storePath, problem: error };
    }
  }
}

export function apiRoutes() {
  const app = new Hono<Env>();

  const cacheFor = async (c: C, permission: "pull" | "push" | "admin") => {
    const cache = await findCache({ ctx: c.var.ctx, input: { name: c.req.param("name") ?? "" } });
    const who = await caller(c.var.ctx, c);
    // Nix routes read a public cache whatever credentials come along (netrc sends them everywhere); the API
    // tells a client with a bad token so, before it relies on what it was shown.
    if (!who.principal && "problem" in who && who.problem)
      throw unauthorized(`${who.problem}: check the token`);
    const principal = authorize(who, cache, permission);
    return { cache, principal };
  };

  /** Any token with admin somewhere (what it may do is checked against its scope). */
  const adminCaller = async (c: C): Promise<Principal> => {
    const who = await caller(c.var.ctx, c);
    if (!who.principal) throw unauthorized("problem" in who && who.problem ? who.problem : undefined);
    if (!who.principal.permissions.has("admin"))
      throw new AppError("forbidden", `token ${who.principal.name} has no admin permission`);
    return who.principal;
  };

  app.post("/caches", async (c) => {
    const principal = await adminCaller(c);
    const input = parse(newCacheBody, await readJson(c), "cache");
    // Multi-tenancy: admin on a pattern matching the new name (e.g. team-*) may create it.
    if (!allows(principal, input.name, "admin"))
      throw new AppError("forbidden", `token ${principal.name} may not create a cache named ${input.name}`);
    const cache = await createCache({ ctx: c.var.ctx, input });
    return c.json(await describeCache({ ctx: c.var.ctx, input: { cache } }), 201);
  });

  app.get("/caches/:name", async (c) => {
    const { cache } = await cacheFor(c, "pull");
    return c.json(await describeCache({ ctx: c.var.ctx, input: { cache } }));
  });

  app.post("/tokens", async (c) => {
    const principal = await adminCaller(c);
    const input = parse(newTokenBody, await readJson(c), "token");
    authorizeTokenScope(principal, input.caches);
    return c.json(await createToken({ ctx: c.var.ctx, input }), 201);
  });

  app.post("/caches/:name/missing", async (c) => {
    const { cache } = await cacheFor(c, "pull");
    const { paths } = parse(missingBody, await readJson(c), "query");
    return c.json(await findMissing({ ctx: c.var.ctx, input: { cache, paths } }));
  });

  app.put("/caches/:name/paths/:hash", async (c) => {
    const { cache, principal } = await cacheFor(c, "push");
    const header = c.req.header(PATH_INFO_HEADER);
    if (!header) throw badRequest(`missing ${PATH_INFO_HEADER} header (the path info as JSON)`);
    let raw: unknown;
    try {
      raw = JSON.parse(header);
    } catch {
      throw badRequest(`${PATH_INFO_HEADER} is not valid JSON`);
    }
    const { claim, upstream } = pathClaim(cache, c.req.param("hash"), raw);
    const result = await ingestPath({
      ctx: c.var.ctx,
      input: {
        cache,
        claim,
        upstream,
        body: requestBody(c),
        encoding: bodyEncoding(c),
        pushedBy: principal?.tokenId ?? null,
      },
    });
    return c.json(result, result.status === "stored" ? 201 : 200);
  });

  // Many small paths in one request (server/routes/batch-body.ts has the body's format); 200 with a result
  // per entry, each a path's status or its error.
  app.post("/caches/:name/paths", async (c) => {
    const { cache, principal } = await cacheFor(c, "push");
    const type = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
    if (type !== BATCH_CONTENT_TYPE)
      throw new AppError("unsupported_media_type", `a batch upload is sent as ${BATCH_CONTENT_TYPE}`);
    const results = await ingestBatch({
      ctx: c.var.ctx,
      input: {
        cache,
        entries: batchEntries(cache, readBatchBody(requestBody(c))),
        pushedBy: principal?.tokenId ?? null,
      },
    });
    return c.json({ results });
  });

  app.put("/caches/:name/logs/:drv", async (c) => {
    const { cache } = await cacheFor(c, "push");
    const drv = basenameIn(cache, c.req.param("drv"), "derivation");
    if (!drv.endsWith(".drv")) throw badRequest(`${drv} is not a derivation (.drv) name`);
    await putLog({ ctx: c.var.ctx, input: { cache, drv, body: requestBody(c) } });
    return c.json({ drv }, 201);
  });

  app.put("/caches/:name/realisations/:id", async (c) => {
    const { cache } = await cacheFor(c, "push");
    const outputId = c.req.param("id");
    const content = await c.req.text();
    await putRealisation({ ctx: c.var.ctx, input: { cache, outputId, content } });
    return c.json({ id: outputId }, 201);
  });

  return app;
}
