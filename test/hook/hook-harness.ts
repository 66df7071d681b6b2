// Shared pieces of the builder-side end-to-end suites: a real server process with a push token, a real
// Nix 2.8 client whose nix.conf runs our post-build hook, `nixstash daemon` as a real child process (so it
// can be SIGKILLed) whose JSON log lines the tests read as events, and the `nixstash` CLI.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { type NixEnv, nix, nixEnv } from "../support/nix-client.ts";
import { type ServerProcess, startServerProcess } from "../support/server-process.ts";
import { testTmp } from "../support/services.ts";

const execFileP = promisify(execFile);
export const ROOT = join(import.meta.dirname, "../..");
export const HOOK = join(ROOT, "hook/post-build-hook.sh");
const CLI = join(ROOT, "hook/cli.ts");

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

export interface Cache {
  server: ServerProcess;
  dataDir: string;
  pushToken: string;
}

export async function createToken(server: ServerProcess, caches: string[], permissions: string[]) {
  const res = await fetch(`${server.url}/api/v1/tokens`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.adminToken}` },
    body: JSON.stringify({ name: `t-${randomBytes(3).toString("hex")}`, caches, permissions }),
  });
  assert.equal(res.status, 201);
  return ((await res.json()) as { token: string }).token;
}

/** The server process on SQLite + a local directory; `listen` pins the port (to restart it in place). */
export async function startCache(options: { dataDir?: string; listen?: string } = {}): Promise<Cache> {
  const dataDir = options.dataDir ?? mkdtempSync(join(testTmp(), "hook-server-"));
  const server = await startServerProcess({
    NIXSTASH_DATA_DIR: dataDir,
    ...(options.listen ? { NIXSTASH_LISTEN: options.listen } : {}),
  });
  return { server, dataDir, pushToken: await createToken(server, ["*"], ["pull", "push"]) };
}

export async function narinfoStatus(url: string, storePath: string, cache = "main"): Promise<number> {
  return (await fetch(`${url}/${cache}/${storePath.slice(11, 43)}.narinfo`)).status;
}

/** A hermetic Nix client whose nix.conf runs `hook` (our post-build hook by default) into `spool`. */
export function hookedNix(spool: string, hook = HOOK): NixEnv {
  const env = nixEnv();
  appendFileSync(join(env.dir, "conf/nix.conf"), `post-build-hook = ${hook}\n`);
  env.env.NIXSTASH_SPOOL = spool;
  return env;
}

/** A hook that runs ours and appends its wall time in ns to `timings` (to measure it inside real builds). */
export function timedHook(dir: string): { hook: string; timings: string } {
  const hook = join(dir, "timed-hook.sh");
  const timings = join(dir, "hook-timings");
  writeFileSync(
    hook,
    `#!/bin/sh\nstart=$(date +%s%N)\n${HOOK}\nrc=$?\nend=$(date +%s%N)\necho "$((end - start)) $rc" >> ${timings}\nexit $rc\n`,
    { mode: 0o755 },
  );
  return { hook, timings };
}

export interface BuiltClosure {
  /** a source added by evaluation (builtins.toFile): never built, so the hook never sees it */
  input: string;
  dep: string;
  top: string;
  big?: string;
  nonce: string;
}

/**
 * Builds `top` (refers to `dep`, to `input`, and to `big` when bigMiB is given), through nix-build -A top,
 * so Nix runs the post-build hook once per derivation it builds (dep, [big], top).
 */
