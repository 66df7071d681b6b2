// The cache's signing keys, as verbs need them: decrypted only in memory, only to sign.
import { type PublicKey, parsePublicKey, type SecretKey, signFingerprint } from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";

export async function activeSecretKeys(ctx: Context, cacheId: number): Promise<SecretKey[]> {
  const rows = await ctx.repo.signingKeys(cacheId);
  return rows.filter((row) => row.active).map((row) => ctx.secrets.openSigningKey(row.secretEncrypted));
}

export async function signWithCacheKeys(
  ctx: Context,
  cacheId: number,
  fingerprint: string,
): Promise<string[]> {
  const keys = await activeSecretKeys(ctx, cacheId);
  if (keys.length === 0) throw new Error(`cache ${cacheId} has no active signing key`);
  return keys.map((key) => signFingerprint(key, fingerprint));
}

export function upstreamKeys(cache: CacheRow): PublicKey[] {
  return cache.upstreamKeys
    .split(/\s+/)
    .filter((line) => line.length > 0)
    .map((line) => parsePublicKey(line));
}
