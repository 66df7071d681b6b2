// A real Nix 2.8 client, hermetic: its own NIX_CONF_DIR and cache dir, no substituters, no nixpkgs.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { testTmp } from "./services.ts";

const execFileP = promisify(execFile);

export interface NixEnv {
  env: NodeJS.ProcessEnv;
  dir: string;
}

/** A hermetic client; with a token, a netrc that hands it to 127.0.0.1 as Nix users do. */
export function nixEnv(options: { token?: string } = {}): NixEnv {
  const dir = mkdtempSync(join(testTmp(), "nix-"));
  mkdirSync(join(dir, "conf"));
  const conf = [
    "sandbox = false",
    "build-users-group =",
    "experimental-features = nix-command ca-derivations",
    "substituters =",
    "narinfo-cache-negative-ttl = 0",
  ];
  if (options.token) {
    writeFileSync(join(dir, "netrc"), `machine 127.0.0.1\nlogin nix\npassword ${options.token}\n`, {
      mode: 0o600,
    });
    conf.push(`netrc-file = ${join(dir, "netrc")}`);
  }
  writeFileSync(join(dir, "conf/nix.conf"), `${conf.join("\n")}\n`);
  return {
    dir,
    env: {
      ...process.env,
      NIX_CONF_DIR: join(dir, "conf"),
      NIX_PATH: "",
      XDG_CACHE_HOME: join(dir, "cache"),
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a Nix command; each call gets a fresh XDG cache so the client's narinfo cache hides nothing. */
export async function nix(env: NixEnv, command: string, args: string[]): Promise<RunResult> {
  const cache = join(env.dir, `cache-${randomBytes(4).toString("hex")}`);
  try {
    const { stdout, stderr } = await execFileP(command, args, {
      env: { ...env.env, XDG_CACHE_HOME: cache },
      maxBuffer: 1 << 28,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** Substitutes `path` (and its closure) into a fresh chroot store from `cache`, trusting only `key`. */
export function substitute(env: NixEnv, o: { store: string; path: string; cache: string; key: string }) {
  return nix(env, "nix-store", [
    "--store",
    o.store,
    "--realise",
    o.path,
    "--option",
    "substituters",
    o.cache,
    "--option",
    "trusted-public-keys",
    o.key,
  ]);
}

/**
 * Builds a small closure without nixpkgs: `dep` (a file, an executable, a symlink, an empty file, an
 * empty dir, a deep tree), `mid` (refers to dep), `top` (refers to mid and dep). Returns the three outputs.
 */
export async function buildClosure(env: NixEnv, nonce = randomBytes(6).toString("hex")) {
  const expr = join(env.dir, `closure-${nonce}.nix`);
  writeFileSync(
    expr,
    `let
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    nonce = "${nonce}";
  };
  dep = mk "e2e-dep" ''
    echo "building dep ${nonce}" >&2
    /bin/mkdir -p $out/bin $out/share/empty-dir $out/deep/a/b/c/d/e/f
    echo "dep ${nonce}" > $out/share/data.txt
    /bin/dd if=/dev/urandom of=$out/share/random.bin bs=1024 count=300 2>/dev/null
    printf '#!/bin/sh\\necho hello from dep\\n' > $out/bin/hello
    /bin/chmod +x $out/bin/hello
    /bin/ln -s ../share/data.txt $out/bin/data-link
    : > $out/share/empty-file
    echo deep > $out/deep/a/b/c/d/e/f/leaf
  '';
  mid = mk "e2e-mid" ''
    /bin/mkdir -p $out
    echo "${"$"}{dep}/bin/hello" > $out/uses-dep
  '';
  top = mk "e2e-top" ''
    /bin/mkdir -p $out/bin
    echo "${"$"}{mid} ${"$"}{dep}" > $out/refs
    /bin/ln -s ${"$"}{dep}/bin/hello $out/bin/hello
  '';
  ca = builtins.derivation {
    name = "e2e-ca";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ca ${nonce} > $out" ];
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  };
in { inherit dep mid top ca; }
`,
  );
  const result = await nix(env, "nix-build", [expr, "--no-out-link", "-A", "dep", "-A", "mid", "-A", "top"]);
  if (result.code !== 0) throw new Error(`nix-build failed: ${result.stderr}`);
  const [dep, mid, top] = result.stdout.trim().split("\n");
  return { dep: dep!, mid: mid!, top: top!, nonce, expr };
}
