// The benchmark workload: one closure of a few hundred store paths built by the real Nix client, without
// nixpkgs (`builtins.derivation` with /bin/sh builders). Contents are real binaries: slices and
// concatenations of files under /usr/lib, chosen by a seeded generator, so a rerun on the same machine
// builds the same derivations and gets the same store paths (and Nix simply finds them valid).
//
// Size spread (defaults): ~280 small paths (1 KiB to ~600 KiB, a few files each), ~20 of a few MB, 4 of
// tens of MB and one of several hundred MB; every path refers to up to three earlier ones, and `top`
// refers to every path no other path refers to, so the closure of `top` is the whole workload.
//
//   node --import tsx bench/workload.ts [--seed N] [--dir DIR]     builds it and prints the top path
import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { childrenCpuSeconds } from "./proc-cpu.ts";

const execFileP = promisify(execFile);

export interface WorkloadOptions {
  seed: number;
  /** Scratch dir for nix.conf, the generated expression and the client's caches. */
  dir: string;
  small?: number;
  medium?: number;
  large?: number;
  /** Size of the one huge path, bytes. */
  hugeBytes?: number;
}

export interface Workload {
  top: string;
  /** Every path of the closure, references first (as `nix path-info --recursive` lists them). */
  paths: { path: string; narSize: number }[];
  narBytes: number;
  seed: number;
  expression: string;
}

/** mulberry32: a tiny seeded generator; the same seed gives the same workload. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Regular files under /usr/lib (no symlinks), sorted by path, with their sizes. */
function libraryFiles(): { file: string; size: number }[] {
  const out: { file: string; size: number }[] = [];
  const walk = (dir: string) => {
    let entries: import("node:fs").Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && /^[A-Za-z0-9+\-._/]+$/.test(p)) {
        const size = statSync(p).size;
        if (size > 0) out.push({ file: p, size });
      }
    }
  };
  walk("/usr/lib");
  return out.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
}

interface Spec {
  name: string;
  /** Each output file: the bytes of `sources` concatenated, cut to `bytes`. */
  files: { sources: string[]; bytes: number }[];
  refs: number[];
}

export function planWorkload(options: WorkloadOptions): Spec[] {
  const rand = seeded(options.seed);
  const pick = <T>(items: T[]): T => items[Math.floor(rand() * items.length)]!;
  const lib = libraryFiles();
  const smallFiles = lib.filter((f) => f.size >= 512 && f.size <= 600 * 1024);
  const mediumFiles = lib.filter((f) => f.size > 600 * 1024 && f.size <= 8 * 1024 * 1024);
  const bigFiles = lib.filter((f) => f.size > 8 * 1024 * 1024);
  if (smallFiles.length < 50 || mediumFiles.length < 10 || bigFiles.length < 3)
    throw new Error("/usr/lib has too few files to build the workload");
  /** Sources whose sizes add up to at least `bytes`. */
  const fill = (pool: { file: string; size: number }[], bytes: number) => {
    const sources: string[] = [];
    let have = 0;
    while (have < bytes) {
      const f = pick(pool);
      sources.push(f.file);
      have += f.size;
    }
    return sources;
  };
  const specs: Spec[] = [];
  const add = (name: string, files: Spec["files"]) => {
    const refs: number[] = [];
    const n = specs.length === 0 ? 0 : Math.floor(rand() * 4);
    for (let i = 0; i < n; i++) {
      const r = Math.floor(rand() * specs.length);
      if (!refs.includes(r)) refs.push(r);
    }
    specs.push({ name, files, refs: refs.sort((a, b) => a - b) });
  };
  const small = options.small ?? 280;
  const medium = options.medium ?? 20;
  const large = options.large ?? 4;
  const huge = options.hugeBytes ?? 300 * 1024 * 1024;
  // Interleave sizes so big paths sit at various depths of the graph.
  const kinds: ("s" | "m" | "l" | "h")[] = [
    ...Array<"s">(small).fill("s"),
    ...Array<"m">(medium).fill("m"),
    ...Array<"l">(large).fill("l"),
    ...(huge > 0 ? (["h"] as const) : []),
  ];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
  }
  kinds.forEach((kind, i) => {
    const id = String(i).padStart(3, "0");
    if (kind === "s") {
      const n = 1 + Math.floor(rand() * 4);
      const files = Array.from({ length: n }, () => {
        const f = pick(smallFiles);
        return { sources: [f.file], bytes: f.size };
      });
      add(`bench-small-${id}`, files);
    } else if (kind === "m") {
      const bytes = Math.floor((1 + rand() * 7) * 1024 * 1024);
      add(`bench-medium-${id}`, [{ sources: fill(mediumFiles, bytes), bytes }]);
    } else if (kind === "l") {
      const bytes = Math.floor((15 + rand() * 30) * 1024 * 1024);
      add(`bench-large-${id}`, [{ sources: fill(bigFiles, bytes), bytes }]);
    } else {
      add(`bench-huge-${id}`, [{ sources: fill(bigFiles, huge), bytes: huge }]);
    }
  });
  return specs;
}

