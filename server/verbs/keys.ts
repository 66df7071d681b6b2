// Signing keys per cache: list, generate, import, rotate, retire — and the background pass that keeps every
// path's Sig lines in step with the keys.
//
// Rotation without breaking anyone (Nix checks the Sig lines whose key name it trusts and skips others):
//   1. add a key (generate or import): from now on every push is signed by every active key, old and new;
//      a background pass adds the new key's Sig beside the old one on every existing path;
//   2. clients move to the new public key at their pace; both old-key and new-key clients verify everything;
//   3. retire the old key: it stops signing, the pass completes the new key's Sigs (synchronously, so
//      nothing is left unsigned) and removes the old key's Sig lines. Old-key clients then stop trusting.
// Private keys are sealed with the server secret (secrets.ts) and never leave the server: no view carries one.
//
// The pass (maintainSignatures) is idempotent and runs after each key change and, for 24 h after one, on
// every scheduled collection: a push that signed just before a key change and committed just after it is
// fixed by the next pass.
import {
  fingerprint,
  formatPublicKey,
  formatSecretKey,
  generateSecretKey,
  NixFormatError,
  parseSecretKey,
  publicKeyOf,
  type SecretKey,
  signFingerprint,
} from "../../nix/index.ts";
import type { Context } from "../context.ts";
import type { CacheRow, SigningKeyRow } from "../db/repo.ts";
import { badRequest, conflict, notFound } from "../errors.ts";

const PAGE = 500;
/** After a key change, scheduled runs keep re-checking signatures this long. */
export const KEY_SETTLE_MS = 24 * 60 * 60 * 1000;

export interface KeyView {
  id: number;
  name: string;
  publicKey: string;
  state: "active" | "retired";
  createdAt: number;
  retiredAt: number | null;
  /** Paths carrying this key's Sig line (all of them once a rotation's pass is done). */
  signedPaths: number;
}

export async function listKeys({ ctx, input }: { ctx: Context; input: { cache: CacheRow } }) {
  const keys = await ctx.repo.allSigningKeys(input.cache.id);
  const sizes = await ctx.repo.cacheSizes(input.cache.id);
  const views: KeyView[] = [];
  for (const key of keys) views.push(await keyView(ctx, input.cache, key));
  return { cache: input.cache.name, paths: sizes.paths, keys: views };
}

async function keyView(ctx: Context, cache: CacheRow, key: SigningKeyRow): Promise<KeyView> {
  return {
    id: key.id,
    name: key.name,
    publicKey: key.publicKey,
    state: key.retiredAt === null && key.active ? "active" : "retired",
    createdAt: key.createdAt,
    retiredAt: key.retiredAt,
    signedPaths: await ctx.repo.countPathsSignedBy(cache.id, key.name),
  };
}

function nextKeyName(cache: CacheRow, keys: SigningKeyRow[]): string {
  const taken = new Set(keys.map((k) => k.name));
  for (let n = keys.length + 1; ; n++) {
    const name = `${cache.name}-${n}`;
    if (!taken.has(name)) return name;
  }
}

/**
 * Adds an active key, generated (optionally named) or imported from a Nix secret key file's text, and starts
 * the background pass that signs existing paths with it. Rotation is this, then `retireKey` of the old one.
 */
export async function addKey({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow; name?: string | undefined; secretKey?: string | undefined; background?: boolean };
}) {
  const { cache } = input;
  const existing = await ctx.repo.allSigningKeys(cache.id);
  let secret: SecretKey;
  if (input.secretKey !== undefined) {
    try {
      secret = parseSecretKey(input.secretKey.trim());
    } catch (error) {
      if (error instanceof NixFormatError) throw badRequest(`invalid secret key: ${error.message}`);
      throw error;
    }
    if (input.name !== undefined && input.name !== secret.name)
      throw badRequest(`the key file names its key ${secret.name}, not ${input.name}`);
  } else {
    const name = input.name ?? nextKeyName(cache, existing);
    if (!/^[A-Za-z0-9._+-]{1,100}$/.test(name))
      throw badRequest(`invalid key name ${JSON.stringify(name)}: use letters, digits and . _ + -`);
    secret = generateSecretKey(name);
  }
  const publicKey = formatPublicKey(publicKeyOf(secret));
  if (existing.some((k) => k.name === secret.name))
    throw conflict(`cache ${cache.name} already has a key named ${secret.name}`);
  if (existing.some((k) => k.publicKey === publicKey && k.retiredAt === null))
    throw conflict(`cache ${cache.name} already has this key`);
  const row = await ctx.repo.addSigningKey(cache.id, {
    name: secret.name,
    publicKey,
    secretEncrypted: ctx.secrets.seal(formatSecretKey(secret)),
  });
  ctx.log.info({ cache: cache.name, key: row.name }, "signing key added; re-signing existing paths");
  if (input.background !== false) {
    void maintainSignatures({ ctx, input: { cache } }).catch((error) =>
      ctx.log.warn({ err: error, cache: cache.name }, "re-signing failed; the next scheduled run retries"),
    );
  }
  return { key: await keyView(ctx, cache, row), resigning: true };
}

