// Public API of nix/: the pure Nix formats that the server and the hook share (no I/O, nothing of ours).

export { NixFormatError } from "./errors.ts";
export type { Sha256 } from "./hash.ts";
export { formatHash, hashesEqual, normaliseHash, parseHash, SHA256_SIZE } from "./hash.ts";
export type {
  NarListingDirectory,
  NarListingNode,
  NarListingRegular,
  NarListingSymlink,
  NarSummary,
} from "./nar.ts";
export { formatListing, MAX_NAR_NAME_LENGTH, MAX_NAR_TARGET_LENGTH, NarReader, readNar } from "./nar.ts";
export type { NarInfo } from "./narinfo.ts";
export { formatNarInfo, parseNarInfo, UNKNOWN_DERIVER } from "./narinfo.ts";
export { decodeNix32, encodeNix32, NIX32_ALPHABET, nix32Length } from "./nix32.ts";
export type { FingerprintInput, PublicKey, SecretKey } from "./signing.ts";
export {
  fingerprint,
  formatPublicKey,
  formatSecretKey,
  generateSecretKey,
  parsePublicKey,
  parseSecretKey,
  publicKeyOf,
  signFingerprint,
  verifyNarInfo,
  verifySignature,
} from "./signing.ts";
export type { StorePath, StorePathHash } from "./store-path.ts";
export {
  DEFAULT_STORE_DIR,
  isStorePathHash,
  MAX_STORE_PATH_NAME_LENGTH,
  parseStorePath,
  parseStorePathBasename,
  parseStorePathHash,
  STORE_PATH_HASH_LENGTH,
} from "./store-path.ts";
