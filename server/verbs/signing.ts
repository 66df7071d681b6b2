// The cache's signing keys, as verbs need them: decrypted only in memory, only to sign.
import { type PublicKey, parsePublicKey, type SecretKey } from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow } from "../db/repo.ts";

/** The cache's active signing keys, to sign with; a cache always has one, so none is an error. */
export async function activeSecretKeys(ctx: Context, cacheId: number): Promise<SecretKey[]> {
  const rows = await ctx.repo.signingKeys(cacheId);
  const keys = rows.filter((row) => row.active).map((row) => ctx.secrets.openSigningKey(row.secretEncrypted));
  if (keys.length === 0) throw new Error(`cache ${cacheId} has no active signing key`);
  return keys;
}

// Parsing a public key decompresses its curve point; a push checks a cache's upstream keys once per path.
// The parse of each distinct key list is kept (a pure function of the text), up to a bound.
const parsedUpstreamKeys = new Map<string, readonly PublicKey[]>();
const PARSED_LISTS_MAX = 64;

export function upstreamKeys(cache: CacheRow): readonly PublicKey[] {
  const text = cache.upstreamKeys;
  let keys = parsedUpstreamKeys.get(text);
  if (!keys) {
    keys = text
      .split(/\s+/)
      .filter((line) => line.length > 0)
      .map((line) => parsePublicKey(line));
    if (parsedUpstreamKeys.size >= PARSED_LISTS_MAX) parsedUpstreamKeys.clear();
    parsedUpstreamKeys.set(text, keys);
  }
  return keys;
}