export async function retireKey({ ctx, input }: { ctx: Context; input: { cache: CacheRow; keyId: number } }) {
  const { cache } = input;
  const keys = await ctx.repo.allSigningKeys(cache.id);
  const key = keys.find((k) => k.id === input.keyId);
  if (!key) throw notFound(`cache ${cache.name} has no key with id ${input.keyId}`);
  if (key.retiredAt !== null) throw conflict(`key ${key.name} is already retired`);
  const others = keys.filter((k) => k.id !== key.id && k.retiredAt === null && k.active);
  if (others.length === 0)
    throw conflict(`key ${key.name} is the only active key of cache ${cache.name}: add a new key first`);
  await ctx.repo.retireSigningKey(key.id, ctx.clock());
  const pass = await maintainSignatures({ ctx, input: { cache } });
  ctx.log.info({ cache: cache.name, key: key.name, ...pass }, "signing key retired");
  const retired = (await ctx.repo.allSigningKeys(cache.id)).find((k) => k.id === key.id)!;
  return { key: await keyView(ctx, cache, retired), ...pass };
}

/** Whether the scheduled run should check this cache's signatures (a key changed recently). */
export function keysUnsettled(keys: readonly SigningKeyRow[], now: number): boolean {
  return keys.some(
    (k) => now - k.createdAt < KEY_SETTLE_MS || (k.retiredAt !== null && now - k.retiredAt < KEY_SETTLE_MS),
  );
}

/**
 * Brings every path's Sig lines in step with the keys: adds a Sig for each active key that lacks one, removes
 * the Sig lines of retired keys, keeps any other line (upstream signatures). Idempotent, safe to run on
 * several replicas at once (each update applies only if the row still has the lines it read).
 */
export async function maintainSignatures({
  ctx,
  input,
}: {
  ctx: Context;
  input: { cache: CacheRow };
}): Promise<{ checked: number; signed: number; stripped: number }> {
  const { cache } = input;
  const keys = await ctx.repo.allSigningKeys(cache.id);
  const active = keys
    .filter((k) => k.active && k.retiredAt === null)
    .map((k) => ctx.secrets.openSigningKey(k.secretEncrypted));
  const activeNames = new Set(active.map((k) => k.name));
  const retiredNames = new Set(
    keys.filter((k) => k.retiredAt !== null && !activeNames.has(k.name)).map((k) => k.name),
  );
  let after = 0;
  let checked = 0;
  let signed = 0;
  let stripped = 0;
  let retries = 0;
  for (;;) {
    const page = await ctx.repo.signaturePage(cache.id, after, PAGE);
    if (page.length === 0) break;
    const updates: { id: number; from: string; to: string; signed: number; removed: number }[] = [];
    for (const path of page) {
      const lines = path.sigs === "" ? [] : path.sigs.split("\n");
      const nameOf = (line: string) => line.slice(0, line.indexOf(":"));
      const kept = lines.filter((line) => !retiredNames.has(nameOf(line)));
      const removed = lines.length - kept.length;
      const have = new Set(kept.map(nameOf));
      const missing = active.filter((k) => !have.has(k.name));
      if (removed === 0 && missing.length === 0) continue;
      if (missing.length > 0) {
        const fp = fingerprint(
          {
            storePath: path.storePath,
            narHash: path.narHash,
            narSize: path.narSize,
            references: path.references === "" ? [] : path.references.split(" "),
          },
          cache.storeDir,
        );
        for (const key of missing) kept.unshift(signFingerprint(key, fp));
      }
      updates.push({ id: path.id, from: path.sigs, to: kept.join("\n"), signed: missing.length, removed });
    }
    const applied = await ctx.repo.replaceSigs(updates);
    // A row changed under us (another replica's pass, a retirement): read the page again and redo it.
    if (applied.length < updates.length && retries++ < 5) continue;
    for (const u of updates.filter((x) => applied.includes(x.id))) {
      signed += u.signed;
      stripped += u.removed;
    }
    retries = 0;
    checked += page.length;
    after = page[page.length - 1]!.id;
  }
  return { checked, signed, stripped };
}
