// Test fixtures made with the real Nix: directory trees dumped by `nix-store --dump`, fake store paths.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encodeNix32, formatHash } from "../../nix/index.ts";
import { testTmp } from "./services.ts";

/** A file's contents, an executable, a symlink, or a directory (`{ dir: { name: spec } }`). */
export type TreeSpec =
  | string
  | Buffer
  | { executable: string | Buffer }
  | { symlink: string }
  | { dir: { [name: string]: TreeSpec } };

function write(path: string, spec: TreeSpec): void {
  if (typeof spec === "string" || Buffer.isBuffer(spec)) writeFileSync(path, spec);
  else if ("executable" in spec) {
    writeFileSync(path, spec.executable);
    chmodSync(path, 0o755);
  } else if ("symlink" in spec) symlinkSync(spec.symlink, path);
  else {
    mkdirSync(path);
    for (const [name, child] of Object.entries(spec.dir)) write(join(path, name), child);
  }
}

/** Writes the tree under a fresh temp dir and returns its path. */
export function makeTree(spec: TreeSpec): string {
  const root = join(mkdtempSync(join(testTmp(), "tree-")), "root");
  write(root, spec);
  return root;
}

/** The NAR of a path, as the real `nix-store --dump` writes it. */
export function dumpNar(path: string): Buffer {
  return execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 30 });
}

export function narOf(spec: TreeSpec): Buffer {
  return dumpNar(makeTree(spec));
}

export function fakeStorePath(name: string): string {
  return `/nix/store/${encodeNix32(randomBytes(20))}-${name}`;
}

export function hashOf(storePath: string): string {
  return storePath.slice("/nix/store/".length, "/nix/store/".length + 32);
}

export interface PathInfo {
  storePath: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string;
  system?: string;
  ca?: string;
}

export function infoFor(storePath: string, nar: Buffer, references: string[] = []): PathInfo {
  return {
    storePath,
    narHash: formatHash(createHash("sha256").update(nar).digest()),
    narSize: nar.length,
    references: references.map((r) => r.slice(r.lastIndexOf("/") + 1)),
  };
}
