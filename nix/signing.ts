// Narinfo signatures: the fingerprint, ed25519 keys in Nix's text format, and Sig lines.
//
// PROTOCOL.md:
//   fingerprint = `1;<StorePath>;<NarHash as sha256:nix32>;<NarSize>;<full reference paths, sorted, comma-joined>`
//                 (ends in `;` when there are no references)
//   Sig line    = `<keyname>:<base64 of the 64-byte ed25519 signature of the fingerprint>`
//   secret key  = `NAME:base64(32-byte seed ‖ 32-byte public key)` (as `nix-store --generate-binary-cache-key` writes)
//   public key  = `NAME:base64(32-byte public key)`
// Nix splits keys and signatures at the first ":", so a key name is non-empty and has no ":". A client checks the
// Sig lines whose key name it trusts and skips the others; a signature of the wrong length is just "not valid".
//
// Signing and verifying use @noble/ed25519 (audited, pure JS; ~4,000 signatures/s here, which is why the
// server signs once at ingest and never on reads: DESIGN.md "Sign once"). Ed25519 is deterministic, so
// signatures equal Nix's byte for byte. Verification is strict RFC 8032 (not ZIP-215), as libsodium in Nix is.

import { randomBytes } from "node:crypto";
import * as ed from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";
import { NixFormatError, quote } from "./errors.ts";
import { normaliseHash } from "./hash.ts";
import type { NarInfo } from "./narinfo.ts";
import { DEFAULT_STORE_DIR, parseStorePath, parseStorePathBasename } from "./store-path.ts";

export interface SecretKey {
  name: string;
  /** the 32-byte ed25519 seed */
  seed: Uint8Array;
  /** the 32-byte ed25519 public key */
  publicKey: Uint8Array;
}

export interface PublicKey {
  name: string;
  /** the 32-byte ed25519 public key */
  key: Uint8Array;
}

export interface FingerprintInput {
  /** full store path */
  storePath: string;
  /** any accepted hash spelling; normalised to `sha256:<nix32>` */
  narHash: string;
  narSize: number;
  /** basenames */
  references: readonly string[];
}

const SEED_SIZE = 32;
const PUBLIC_KEY_SIZE = 32;
const SIGNATURE_SIZE = 64;

// noble's synchronous API needs a synchronous SHA-512.
ed.hashes.sha512 = sha512;

export function fingerprint(info: FingerprintInput, storeDir: string = DEFAULT_STORE_DIR): string {
  const path = parseStorePath(info.storePath, storeDir).path;
  if (!Number.isSafeInteger(info.narSize) || info.narSize <= 0) {
    throw new NixFormatError(`cannot fingerprint ${path}: NarSize ${info.narSize} is not a positive integer`);
  }
  const refs = info.references
    .map((r) => parseStorePathBasename(r, storeDir).path)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `1;${path};${normaliseHash(info.narHash)};${info.narSize};${refs.join(",")}`;
}

function checkKeyName(name: string, what: string): void {
  if (name === "") throw new NixFormatError(`invalid ${what}: the key name is empty`);
  if (name.includes(":"))
    throw new NixFormatError(`invalid ${what}: the key name ${quote(name)} contains ":"`);
  if (/\s/.test(name))
    throw new NixFormatError(`invalid ${what}: the key name ${quote(name)} contains whitespace`);
}

function decodeKeyBase64(text: string, what: string, size: number): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new NixFormatError(`invalid ${what}: the part after ":" is not base64`);
  }
  const bytes = Buffer.from(text, "base64");
  if (bytes.length !== size) {
    throw new NixFormatError(`invalid ${what}: expected ${size} bytes of base64, got ${bytes.length}`);
  }
  return new Uint8Array(bytes);
}

function splitKey(text: string, what: string): [string, string] {
  const trimmed = text.trim();
  const colon = trimmed.indexOf(":");
  if (colon < 0) throw new NixFormatError(`invalid ${what}: expected "NAME:BASE64"`);
  const name = trimmed.slice(0, colon);
  checkKeyName(name, what);
  return [name, trimmed.slice(colon + 1)];
}

function publicKeyFromSeed(seed: Uint8Array): Uint8Array {
  if (seed.length !== SEED_SIZE) throw new NixFormatError(`an ed25519 seed has 32 bytes, not ${seed.length}`);
  return ed.getPublicKey(seed);
}

export function parseSecretKey(text: string): SecretKey {
  const what = "secret key";
  const [name, b64] = splitKey(text, what);
  const bytes = decodeKeyBase64(b64, what, SEED_SIZE + PUBLIC_KEY_SIZE);
  const seed = bytes.slice(0, SEED_SIZE);
  const publicKey = bytes.slice(SEED_SIZE);
  if (!Buffer.from(publicKeyFromSeed(seed)).equals(publicKey)) {
    throw new NixFormatError(
      `invalid secret key ${quote(name)}: its embedded public key does not match its seed`,
    );
  }
  return { name, seed, publicKey };
}

