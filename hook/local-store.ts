// What the builder side asks of the local Nix store: path infos of a closure (`nix path-info --json`,
// Nix >= 2.4) and validity through the real Nix commands; a path's NAR straight from the file system (the
// store is world-readable), as `nix-store --dump` writes it, without a Nix process per path.
import { execFile } from "node:child_process";
import type { Readable } from "node:stream";
import { promisify } from "node:util";
import { dumpNar } from "./nar-dump.ts";

const run = promisify(execFile);

export interface LocalPathInfo {
  path: string;
  narHash: string;
  narSize: number;
  /** Full store paths. */
  references: string[];
  deriver?: string;
  ca?: string;
  signatures?: string[];
}

/** Path infos of the given paths (and, with closure, of everything they reference), references first. */
export async function pathInfos(
  paths: readonly string[],
  options: { closure?: boolean } = {},
): Promise<LocalPathInfo[]> {
  if (paths.length === 0) return [];
  const args = ["--extra-experimental-features", "nix-command", "path-info", "--json"];
  if (options.closure) args.push("--recursive");
  const { stdout } = await run("nix", [...args, ...paths], { maxBuffer: 1 << 30 });
  return topologicalOrder(JSON.parse(stdout) as LocalPathInfo[]);
}

/** Orders infos so that every path comes after the paths it references (self-references ignored). */
export function topologicalOrder(infos: readonly LocalPathInfo[]): LocalPathInfo[] {
  const byPath = new Map(infos.map((info) => [info.path, info]));
  const done = new Set<string>();
  const out: LocalPathInfo[] = [];
  const visit = (info: LocalPathInfo, depth: number) => {
    if (done.has(info.path)) return;
    if (depth > infos.length) throw new Error(`reference cycle through ${info.path}`);
    for (const ref of info.references) {
      const dep = byPath.get(ref);
      if (dep && ref !== info.path) visit(dep, depth + 1);
    }
    done.add(info.path);
    out.push(info);
  };
  for (const info of [...infos].sort((a, b) => a.path.localeCompare(b.path))) visit(info, 0);
  return out;
}

/** Those of the given store paths that are not valid in the local store (never built, or collected). */
export async function invalidPaths(paths: readonly string[]): Promise<string[]> {
  if (paths.length === 0) return [];
  const { stdout } = await run("nix-store", ["--check-validity", "--print-invalid", ...paths], {
    maxBuffer: 1 << 26,
  });
  return stdout.split("\n").filter(Boolean);
}

/**
 * The output paths of derivations (`nix-store --query --outputs`), and those derivations that are not in
 * the store any more (their outputs cannot be known).
 */
export async function derivationOutputs(
  drvs: readonly string[],
): Promise<{ outputs: string[]; missing: string[] }> {
  if (drvs.length === 0) return { outputs: [], missing: [] };
  const missing = await invalidPaths(drvs);
  const valid = drvs.filter((d) => !missing.includes(d));
  if (valid.length === 0) return { outputs: [], missing };
  const { stdout } = await run("nix-store", ["--query", "--outputs", ...valid], { maxBuffer: 1 << 26 });
  return { outputs: stdout.split("\n").filter(Boolean), missing };
}

/**
 * The NAR of a store path as a stream, serialised in this process (hook/nar-dump.ts) as `nix-store --dump`
 * would; the stream errors if the path cannot be read.
 */
export function dumpPath(path: string): Readable {
  return dumpNar(path);
}
