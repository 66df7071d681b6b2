// Runs the real server as a separate process, exactly as `npm start` does (the esbuild bundle of
// server/main.ts), with the given environment.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

export interface ServerProcess {
  url: string;
  adminToken: string;
  publicKey: string;
  stdout: string;
  /** What the server logged (JSON lines). */
  stderr: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

const root = join(import.meta.dirname, "../..");
const bundle = join(root, "server/dist/main.mjs");

/**
 * The Node options `npm start` gives the bundle (package.json is their one home; the Dockerfile's CMD and ENV
 * are checked against them in test/ops/compose.test.ts), so tests and benchmarks run the server as users do.
 */
export function startNodeOptions(): string[] {
  return startCommand().options;
}

/** The environment `npm start` sets for the bundle (`NAME=value` before `node` in the start script). */
export function startEnvironment(): Record<string, string> {
  return startCommand().env;
}

function startCommand(): { env: Record<string, string>; options: string[] } {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: { start: string } };
  const match = /((?:\b[A-Z_][A-Z0-9_]*=\S+ )*)\bnode((?: --\S+)*) server\/dist\/main\.mjs\b/.exec(
    pkg.scripts.start,
  );
  if (!match) throw new Error(`package.json's start script does not run node … server/dist/main.mjs`);
  const env = Object.fromEntries(
    match[1]!
      .trim()
      .split(" ")
      .filter(Boolean)
      .map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)]),
  );
  return { env, options: match[2]!.trim().split(" ").filter(Boolean) };
}

function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !entry.name.endsWith(".ts")) continue;
    newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/** Builds the bundle when it is missing or older than a source (test/run.sh builds it first anyway). */
function ensureBundle(): void {
  let built = 0;
  try {
    built = statSync(bundle).mtimeMs;
  } catch {}
  const sources = Math.max(...["server", "nix", "schema"].map((d) => newestSource(join(root, d))));
  if (built >= sources) return;
  execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
}

export async function startServerProcess(env: Record<string, string>): Promise<ServerProcess> {
  ensureBundle();
  const child = spawn(process.execPath, [...startNodeOptions(), bundle], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? "",
      NIXSTASH_LISTEN: "127.0.0.1:0",
      NIXSTASH_LOG_LEVEL: "warn",
      ...startEnvironment(),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server did not start in 30 s:\n${stdout}\n${stderr}`)),
      30_000,
    );
    const check = () => {
      const m = /listening on (http:\/\/\S+)/.exec(stdout);
      if (m && stdout.includes("trusted-public-keys")) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    };
    child.stdout!.on("data", check);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${stdout}\n${stderr}`));
    });
  });
  const publicKey = /trusted-public-keys = (\S+)/.exec(stdout)![1]!;
  const adminToken = readFileSync(join(env.NIXSTASH_DATA_DIR!, "admin-token"), "utf8").trim();
  return {
    url,
    adminToken,
    publicKey,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
