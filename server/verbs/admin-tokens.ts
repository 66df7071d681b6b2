// Token administration: list (never a secret), revoke, and who may manage which token.
//
// Multi-tenancy: a token with `admin` administers the caches its patterns match. It may manage (create,
// list, revoke) tokens whose every cache pattern lies within its own: a pattern identical to one of its
// admin patterns, or a literal cache name one of them matches. A server administrator (admin on "*")
// manages every token. Revocation is immediate on every replica: each request looks its token up in the
// database (server/verbs/auth.ts keeps no cache of tokens).
import type { Context } from "../context.ts";
import type { TokenRow } from "../db/repo.ts";
import { conflict, forbidden, notFound } from "../errors.ts";
import { type Permission, type Principal, patternMatches } from "./auth.ts";

export interface TokenView {
  id: number;
  name: string;
  prefix: string;
  caches: string[];
  permissions: Permission[];
  createdAt: number;
  lastUsedAt: number | null;
  expiresAt: number | null;
  revokedAt: number | null;
  state: "active" | "expired" | "revoked";
}

export function isServerAdmin(p: Principal): boolean {
  return p.permissions.has("admin") && p.patterns.includes("*");
}

/** Whether an admin token's scope covers a cache pattern (see the header). */
export function coversPattern(p: Principal, pattern: string): boolean {
  if (!p.permissions.has("admin")) return false;
  if (p.patterns.includes("*")) return true;
  if (p.patterns.includes(pattern)) return true;
  return !pattern.includes("*") && p.patterns.some((own) => patternMatches(own, pattern));
}

export function canManagePatterns(p: Principal, patterns: readonly string[]): boolean {
  return patterns.length > 0 && patterns.every((pattern) => coversPattern(p, pattern));
}

export function tokenView(row: TokenRow, now: number): TokenView {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    caches: row.caches.split("\n").filter(Boolean),
    permissions: row.permissions.split(",").filter(Boolean) as Permission[],
    createdAt: row.createdAt,
    lastUsedAt: row.lastUsedAt,
    expiresAt: row.expiresAt,
    revokedAt: row.revokedAt,
    state:
      row.revokedAt !== null
        ? "revoked"
        : row.expiresAt !== null && row.expiresAt <= now
          ? "expired"
          : "active",
  };
}

export async function listTokens({
  ctx,
  input,
}: {
  ctx: Context;
  input: { principal: Principal; includeInactive: boolean };
}): Promise<TokenView[]> {
  const now = ctx.clock();
  return (await ctx.repo.listTokens())
    .map((row) => tokenView(row, now))
    .filter((view) => canManagePatterns(input.principal, view.caches))
    .filter((view) => input.includeInactive || view.state === "active");
}

export async function revokeToken({
  ctx,
  input,
}: {
  ctx: Context;
  input: { principal: Principal; id: number };
}): Promise<TokenView> {
  const row = await ctx.repo.tokenById(input.id);
  const now = ctx.clock();
  // A token outside the caller's scope is reported as absent, so scopes cannot be probed.
  if (!row || !canManagePatterns(input.principal, tokenView(row, now).caches))
    throw notFound(`no token with id ${input.id}`);
  const view = tokenView(row, now);
  if (view.state === "active" && view.permissions.includes("admin") && view.caches.includes("*")) {
    const others = (await ctx.repo.listTokens())
      .map((r) => tokenView(r, now))
      .filter(
        (v) =>
          v.id !== row.id &&
          v.state === "active" &&
          v.permissions.includes("admin") &&
          v.caches.includes("*"),
      );
    if (others.length === 0)
      throw conflict("refusing to revoke the last server administrator token: create another first");
  }
  await ctx.repo.revokeToken(row.id, now);
  ctx.log.info({ token: row.id, name: row.name, by: input.principal.tokenId }, "token revoked");
  return tokenView({ ...row, revokedAt: row.revokedAt ?? now }, now);
}

/** Throws unless the caller may issue a token for these patterns. */
export function authorizeTokenScope(principal: Principal, patterns: readonly string[]): void {
  if (!canManagePatterns(principal, patterns)) {
    throw forbidden(
      `token ${principal.name} may not issue tokens for ${patterns.join(", ")}: its admin scope is ${
        principal.permissions.has("admin") ? principal.patterns.join(", ") : "empty"
      }`,
    );
  }
}
