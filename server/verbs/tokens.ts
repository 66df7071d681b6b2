// Issuing tokens. The secret is returned once, here, and only its hash is kept.
import type { Context } from "../context.ts";
import { badRequest } from "../errors.ts";
import { hashTokenSecret, newTokenSecret, PERMISSIONS, type Permission } from "./auth.ts";

export interface NewToken {
  name: string;
  caches: string[];
  permissions: Permission[];
  expiresAt?: number | null | undefined;
}

export async function createToken({ ctx, input }: { ctx: Context; input: NewToken }) {
  if (input.caches.length === 0) throw badRequest("a token needs at least one cache pattern, e.g. main or *");
  for (const pattern of input.caches) {
    if (!/^[a-z0-9*][a-z0-9._*-]{0,62}$/.test(pattern))
      throw badRequest(`invalid cache pattern ${JSON.stringify(pattern)}`);
  }
  const unknown = input.permissions.filter((p) => !(PERMISSIONS as readonly string[]).includes(p));
  if (unknown.length > 0 || input.permissions.length === 0) {
    throw badRequest(`permissions must be a non-empty list of ${PERMISSIONS.join(", ")}`);
  }
  if (input.expiresAt != null && input.expiresAt <= ctx.clock()) throw badRequest("expiresAt is in the past");
  const secret = newTokenSecret();
  const row = await ctx.repo.createToken({
    name: input.name,
    secretHash: hashTokenSecret(secret),
    prefix: secret.slice(0, 10),
    caches: input.caches.join("\n"),
    permissions: [...new Set(input.permissions)].join(","),
    expiresAt: input.expiresAt ?? null,
  });
  return {
    id: row.id,
    name: row.name,
    token: secret,
    prefix: row.prefix,
    caches: input.caches,
    permissions: [...new Set(input.permissions)],
    expiresAt: row.expiresAt,
    createdAt: row.createdAt,
  };
}
