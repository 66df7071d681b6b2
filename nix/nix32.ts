// Nix's base-32 ("nix32"), as used in store path hashes and `sha256:` hashes.
//
// PROTOCOL.md: alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no e, o, u, t); a hash of `size` bytes is written
// as ceil(size * 8 / 5) characters, from the last character to the first:
//   for n = len-1 down to 0: b = n*5, i = b>>3, j = b&7,
//     c = ((h[i] >> j) | (h[i+1] << (8-j))) & 0x1f     (h[i+1] taken as 0 past the end)
// So the first character holds the highest bits. Decoding runs the same loop backwards and, like Nix,
// rejects a string whose leftover high bits (those past the last byte) are not zero, so that every byte
// string has exactly one encoding.

import { NixFormatError, quote } from "./errors.ts";

export const NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz";

// char code -> digit, or -1
const DIGIT_OF = new Int8Array(128).fill(-1);
for (let d = 0; d < NIX32_ALPHABET.length; d++) DIGIT_OF[NIX32_ALPHABET.charCodeAt(d)] = d;

/** Length of the nix32 encoding of `byteLength` bytes (52 for sha256, 32 for a store path hash). */
export function nix32Length(byteLength: number): number {
  return Math.ceil((byteLength * 8) / 5);
}

export function encodeNix32(bytes: Uint8Array): string {
  const len = nix32Length(bytes.length);
  let out = "";
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    const lo = bytes[i]! >> j;
    const hi = i + 1 < bytes.length ? bytes[i + 1]! << (8 - j) : 0;
    out += NIX32_ALPHABET[(lo | hi) & 0x1f];
  }
  return out;
}

export function decodeNix32(s: string): Uint8Array {
  const size = Math.floor((s.length * 5) / 8);
  if (nix32Length(size) !== s.length) {
    throw new NixFormatError(
      `invalid nix32 string ${quote(s)}: length ${s.length} encodes no whole number of bytes`,
    );
  }
  const out = new Uint8Array(size);
  const len = s.length;
  for (let n = 0; n < len; n++) {
    const code = s.charCodeAt(len - n - 1);
    const digit = code < 128 ? DIGIT_OF[code]! : -1;
    if (digit < 0) {
      throw new NixFormatError(
        `invalid nix32 string ${quote(s)}: ${quote(s[len - n - 1]!)} is not a nix32 character`,
      );
    }
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    out[i] = out[i]! | ((digit << j) & 0xff);
    const carry = digit >> (8 - j);
    if (i + 1 < size) {
      out[i + 1] = out[i + 1]! | carry;
    } else if (carry !== 0) {
      throw new NixFormatError(
        `invalid nix32 string ${quote(s)}: its first character sets bits past the hash`,
      );
    }
  }
  return out;
}
