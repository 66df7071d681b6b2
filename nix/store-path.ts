// Nix store paths: `<storeDir>/<hash>-<name>`.
//
// PROTOCOL.md: `/nix/store/<32 nix32 chars>-<name>`; name chars `[A-Za-z0-9+\-._?=]`, not starting with `.`,
// at most 211 characters. The hash part is the nix32 encoding of 20 bytes (160 bits: every 32-character nix32
// string is valid). A basename is `<hash>-<name>`; narinfo References and Deriver hold basenames, StorePath
// holds the full path.

import { NixFormatError, quote } from "./errors.ts";

export const DEFAULT_STORE_DIR = "/nix/store";
export const STORE_PATH_HASH_LENGTH = 32;
export const MAX_STORE_PATH_NAME_LENGTH = 211;

export type StorePathHash = string & { readonly __brand: "StorePathHash" };

export interface StorePath {
  /** e.g. `/nix/store` */
  storeDir: string;
  /** the 32 nix32 characters */
  hash: StorePathHash;
  /** what follows `<hash>-` */
  name: string;
  /** `<hash>-<name>` */
  basename: string;
  /** `<storeDir>/<hash>-<name>` */
  path: string;
}

const HASH_RE = /^[0-9a-df-np-sv-z]{32}$/;
const NAME_CHAR_RE = /^[A-Za-z0-9+\-._?=]+$/;

export function isStorePathHash(s: string): s is StorePathHash {
  return HASH_RE.test(s);
}

export function parseStorePathHash(s: string): StorePathHash {
  if (!isStorePathHash(s)) {
    throw new NixFormatError(`invalid store path hash ${quote(s)}: expected 32 nix32 characters`);
  }
  return s;
}

function checkStoreDir(storeDir: string): void {
  if (!storeDir.startsWith("/") || storeDir.endsWith("/") || storeDir.includes("//")) {
    throw new NixFormatError(
      `invalid store directory ${quote(storeDir)}: must be absolute, without a trailing "/"`,
    );
  }
}

/** Check a store path name (the part after `<hash>-`); returns a reason, or undefined when valid. */
export function storePathNameProblem(name: string): string | undefined {
  if (name.length === 0) return "the name is empty";
  if (name.length > MAX_STORE_PATH_NAME_LENGTH) {
    return `the name is longer than ${MAX_STORE_PATH_NAME_LENGTH} characters`;
  }
  if (name.startsWith(".")) return 'the name starts with "."';
  if (!NAME_CHAR_RE.test(name)) {
    const bad = [...name].find((c) => !NAME_CHAR_RE.test(c)) ?? "";
    return `the name contains the character ${quote(bad)} (allowed: A-Z a-z 0-9 + - . _ ? =)`;
  }
  return undefined;
}

function basenameProblem(basename: string): string | undefined {
  if (basename.length < STORE_PATH_HASH_LENGTH + 2 || basename[STORE_PATH_HASH_LENGTH] !== "-") {
    return "expected <32-char hash>-<name>";
  }
  if (!isStorePathHash(basename.slice(0, STORE_PATH_HASH_LENGTH))) {
    return "the hash part is not 32 nix32 characters";
  }
  return storePathNameProblem(basename.slice(STORE_PATH_HASH_LENGTH + 1));
}

function make(storeDir: string, basename: string): StorePath {
  return {
    storeDir,
    hash: basename.slice(0, STORE_PATH_HASH_LENGTH) as StorePathHash,
    name: basename.slice(STORE_PATH_HASH_LENGTH + 1),
    basename,
    path: `${storeDir}/${basename}`,
  };
}

export function parseStorePathBasename(basename: string, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  checkStoreDir(storeDir);
  const problem = basenameProblem(basename);
  if (problem) throw new NixFormatError(`invalid store path basename ${quote(basename)}: ${problem}`);
  return make(storeDir, basename);
}

export function parseStorePath(path: string, storeDir: string = DEFAULT_STORE_DIR): StorePath {
  checkStoreDir(storeDir);
  const prefix = `${storeDir}/`;
  if (!path.startsWith(prefix)) {
    throw new NixFormatError(`invalid store path ${quote(path)}: it is not in ${storeDir}`);
  }
  const basename = path.slice(prefix.length);
  const problem = basename.includes("/") ? "it names a file inside a store path" : basenameProblem(basename);
  if (problem) throw new NixFormatError(`invalid store path ${quote(path)}: ${problem}`);
  return make(storeDir, basename);
}
