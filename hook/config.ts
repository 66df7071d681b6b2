// Settings of the builder-side commands, parsed once: command-line flags first, then NIXSTASH_* environment
// variables, then defaults. The only file of hook/ that reads the environment (cli.ts hands it in). A bad
// value stops the command with a message naming the flag and the variable.
//
// Checked by the few small parsers below rather than zod (which the server's config uses): every command
// starts here, and importing zod took ~85 ms of the CLI's ~250 ms start (`nixstash push` waits for it before
// its first request; issue 7, measure 6).
//
// State and spool locations follow the post-build hook's rules (hook/post-build-hook.sh) exactly, because
// the hook (run by Nix, often as root under the nix-daemon) and the daemon must agree without talking:
//   state dir = $NIXSTASH_STATE_DIR, else /var/lib/nixstash for root, else ${XDG_STATE_HOME:-~/.local/state}/nixstash
//   spool dir = $NIXSTASH_SPOOL, else <state dir>/spool
import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface HookPaths {
  stateDir: string;
  spoolDir: string;
}

export interface ServerSettings {
  /** e.g. http://127.0.0.1:8080 (no cache name) */
  server: string;
  cache: string;
  token: string;
}

export interface PushSettings extends ServerSettings {
  concurrency: number;
  /** Upstream public keys; undefined = ask the server which it accepts (GET /api/v1/caches/{name}). */
  upstreamKeys: string[] | undefined;
  zstdLevel: number;
  retryBaseMs: number;
  retryMaxMs: number;
}

export interface DaemonSettings extends PushSettings, HookPaths {
  pollMs: number;
  /** CPU niceness the daemon (and the Nix commands it runs) lowers itself to; 0 leaves it as started. */
  nice: number;
  /** Done entries older than this are forgotten by the queue. */
  keepDoneMs: number;
}

export interface LogSettings {
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  logFormat: "text" | "json";
}

export type Flags = Record<string, string | boolean | string[] | undefined>;

export class ConfigError extends Error {}

/** Flag name → environment variable. */
const ENV: Record<string, string> = {
  server: "NIXSTASH_SERVER",
  cache: "NIXSTASH_CACHE",
  token: "NIXSTASH_TOKEN",
  "token-file": "NIXSTASH_TOKEN_FILE",
  "state-dir": "NIXSTASH_STATE_DIR",
  spool: "NIXSTASH_SPOOL",
  jobs: "NIXSTASH_JOBS",
  "upstream-keys": "NIXSTASH_UPSTREAM_KEYS",
  "zstd-level": "NIXSTASH_ZSTD_LEVEL",
  "retry-base": "NIXSTASH_RETRY_BASE",
  "retry-max": "NIXSTASH_RETRY_MAX",
  poll: "NIXSTASH_POLL",
  nice: "NIXSTASH_NICE",
  "keep-done": "NIXSTASH_KEEP_DONE",
  "log-level": "NIXSTASH_LOG_LEVEL",
  "log-format": "NIXSTASH_LOG_FORMAT",
};

export function defaultPaths(env: NodeJS.ProcessEnv, uid: number): HookPaths {
  const home = env.HOME || "/nonexistent";
  const stateDir =
    env.NIXSTASH_STATE_DIR ||
    (uid === 0 ? "/var/lib/nixstash" : join(env.XDG_STATE_HOME || join(home, ".local/state"), "nixstash"));
  return { stateDir, spoolDir: env.NIXSTASH_SPOOL || join(stateDir, "spool") };
}

function createReader(flags: Flags, env: NodeJS.ProcessEnv) {
  const raw = (name: string): string | undefined => {
    const flag = flags[name];
    if (typeof flag === "string") return flag;
    const variable = ENV[name];
    const value = variable ? env[variable] : undefined;
    return value === "" ? undefined : value;
  };
  const where = (name: string) => `--${name}${ENV[name] ? ` (${ENV[name]})` : ""}`;
  function read<T>(name: string, parse: Parse<T>, fallback: T): T {
    const value = raw(name);
    if (value === undefined) return fallback;
    try {
      return parse(value);
    } catch (error) {
      if (!(error instanceof Invalid)) throw error;
      throw new ConfigError(`invalid ${where(name)}: ${JSON.stringify(value)}: ${error.message}`);
    }
  }
  return { raw, read, where };
}

