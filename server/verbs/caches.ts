// Caches: creation (with a fresh ed25519 key, sealed at rest), lookup, and the public description that
// clients and `nixstash use` read.
import {
  formatPublicKey,
  formatSecretKey,
  generateSecretKey,
  parsePublicKey,
  publicKeyOf,
} from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";
import { badRequest, conflict, notFound } from "../errors.ts";

export const CACHE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** Top-level paths the server uses itself; no cache may shadow them. */
export const RESERVED_NAMES = new Set([
  "api",
  "healthz",
  "readyz",
  "metrics",
  "static",
  "assets",
  "favicon.ico",
]);
export const NIXOS_UPSTREAM_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

export interface NewCache {
  name: string;
  public?: boolean | undefined;
  priority?: number | undefined;
  storeDir?: string | undefined;
  description?: string | undefined;
  upstreamKeys?: string[] | undefined;
  retentionSeconds?: number | null | undefined;
  quotaBytes?: number | null | undefined;
}

export function checkUpstreamKeys(keys: readonly string[]): void {
  for (const key of keys) {
    try {
      parsePublicKey(key);
    } catch (error) {
      throw badRequest(`invalid upstream key ${JSON.stringify(key)}: ${(error as Error).message}`);
    }
  }
}

export async function createCache({ ctx, input }: { ctx: Context; input: NewCache }): Promise<CacheRow> {
  if (!CACHE_NAME.test(input.name) || RESERVED_NAMES.has(input.name)) {
    throw badRequest(
      `invalid cache name ${JSON.stringify(input.name)}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit`,
    );
  }
  const upstream = input.upstreamKeys ?? [NIXOS_UPSTREAM_KEY];
  checkUpstreamKeys(upstream);
  const secret = generateSecretKey(`${input.name}-1`);
  const row = await ctx.repo.createCache(
    {
      name: input.name,
      public: input.public ?? true,
      priority: input.priority ?? 40,
      storeDir: input.storeDir ?? "/nix/store",
      description: input.description ?? "",
      upstreamKeys: upstream.join("\n"),
      retentionSeconds: input.retentionSeconds ?? null,
      quotaBytes: input.quotaBytes ?? null,
    },
    {
      name: secret.name,
      publicKey: formatPublicKey(publicKeyOf(secret)),
      secretEncrypted: ctx.secrets.seal(formatSecretKey(secret)),
    },
  );
  if (!row) throw conflict(`cache ${input.name} already exists`);
  ctx.log.info({ cache: row.name }, "cache created");
  return row;
}

export async function findCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { name: string };
}): Promise<CacheRow> {
  const cache = CACHE_NAME.test(input.name) ? await ctx.repo.cacheByName(input.name) : undefined;
  if (!cache) throw notFound(`no cache named ${input.name}`);
  return cache;
}

export interface CacheDescription {
  name: string;
  url: string;
  publicKey: string;
  publicKeys: string[];
  public: boolean;
  priority: number;
  storeDir: string;
  description: string;
  upstreamKeys: string[];
  /** Garbage collection: paths not accessed for this long are collected; null keeps them for ever. */
  retentionSeconds: number | null;
  /** Garbage collection: LRU closures are evicted while the cache stores more than this; null: no quota. */
  quotaBytes: number | null;
  createdAt: number;
}

export async function describeCache({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow };
}): Promise<CacheDescription> {
  const { cache } = input;
  const keys = await ctx.repo.signingKeys(cache.id);
  const active = keys.filter((key) => key.active);
  return {
    name: cache.name,
    url: `${ctx.settings.publicUrl}/${cache.name}`,
    publicKey: (active[0] ?? keys[0])?.publicKey ?? "",
    publicKeys: keys.map((key) => key.publicKey),
    public: cache.public,
    priority: cache.priority,
    storeDir: cache.storeDir,
    description: cache.description,
    upstreamKeys: cache.upstreamKeys.split("\n").filter(Boolean),
    retentionSeconds: cache.retentionSeconds,
    quotaBytes: cache.quotaBytes,
    createdAt: cache.createdAt,
  };
}
