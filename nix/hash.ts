// SHA-256 hashes as Nix writes them in narinfo files and fingerprints.
//
// Canonical form (what Nix writes, and what this module returns): `sha256:<52 nix32 characters>`.
// Accepted on input, as Nix's Hash::parseAnyPrefixed accepts them (the length of the digest tells the base):
//   sha256:<52 nix32>   sha256:<64 base16, either case>   sha256:<44 base64 with "=" padding>
//   sha256-<44 base64>  (SRI)
// Everything else is refused: other algorithms (md5, sha1, sha512), bare digests without an algorithm, wrong
// lengths. Base64 must be canonical (zero unused bits), so each hash has one base64 spelling.

import { NixFormatError, quote } from "./errors.ts";
import { decodeNix32, encodeNix32 } from "./nix32.ts";

export const SHA256_SIZE = 32;

/** A parsed SHA-256 digest. */
export interface Sha256 {
  readonly bytes: Uint8Array;
}

const NIX32_LEN = 52;
const BASE16_LEN = 64;
const BASE64_LEN = 44;
const BASE16_RE = /^[0-9a-fA-F]{64}$/;
const BASE64_RE = /^[A-Za-z0-9+/]{43}=$/;

function decodeBase64Digest(digest: string, whole: string): Uint8Array {
  if (!BASE64_RE.test(digest)) throw new NixFormatError(`invalid base64 in hash ${quote(whole)}`);
  const bytes = Buffer.from(digest, "base64");
  if (bytes.length !== SHA256_SIZE || bytes.toString("base64") !== digest) {
    throw new NixFormatError(`non-canonical base64 in hash ${quote(whole)}`);
  }
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** Parse a SHA-256 hash in any form Nix accepts; returns its 32 bytes. */
export function parseHash(s: string): Uint8Array {
  if (s.startsWith("sha256:")) {
    const digest = s.slice(7);
    switch (digest.length) {
      case NIX32_LEN:
        try {
          return decodeNix32(digest);
        } catch (e) {
          if (e instanceof NixFormatError) throw new NixFormatError(`invalid hash ${quote(s)}: ${e.message}`);
          throw e;
        }
      case BASE16_LEN:
        if (!BASE16_RE.test(digest)) throw new NixFormatError(`invalid base16 in hash ${quote(s)}`);
        return new Uint8Array(Buffer.from(digest, "hex"));
      case BASE64_LEN:
        return decodeBase64Digest(digest, s);
      default:
        throw new NixFormatError(
          `invalid hash ${quote(s)}: a sha256 digest has 52 (nix32), 64 (base16) or 44 (base64) characters, not ${digest.length}`,
        );
    }
  }
  if (s.startsWith("sha256-")) {
    const digest = s.slice(7);
    if (digest.length !== BASE64_LEN) {
      throw new NixFormatError(`invalid SRI hash ${quote(s)}: expected 44 base64 characters`);
    }
    return decodeBase64Digest(digest, s);
  }
  const algo = /^(md5|sha1|sha512)[:-]/.exec(s);
  if (algo)
    throw new NixFormatError(`unsupported hash algorithm ${algo[1]} in ${quote(s)}: only sha256 is used`);
  throw new NixFormatError(`invalid hash ${quote(s)}: expected "sha256:<digest>" or "sha256-<base64>"`);
}

/** Canonical `sha256:<nix32>` form of a 32-byte digest. */
export function formatHash(bytes: Uint8Array): string {
  if (bytes.length !== SHA256_SIZE) {
    throw new NixFormatError(`a sha256 digest has ${SHA256_SIZE} bytes, not ${bytes.length}`);
  }
  return `sha256:${encodeNix32(bytes)}`;
}

/** Any accepted spelling -> canonical `sha256:<nix32>`. */
export function normaliseHash(s: string): string {
  return formatHash(parseHash(s));
}

/** Equality of two hashes given as bytes or in any accepted spelling (throws if a string is not a hash). */
export function hashesEqual(a: Uint8Array | string, b: Uint8Array | string): boolean {
  const x = typeof a === "string" ? parseHash(a) : a;
  const y = typeof b === "string" ? parseHash(b) : b;
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}