export function formatSecretKey(sk: SecretKey): string {
  checkKeyName(sk.name, "secret key");
  return `${sk.name}:${Buffer.concat([sk.seed, sk.publicKey]).toString("base64")}`;
}

export function parsePublicKey(text: string): PublicKey {
  const what = "public key";
  const [name, b64] = splitKey(text, what);
  const key = decodeKeyBase64(b64, what, PUBLIC_KEY_SIZE);
  try {
    ed.Point.fromBytes(key);
  } catch {
    throw new NixFormatError(`invalid public key ${quote(name)}: not an ed25519 public key`);
  }
  return { name, key };
}

export function formatPublicKey(pk: PublicKey): string {
  checkKeyName(pk.name, "public key");
  return `${pk.name}:${Buffer.from(pk.key).toString("base64")}`;
}

export function generateSecretKey(name: string): SecretKey {
  checkKeyName(name, "key name");
  const seed = new Uint8Array(randomBytes(SEED_SIZE));
  return { name, seed, publicKey: publicKeyFromSeed(seed) };
}

export function publicKeyOf(sk: SecretKey): PublicKey {
  return { name: sk.name, key: sk.publicKey };
}

/** What RFC 8032 derives from a seed before signing: SHA-512(seed) split into the scalar and the prefix. */
interface ExpandedKey {
  scalar: bigint;
  prefix: Uint8Array;
  publicKey: Uint8Array;
}

// noble's sign(message, seed) expands the seed on every call: a SHA-512 and a base-point multiplication
// (the public key) on top of the one multiplication a signature needs, about half its time. A server
// signing every pushed path keeps the expansion per key object; a key object is never mutated.
const expandedKeys = new WeakMap<Uint8Array, ExpandedKey>();
const ORDER = ed.Point.CURVE().n;

function expand(sk: SecretKey): ExpandedKey {
  let expanded = expandedKeys.get(sk.seed);
  if (!expanded) {
    const { scalar, prefix, pointBytes } = ed.utils.getExtendedPublicKey(sk.seed);
    expanded = { scalar, prefix, publicKey: pointBytes };
    expandedKeys.set(sk.seed, expanded);
  }
  return expanded;
}

function littleEndianMod(bytes: Uint8Array): bigint {
  return ed.etc.mod(BigInt(`0x${Buffer.from(bytes).reverse().toString("hex")}`), ORDER);
}

/**
 * The ed25519 signature of `message` (RFC 8032 5.1.6): r = SHA-512(prefix ‖ M) mod L, R = [r]B,
 * k = SHA-512(R ‖ A ‖ M) mod L, S = (r + k·s) mod L; the signature is R ‖ S (little-endian).
 */
function ed25519Sign(sk: SecretKey, message: Uint8Array): Uint8Array {
  const { scalar, prefix, publicKey } = expand(sk);
  const r = littleEndianMod(sha512(ed.etc.concatBytes(prefix, message)));
  const R = ed.Point.BASE.multiply(r).toBytes();
  const k = littleEndianMod(sha512(ed.etc.concatBytes(R, publicKey, message)));
  const S = ed.etc.mod(r + k * scalar, ORDER);
  const signature = new Uint8Array(SIGNATURE_SIZE);
  signature.set(R, 0);
  signature.set(Buffer.from(S.toString(16).padStart(64, "0"), "hex").reverse(), 32);
  return signature;
}

/** `name:base64(ed25519 signature of fp)`, the value of a Sig line. */
export function signFingerprint(sk: SecretKey, fp: string): string {
  const sig = ed25519Sign(sk, new TextEncoder().encode(fp));
  return `${sk.name}:${Buffer.from(sig).toString("base64")}`;
}

/** Does `sig` (a Sig value) verify over `fp` under the key of its name? Unknown names and malformed sigs: false. */
export function verifySignature(keys: readonly PublicKey[], fp: string, sig: string): boolean {
  const colon = sig.indexOf(":");
  if (colon <= 0) return false;
  const name = sig.slice(0, colon);
  const b64 = sig.slice(colon + 1);
  if (!/^[A-Za-z0-9+/]{86}==$/.test(b64)) return false;
  const raw = Buffer.from(b64, "base64");
  if (raw.length !== SIGNATURE_SIZE) return false;
  const data = new TextEncoder().encode(fp);
  // Nix keeps one key per name; trying every key of that name also covers a rotation that kept the name.
  return keys.some((k) => {
    if (k.name !== name) return false;
    try {
      return ed.verify(raw, data, k.key, { zip215: false });
    } catch {
      return false;
    }
  });
}

/** The Sig lines of `info` that verify under `keys` (empty when none does). */
export function verifyNarInfo(
  info: NarInfo,
  keys: readonly PublicKey[],
  storeDir: string = DEFAULT_STORE_DIR,
): string[] {
  const fp = fingerprint(info, storeDir);
  return info.sigs.filter((sig) => verifySignature(keys, fp, sig));
}