export function expressionOf(specs: Spec[], seed: number): string {
  const referenced = new Set(specs.flatMap((s) => s.refs));
  const lines = specs.map((spec, i) => {
    const script = [
      "/bin/mkdir -p $out/lib",
      ...spec.files.map(
        (f, k) => `/bin/cat ${f.sources.join(" ")} | /usr/bin/head -c ${f.bytes} > $out/lib/f${k}.bin`,
      ),
      ...spec.refs.map((r) => `echo \${p${r}} >> $out/refs`),
    ].join("\n");
    return `  p${i} = mk "${spec.name}" ''\n${script}\n'';`;
  });
  const roots = specs.map((_, i) => i).filter((i) => !referenced.has(i));
  return `# generated by bench/workload.ts, seed ${seed}; do not edit
let
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    seed = "${seed}";
  };
in rec {
${lines.join("\n")}
  top = mk "bench-top" ''
/bin/mkdir -p $out
${roots.map((r) => `echo \${p${r}} >> $out/refs`).join("\n")}
'';
}
`;
}

/** A hermetic Nix client environment (own NIX_CONF_DIR, no substituters, no nixpkgs). */
export function nixEnvIn(dir: string, extraConf: string[] = []): NodeJS.ProcessEnv {
  mkdirSync(join(dir, "conf"), { recursive: true });
  writeFileSync(
    join(dir, "conf/nix.conf"),
    `${[
      "sandbox = false",
      "build-users-group =",
      "experimental-features = nix-command",
      "substituters =",
      "narinfo-cache-negative-ttl = 0",
      ...extraConf,
    ].join("\n")}\n`,
  );
  return {
    ...process.env,
    NIX_CONF_DIR: join(dir, "conf"),
    NIX_PATH: "",
    XDG_CACHE_HOME: join(dir, "xdg-cache"),
  };
}

export async function buildWorkload(options: WorkloadOptions): Promise<Workload> {
  mkdirSync(options.dir, { recursive: true });
  const expression = join(options.dir, `workload-${options.seed}.nix`);
  writeFileSync(expression, expressionOf(planWorkload(options), options.seed));
  const env = nixEnvIn(join(options.dir, "nix"));
  const built = await execFileP("nix-build", [expression, "-A", "top", "--no-out-link", "--max-jobs", "2"], {
    env,
    maxBuffer: 1 << 26,
  });
  const top = built.stdout.trim();
  const info = await execFileP("nix", ["path-info", "--json", "--recursive", top], {
    env,
    maxBuffer: 1 << 28,
  });
  const paths = (JSON.parse(info.stdout) as { path: string; narSize: number }[]).map((p) => ({
    path: p.path,
    narSize: p.narSize,
  }));
  return {
    top,
    paths,
    narBytes: paths.reduce((n, p) => n + p.narSize, 0),
    seed: options.seed,
    expression,
  };
}

/**
 * One `nix copy --to file://DIR?compression=zstd` of the workload into an emptied `dir`, timed: wall and CPU
 * seconds (the copy is a child process of this one). Throws if the copy wrote fewer narinfos than the closure
 * has: Nix skips what it believes the cache has, and a copy that wrote less would be no yardstick.
 */
export async function copyToFileTimed(
  workload: Workload,
  dir: string,
  env: NodeJS.ProcessEnv,
): Promise<{ seconds: number; cpu: number }> {
  rmSync(dir, { recursive: true, force: true });
  const t0 = performance.now();
  const cpu0 = childrenCpuSeconds();
  await execFileP("nix", ["copy", "--to", `file://${dir}?compression=zstd`, workload.top], {
    env,
    maxBuffer: 1 << 28,
  });
  const copy = { seconds: (performance.now() - t0) / 1000, cpu: childrenCpuSeconds() - cpu0 };
  const narinfos = readdirSync(dir).filter((f) => f.endsWith(".narinfo")).length;
  if (narinfos !== workload.paths.length)
    throw new Error(
      `nix copy --to file:// wrote ${narinfos} narinfos, the closure has ${workload.paths.length}`,
    );
  return copy;
}

/**
 * The closures a fresh server takes, unmeasured, before measure 6's timed push (see bench/main.ts): `count`
 * closures of other paths than the measured one (seeds 13, 113, 213, ...), each ~150 small paths, 5 of a few
 * MB and one of tens of MB.
 */
export async function buildWarmUps(
  tmp: string,
  count: number,
  onBuild: (i: number, seed: number) => void = () => {},
): Promise<Workload[]> {
  const warmUps: Workload[] = [];
  for (let i = 0; i < count; i++) {
    const seed = 13 + 100 * i;
    onBuild(i, seed);
    warmUps.push(
      await buildWorkload({
        seed,
        dir: join(tmp, `workload-warm-up-${seed}`),
        small: 150,
        medium: 5,
        large: 1,
        hugeBytes: 0,
      }),
    );
  }
  return warmUps;
}

if (process.argv[1]?.endsWith("workload.ts")) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : undefined;
  };
  const w = await buildWorkload({
    seed: Number(arg("--seed") ?? 7),
    dir: arg("--dir") ?? "/tmp/nixstash-bench-workload",
  });
  process.stdout.write(
    `${w.top}\n${w.paths.length} paths, ${(w.narBytes / 1048576).toFixed(1)} MiB of NAR (seed ${w.seed})\n`,
  );
}
