// Who is calling, and what they may do. Tokens are `nxs_` + 43 random base64url characters, shown once and
// stored as a sha256 hash; a token carries cache-name patterns (`*` matches any run of characters) and
// permissions. `admin` implies every other permission on the caches it matches.
import { createHash, randomBytes } from "node:crypto";
import type { Context } from "../context.ts";
import type { CacheRow, TokenRow } from "../db/repo.ts";
import { AppError, forbidden, unauthorized } from "../errors.ts";

export const PERMISSIONS = ["pull", "push", "delete", "admin"] as const;
export type Permission = (typeof PERMISSIONS)[number];

export interface Principal {
  tokenId: number;
  name: string;
  patterns: string[];
  permissions: Set<Permission>;
}

/** The caller: a principal, nobody (no credentials), or a problem with the credentials presented. */
export type Caller = { principal: Principal } | { principal: null; problem?: string };

export function hashTokenSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

export function newTokenSecret(): string {
  return `nxs_${randomBytes(32).toString("base64url")}`;
}

/** The secret from `Authorization: Bearer …` or the password of `Authorization: Basic …` (as netrc sends it). */
export function secretFromHeader(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const [scheme, value] = header.split(/\s+/, 2);
  if (!value) return undefined;
  if (scheme?.toLowerCase() === "bearer") return value;
  if (scheme?.toLowerCase() === "basic") {
    const decoded = Buffer.from(value, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    return colon >= 0 ? decoded.slice(colon + 1) : decoded;
  }
  return undefined;
}

const TOUCH_INTERVAL_MS = 60_000;

export async function identify({
  ctx,
  input,
}: {
  ctx: Context;
  input: { authorization: string | undefined };
}): Promise<Caller> {
  const secret = secretFromHeader(input.authorization);
  if (!secret) return { principal: null };
  const row = await ctx.repo.tokenBySecretHash(hashTokenSecret(secret));
  const now = ctx.clock();
  const problem = tokenProblem(row, now);
  if (problem || !row) return { principal: null, problem: problem ?? "unknown token" };
  if (!row.lastUsedAt || now - row.lastUsedAt > TOUCH_INTERVAL_MS) {
    ctx.repo
      .touchToken(row.id, now)
      .catch((error) => ctx.log.warn({ err: error }, "could not record token use"));
  }
  return {
    principal: {
      tokenId: row.id,
      name: row.name,
      patterns: row.caches.split("\n").filter(Boolean),
      permissions: new Set(row.permissions.split(",").filter(Boolean) as Permission[]),
    },
  };
}

function tokenProblem(row: TokenRow | undefined, now: number): string | undefined {
  if (!row) return "unknown token";
  if (row.revokedAt !== null) return "token was revoked";
  if (row.expiresAt !== null && row.expiresAt <= now) return "token has expired";
  return undefined;
}

export function patternMatches(pattern: string, name: string): boolean {
  const regex = new RegExp(
    `^${pattern
      .split("*")
      .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
      .join(".*")}$`,
  );
  return regex.test(name);
}

export function allows(principal: Principal, cacheName: string, permission: Permission): boolean {
  if (!principal.patterns.some((pattern) => patternMatches(pattern, cacheName))) return false;
  return principal.permissions.has(permission) || principal.permissions.has("admin");
}

/**
 * Throws unless the caller may act on the cache. Reads of a public cache need nothing. A private cache
 * answers 401 to anyone who may not pull from it, so its contents cannot be probed.
 */
export function authorize(caller: Caller, cache: CacheRow, permission: Permission): Principal | null {
  if (permission === "pull" && cache.public) return caller.principal;
  if (!caller.principal) {
    throw unauthorized(
      "problem" in caller && caller.problem
        ? `${caller.problem}: send a valid token as Bearer or as the Basic-auth password`
        : undefined,
    );
  }
  if (allows(caller.principal, cache.name, permission)) return caller.principal;
  if (!cache.public && !allows(caller.principal, cache.name, "pull")) {
    throw unauthorized(`token ${caller.principal.name} may not read cache ${cache.name}`);
  }
  throw forbidden(`token ${caller.principal.name} lacks the ${permission} permission on cache ${cache.name}`);
}

/** Server-wide administration (creating caches and tokens) needs `admin` on every cache: pattern `*`. */
export function authorizeAdmin(caller: Caller): Principal {
  if (!caller.principal) {
    throw unauthorized("problem" in caller && caller.problem ? `${caller.problem}` : undefined);
  }
  const p = caller.principal;
  if (p.permissions.has("admin") && p.patterns.includes("*")) return p;
  throw new AppError("forbidden", `token ${p.name} is not a server administrator (needs admin on "*")`);
}