export async function buildHooked(env: NixEnv, options: { bigMiB?: number } = {}): Promise<BuiltClosure> {
  const nonce = randomBytes(6).toString("hex");
  const expr = join(env.dir, `hooked-${nonce}.nix`);
  const big = options.bigMiB
    ? `big = mk "hook-big" "/bin/mkdir -p $out && /bin/dd if=/dev/urandom of=$out/blob bs=1M count=${options.bigMiB} 2>/dev/null";`
    : "";
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
  input = builtins.toFile "hook-input-${nonce}" "an input, added to the store by evaluation\\n";
  dep = mk "hook-dep" "/bin/mkdir -p $out && echo dep ${nonce} > $out/data && /bin/dd if=/dev/urandom of=$out/random bs=1024 count=64 2>/dev/null";
  ${big}
  top = mk "hook-top" "/bin/mkdir -p $out && echo \${dep} \${input} ${options.bigMiB ? `\${big}` : ""} > $out/refs";
in { inherit dep top ${options.bigMiB ? "big" : ""}; input = input; }
`,
  );
  const result = await nix(env, "nix-build", [expr, "--no-out-link", "-A", "top"]);
  assert.equal(result.code, 0, `nix-build failed: ${result.stderr}`);
  const top = result.stdout.trim();
  const refs = (await nix(env, "nix-store", ["--query", "--references", top])).stdout.trim().split("\n");
  const find = (name: string) => refs.find((r) => r.includes(name));
  return {
    input: find(`hook-input-${nonce}`)!,
    dep: find("-hook-dep")!,
    top,
    ...(options.bigMiB ? { big: find("-hook-big")! } : {}),
    nonce,
  };
}

export const closurePaths = (c: BuiltClosure) => [c.input, c.dep, ...(c.big ? [c.big] : []), c.top];

export interface DaemonEvent {
  level: number;
  msg: string;
  path?: string;
  status?: string;
  reason?: string;
  [key: string]: unknown;
}

export interface DaemonProcess {
  child: ChildProcess;
  events: DaemonEvent[];
  output: () => string;
  waitForEvent(what: string, match: (e: DaemonEvent) => boolean, timeoutMs?: number): Promise<DaemonEvent>;
  stop(): Promise<number | null>;
  kill(): Promise<void>;
}

export function daemonDirs(): { stateDir: string; spool: string } {
  const stateDir = mkdtempSync(join(testTmp(), "hook-state-"));
  const spool = join(stateDir, "spool");
  mkdirSync(spool);
  return { stateDir, spool };
}

/** `nixstash daemon` as a child process with JSON logs; fast retries so that tests stay short. */
export function startDaemon(options: {
  server: string;
  token: string;
  stateDir: string;
  spool: string;
  args?: string[];
}): DaemonProcess {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      CLI,
      "daemon",
      "--server",
      options.server,
      "--token",
      options.token,
      "--state-dir",
      options.stateDir,
      "--spool",
      options.spool,
      "--log-format",
      "json",
      "--retry-base",
      "0.2",
      "--retry-max",
      "1",
      "--poll",
      "0.5",
      ...(options.args ?? []),
    ],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH ?? "" } },
  );
  const events: DaemonEvent[] = [];
  let text = "";
  let partial = "";
  child.stdout!.on("data", (d: Buffer) => {
    text += d.toString();
  });
  child.stderr!.on("data", (d: Buffer) => {
    text += d.toString();
    partial += d.toString();
    const lines = partial.split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        events.push(JSON.parse(line) as DaemonEvent);
      } catch {
        // not a log line (a crash trace): kept in output()
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    events,
    output: () => text,
    async waitForEvent(what, match, timeoutMs = 60_000) {
      return waitFor(
        `daemon event: ${what}\n--- daemon output ---\n${text.slice(-4000)}`,
        () => {
          if (child.exitCode !== null) throw new Error(`daemon exited (${child.exitCode}):\n${text}`);
          return events.find(match);
        },
        timeoutMs,
      );
    },
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
    async kill() {
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `nixstash …` (hook/cli.ts) to completion. */
export async function cli(args: string[], options: { env?: NodeJS.ProcessEnv; input?: string } = {}) {
  const child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", ...options.env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdin.end(options.input ?? "");
  const code = await new Promise<number>((resolve) => child.once("exit", (c) => resolve(c ?? 1)));
  return { code, stdout, stderr } satisfies CliResult;
}

export interface QueueJson {
  counts: { waiting: number; uploading: number; done: number; failed: number };
  waiting: { path: string; reason: string | null; attempts: number }[];
  uploading: { path: string }[];
  failed: { path: string; outcome: string; reason: string }[];
}

export async function queueStatus(stateDir: string): Promise<QueueJson> {
  const result = await cli(["queue", "--state-dir", stateDir, "--json", "--limit", "1000"]);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as QueueJson;
}

/** Every store path in the closure of `path`, per the local store. */
export async function localClosure(path: string): Promise<string[]> {
  const { stdout } = await execFileP("nix-store", ["--query", "--requisites", path]);
  return stdout.trim().split("\n").sort();
}