/** A setting's text to its value; throws Invalid saying what a good value is. */
type Parse<T> = (text: string) => T;
class Invalid extends Error {}

const text: Parse<string> = (value) => value;
const oneOf =
  <const T extends string>(...choices: T[]): Parse<T> =>
  (value) => {
    if ((choices as string[]).includes(value)) return value as T;
    throw new Invalid(`must be one of ${choices.join(", ")}`);
  };
const wholeNumber =
  (min: number, max: number): Parse<number> =>
  (value) => {
    const n = /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN;
    if (n >= min && n <= max) return n;
    throw new Invalid(`must be a whole number from ${min} to ${max}`);
  };
const seconds: Parse<number> = (value) => {
  const n = value.trim() === "" ? Number.NaN : Number(value);
  if (Number.isFinite(n) && n > 0) return n;
  throw new Invalid("must be a positive number of seconds");
};
const url: Parse<string> = (value) => {
  if (/^https?:\/\//.test(value) && URL.canParse(value)) return value.replace(/\/+$/, "");
  throw new Invalid("must be an http:// or https:// URL");
};
const cacheName: Parse<string> = (value) => {
  if (/^[a-z0-9][a-z0-9._-]{0,62}$/.test(value)) return value;
  throw new Invalid("not a cache name (a lower-case letter or digit, then up to 62 of those or . _ -)");
};

export function loadServerSettings(flags: Flags, env: NodeJS.ProcessEnv): ServerSettings {
  const { raw, read, where } = createReader(flags, env);
  const server = read("server", url, "");
  if (!server) throw new ConfigError(`no server: give ${where("server")}, e.g. http://cache.example.org`);
  const cache = read("cache", cacheName, "main");
  let token = raw("token");
  const tokenFile = raw("token-file");
  if (!token && tokenFile) {
    try {
      token = readFileSync(tokenFile, "utf8").trim();
    } catch (error) {
      throw new ConfigError(`cannot read ${where("token-file")} ${tokenFile}: ${(error as Error).message}`);
    }
  }
  if (!token) throw new ConfigError(`no token: give ${where("token")} or ${where("token-file")}`);
  return { server, cache, token };
}

export function loadPushSettings(flags: Flags, env: NodeJS.ProcessEnv): PushSettings {
  const { read } = createReader(flags, env);
  const keys = read("upstream-keys", text, "");
  return {
    ...loadServerSettings(flags, env),
    concurrency: read("jobs", wholeNumber(1, 64), 4),
    upstreamKeys: keys === "" ? undefined : keys === "none" ? [] : keys.split(/[\s,]+/).filter(Boolean),
    zstdLevel: read("zstd-level", wholeNumber(1, 19), 3),
    retryBaseMs: read("retry-base", seconds, 2) * 1000,
    retryMaxMs: read("retry-max", seconds, 300) * 1000,
  };
}

export function loadPaths(flags: Flags, env: NodeJS.ProcessEnv, uid: number): HookPaths {
  const { raw } = createReader(flags, env);
  const defaults = defaultPaths(
    { ...env, NIXSTASH_STATE_DIR: raw("state-dir"), NIXSTASH_SPOOL: raw("spool") },
    uid,
  );
  return defaults;
}

export function loadDaemonSettings(flags: Flags, env: NodeJS.ProcessEnv, uid: number): DaemonSettings {
  const { read } = createReader(flags, env);
  return {
    ...loadPushSettings(flags, env),
    ...loadPaths(flags, env, uid),
    pollMs: read("poll", seconds, 5) * 1000,
    nice: read("nice", wholeNumber(0, 19), 10),
    keepDoneMs: read("keep-done", seconds, 7 * 24 * 3600) * 1000,
  };
}

export function loadLogSettings(flags: Flags, env: NodeJS.ProcessEnv): LogSettings {
  const { read } = createReader(flags, env);
  return {
    logLevel: read("log-level", oneOf("fatal", "error", "warn", "info", "debug", "trace", "silent"), "info"),
    logFormat: read("log-format", oneOf("text", "json"), "text"),
  };
}
