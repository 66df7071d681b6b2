// Test support only (never imported by the library): drive the real Nix installed on this machine to make
// golden data. `nix-store --dump` and `nix-hash` for NARs and their hashes; a chroot store under a temp dir
// plus `nix copy --to file://…` for narinfo, .ls listings and signatures exactly as Nix writes them. The Nix
// config is hermetic (own NIX_CONF_DIR and XDG_CACHE_HOME), nothing touches /nix or the user's settings.
//
// Like test/support/services.ts: when Nix is missing the suite is skipped loudly, and under CI=true it fails.

import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";

const inCi = process.env.CI === "true" || process.env.CI === "1";

export interface RealNix {
  /** run a Nix command with the hermetic config; returns stdout */
  run(command: string, args: readonly string[], input?: Uint8Array): Buffer;
  /** a fresh directory under this suite's temp dir */
  tempDir(label: string): string;
}

let cached: RealNix | null | undefined;

/** The real Nix, or undefined (after a loud message) when it is not installed. */
export function realNix(): RealNix | undefined {
  if (cached !== undefined) return cached ?? undefined;
  try {
    execFileSync("nix-store", ["--version"], { stdio: "pipe" });
  } catch {
    const message = "the real Nix (nix-store, nix-hash, nix) is not installed: apt-get install -y nix-bin";
    if (inCi) throw new Error(`CI=true and ${message}`);
    process.stderr.write(`\n!!!!!!!! SKIPPING golden tests: ${message} !!!!!!!!\n\n`);
    cached = null;
    return undefined;
  }
  const base = mkdtempSync(join(process.env.NIXSTASH_TEST_TMP ?? tmpdir(), "nix-golden-"));
  process.on("exit", () => {
    // store paths are read-only: make them writable so the scratch tree can go
    execFileSync("chmod", ["-R", "u+w", base]);
    rmSync(base, { recursive: true, force: true });
  });
  const confDir = join(base, "conf");
  mkdirSync(confDir);
  writeFileSync(
    join(confDir, "nix.conf"),
    "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n",
  );
  const env = { ...process.env, NIX_CONF_DIR: confDir, XDG_CACHE_HOME: join(base, "cache"), NIX_PATH: "" };
  let counter = 0;
  cached = {
    run(command, args, input) {
      return execFileSync(command, args, {
        env,
        input,
        maxBuffer: 1 << 30,
        stdio: ["pipe", "pipe", "pipe"],
      });
    },
    tempDir(label) {
      const dir = join(base, `${label}-${counter++}`);
      mkdirSync(dir, { recursive: true });
      return dir;
    },
  };
  return cached;
}

/** An executable regular file in a TreeSpec. */
export class Exec {
  constructor(readonly content: string | Uint8Array) {}
}
/** A symlink in a TreeSpec. */
export class Link {
  constructor(readonly target: string) {}
}
/** A file tree to materialise: string/Uint8Array = regular file, Exec, Link, plain object = directory. */
export type TreeSpec = string | Uint8Array | Exec | Link | { readonly [name: string]: TreeSpec };

export function writeTree(path: string, spec: TreeSpec): void {
  if (typeof spec === "string" || spec instanceof Uint8Array) {
    writeFileSync(path, spec);
  } else if (spec instanceof Exec) {
    writeFileSync(path, spec.content);
    chmodSync(path, 0o755);
  } else if (spec instanceof Link) {
    symlinkSync(spec.target, path);
  } else {
    mkdirSync(path);
    for (const [name, child] of Object.entries(spec)) writeTree(join(path, name), child);
  }
}

/** What `nix copy --to file://…?compression=none&write-nar-listing=true&secret-key=…` wrote for one path. */
export interface CopiedPath {
  storePath: string;
  narinfo: string;
  nar: Buffer;
  listing: string;
}

/**
 * Copy `storePath` (with its closure) from the chroot store at `storeRoot` to a new file:// cache, uncompressed,
 * with listings, signed with `secretKeyFile`; `get` returns the files Nix wrote for one path.
 */
export function copyToFileCache(
  nix: RealNix,
  storeRoot: string,
  storePath: string,
  secretKeyFile: string,
): {
  cacheDir: string;
  get(storePath: string): CopiedPath;
} {
  const cacheDir = nix.tempDir("cache");
  nix.run("nix", [
    "copy",
    "--store",
    storeRoot,
    "--to",
    `file://${cacheDir}?compression=none&write-nar-listing=true&secret-key=${secretKeyFile}`,
    storePath,
  ]);
  return {
    cacheDir,
    get(path) {
      const hash = path.slice("/nix/store/".length, "/nix/store/".length + 32);
      const narinfo = readFileSync(join(cacheDir, `${hash}.narinfo`), "utf8");
      const url = /^URL: (.*)$/m.exec(narinfo)?.[1];
      if (!url) throw new Error(`no URL in ${hash}.narinfo`);
      return {
        storePath: path,
        narinfo,
        nar: readFileSync(join(cacheDir, url)),
        listing: readFileSync(join(cacheDir, `${hash}.ls`), "utf8"),
      };
    },
  };
}

/** `nix store add-path` into the chroot store at `storeRoot`; returns the (logical /nix/store) path. */
export function addPath(nix: RealNix, storeRoot: string, dir: string, name: string): string {
  return nix.run("nix", ["--store", storeRoot, "store", "add-path", "--name", name, dir]).toString().trim();
}

/** A file:// cache written by the real Nix, signed by a key the real Nix generated. */
export interface GoldenCache {
  /** `nix-store --generate-binary-cache-key` output, verbatim */
  secretKeyText: string;
  publicKeyText: string;
  /** `tree` added with `nix store add-path` (no references, CA fixed:r:sha256) */
  tree: CopiedPath;
  /** a builtins.toFile path that references `dep` (CA text:sha256) */
  user: CopiedPath;
  dep: CopiedPath;
}

export function goldenCache(nix: RealNix, tree: TreeSpec, keyName = "nixstash-test-1"): GoldenCache {
  const work = nix.tempDir("golden");
  const sk = join(work, "sk");
  const pk = join(work, "pk");
  nix.run("nix-store", ["--generate-binary-cache-key", keyName, sk, pk]);
  const storeRoot = join(work, "store");
  const treeDir = join(work, "tree");
  writeTree(treeDir, tree);
  const treePath = addPath(nix, storeRoot, treeDir, "golden-tree");
  // A Nix antiquotation (not a JS template): the user file refers to dep's store path.
  const antiquote = (name: string) => `\${${name}}`;
  const expr = `let dep = builtins.toFile "golden-dep" "hi"; in builtins.toFile "golden-user" "uses ${antiquote("dep")}\n"`;
  const userPath = nix.run("nix", ["eval", "--raw", "--store", storeRoot, "--expr", expr]).toString().trim();
  const cache = copyToFileCache(nix, storeRoot, treePath, sk);
  nix.run("nix", [
    "copy",
    "--store",
    storeRoot,
    "--to",
    `file://${cache.cacheDir}?compression=none&write-nar-listing=true&secret-key=${sk}`,
    userPath,
  ]);
  const user = cache.get(userPath);
  const depBasename = /^References: (\S+)$/m.exec(user.narinfo)?.[1];
  if (!depBasename) throw new Error("golden-user has no reference");
  return {
    secretKeyText: readFileSync(sk, "utf8"),
    publicKeyText: readFileSync(pk, "utf8"),
    tree: cache.get(treePath),
    user,
    dep: cache.get(`/nix/store/${depBasename}`),
  };
}
