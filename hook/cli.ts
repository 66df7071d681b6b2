// The builder-side command line, `nixstash use|push|daemon|queue|hook` (the server is `npm start`, apart).
// Parses flags, builds settings (hook/config.ts), and hands over to the module that does the work. The
// post-build hook itself is not here: it is hook/post-build-hook.sh, so that builds never wait for Node.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { type ParseArgsConfig, parseArgs } from "node:util";
import { AdminUsageError, adminCommand } from "./admin-cli.ts";
import { createClient } from "./client.ts";
import {
  ConfigError,
  type Flags,
  loadDaemonSettings,
  loadLogSettings,
  loadPaths,
  loadPushSettings,
} from "./config.ts";
import { queueFile, runDaemon } from "./daemon.ts";
import { createLogger } from "./log.ts";
import { formatSummary, runPush } from "./push-command.ts";
import { openQueue, type QueueEntry, QueueLockedError } from "./queue.ts";
import { writeRecord } from "./spool.ts";
import { formatBytes, formatDuration } from "./units.ts";
import {
  defaultConfPaths,
  mergeNetrc,
  mergeNixConf,
  parseTarget,
  readIfExists,
  writeConfigFile,
} from "./use.ts";

export const HOOK_SCRIPT = join(import.meta.dirname, "post-build-hook.sh");

export interface Io {
  stdout: { write(text: string): unknown; isTTY?: boolean; columns?: number };
  stderr: { write(text: string): unknown; isTTY?: boolean; columns?: number };
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
  uid: number;
  /** Aborted on SIGTERM/SIGINT. */
  signal: AbortSignal;
}

const USAGE = `usage: nixstash <command> [options]

  use <server-url>/<cache>   print (or --write) the nix.conf and netrc lines for a cache
  push PATHS… | --stdin      push store paths and their closures now, with progress
  daemon                     upload what the post-build hook queues, in the background
  queue [status|add|retry|forget-failed]
                             what the daemon has waiting, uploading and failed; queue paths by hand
  hook                       print the path of the post-build hook (for post-build-hook in nix.conf)
  admin …                    administer a server: caches, tokens, keys, paths, stats, gc (admin --help)

Connection (push, daemon; flags win over environment variables):
  --server URL        NIXSTASH_SERVER        e.g. https://cache.example.org
  --cache NAME        NIXSTASH_CACHE         default main
  --token TOKEN       NIXSTASH_TOKEN
  --token-file FILE   NIXSTASH_TOKEN_FILE
  -j, --jobs N        NIXSTASH_JOBS          parallel uploads, default 4
  --upstream-keys K   NIXSTASH_UPSTREAM_KEYS keys whose paths upstream serves (default: the server's;
                                             "none" pushes everything)
  --retry-base S      NIXSTASH_RETRY_BASE    first retry delay in seconds, default 2
  --retry-max S       NIXSTASH_RETRY_MAX     longest retry delay in seconds, default 300
Daemon and queue:
  --state-dir DIR     NIXSTASH_STATE_DIR     default /var/lib/nixstash as root, else ~/.local/state/nixstash
  --spool DIR         NIXSTASH_SPOOL         default <state dir>/spool
  --log-format F      NIXSTASH_LOG_FORMAT    text (default) or json
  --log-level L       NIXSTASH_LOG_LEVEL     info (default), debug, warn, …
See README.md, "Pushing builds".
`;

const CONNECTION = {
  server: { type: "string" },
  cache: { type: "string" },
  token: { type: "string" },
  "token-file": { type: "string" },
  jobs: { type: "string", short: "j" },
  "upstream-keys": { type: "string" },
  "zstd-level": { type: "string" },
  "retry-base": { type: "string" },
  "retry-max": { type: "string" },
} as const satisfies ParseArgsConfig["options"];

const PATHS = {
  "state-dir": { type: "string" },
  spool: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

const LOGS = {
  "log-level": { type: "string" },
  "log-format": { type: "string" },
} as const satisfies ParseArgsConfig["options"];

class UsageError extends Error {}

const HELP = { help: { type: "boolean", short: "h" } } as const;

function parse<O extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...options, ...HELP }, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

async function readStdin(stdin: NodeJS.ReadableStream): Promise<string[]> {
  let text = "";
  for await (const chunk of stdin) text += chunk.toString();
  return text.split(/\s+/).filter(Boolean);
}

async function useCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    token: { type: "string" },
    "token-file": { type: "string" },
    write: { type: "boolean" },
    "nix-conf": { type: "string" },
    netrc: { type: "string" },
    hook: { type: "string" },
    "no-hook": { type: "boolean" },
    "replace-hook": { type: "boolean" },
  });
  if (values.help || positionals.length !== 1)
    throw new UsageError(
      "usage: nixstash use <server-url>/<cache> [--token T | --token-file F] [--write] [--nix-conf PATH] " +
        "[--netrc PATH] [--hook PATH | --no-hook] [--replace-hook]",
    );
  const target = parseTarget(positionals[0]!);
  const token =
    values.token ?? (values["token-file"] ? readFileSync(values["token-file"], "utf8").trim() : "");
  const description = await createClient({ server: target.server, cache: target.cache, token }).describe();
  const defaults = defaultConfPaths(io.env, io.uid);
  const nixConfPath = values["nix-conf"] ?? defaults.nixConf;
  const wantedNetrc = values.netrc ?? defaults.netrc;
  const hook = values["no-hook"] ? undefined : (values.hook ?? HOOK_SCRIPT);
  const publicKeys = description.publicKeys?.length ? description.publicKeys : [description.publicKey];

  const merged = mergeNixConf(readIfExists(nixConfPath), {
    substituter: target.url,
    publicKeys,
    netrcFile: token ? wantedNetrc : undefined,
    postBuildHook: hook,
    replaceHook: values["replace-hook"] ?? false,
  });
  // An explicit --netrc wins over a netrc-file already in nix.conf only if the user asked for that file.
  const netrcPath = merged.netrcFile ?? wantedNetrc;
  const out = io.stdout;

  if (!values.write) {
    out.write(`# ${nixConfPath}${description.public ? "" : " (private cache)"}\n`);
    out.write(`extra-substituters = ${target.url}\n`);
    out.write(`extra-trusted-public-keys = ${publicKeys.join(" ")}\n`);
    if (token) out.write(`netrc-file = ${netrcPath}\n`);
    if (hook) out.write(`post-build-hook = ${hook}\n`);
    if (token) out.write(`\n# ${netrcPath} (mode 0600)\nmachine ${target.host} password ${token}\n`);
    for (const note of merged.notes) out.write(`# note: ${note}\n`);
    out.write(
      `\n# Merge these into the files yourself, or run again with --write (keeps what is there, backs up first).\n`,
    );
  } else {
    const conf = writeConfigFile(nixConfPath, merged.text);
    out.write(
      conf.changed
        ? `updated ${nixConfPath}${conf.backup ? ` (backup: ${conf.backup})` : ""}:\n${merged.added.map((l) => `  ${l}\n`).join("")}`
        : `${nixConfPath} already configured\n`,
    );
    for (const note of merged.notes) out.write(`note: ${note}\n`);
    if (token) {
      const netrc = mergeNetrc(readIfExists(netrcPath), target.host, token);
      const written = writeConfigFile(netrcPath, netrc.text, { mode: 0o600 });
      out.write(
        written.changed
          ? `updated ${netrcPath} (mode 0600)${written.backup ? ` (backup: ${written.backup})` : ""}\n`
          : `${netrcPath} already has the token\n`,
      );
    }
    if (nixConfPath === "/etc/nix/nix.conf")
      out.write("restart the Nix daemon to apply it: systemctl restart nix-daemon\n");
  }
  if (hook)
    out.write(
      `\n# Builds are queued by the hook; run the daemon to upload them (see README.md, "Pushing builds"):\n` +
        `#   nixstash daemon --server ${target.server} --cache ${target.cache} --token-file <file with a push token>\n`,
    );
  return 0;
}

async function pushCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    ...CONNECTION,
    stdin: { type: "boolean" },
    json: { type: "boolean" },
  });
  if (values.help)
    throw new UsageError("usage: nixstash push [options] PATHS… | --stdin   (see nixstash --help)");
  const settings = loadPushSettings(values as Flags, io.env);
  const paths = [...positionals, ...(values.stdin ? await readStdin(io.stdin) : [])];
  if (paths.length === 0) throw new UsageError("nothing to push: give store paths, or --stdin");
  const summary = await runPush({
    settings,
    paths,
    out: io.stderr,
    tty: io.stderr.isTTY === true,
    signal: io.signal,
  });
  io.stderr.write(formatSummary(summary));
  if (values.json) io.stdout.write(`${JSON.stringify(summary)}\n`);
  return summary.failed.length > 0 ? 1 : 0;
}

async function daemonCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    ...CONNECTION,
    ...PATHS,
    ...LOGS,
    poll: { type: "string" },
    nice: { type: "string" },
    "keep-done": { type: "string" },
  });
  if (values.help || positionals.length > 0) throw new UsageError("usage: nixstash daemon [options]");
  const settings = loadDaemonSettings(values as Flags, io.env, io.uid);
  const log = createLogger(loadLogSettings(values as Flags, io.env));
  try {
    await runDaemon({ settings, log, signal: io.signal });
  } catch (error) {
    if (error instanceof QueueLockedError) {
      log.fatal(error.message);
      return 1;
    }
    throw error;
  }
  return 0;
}

function describeEntry(entry: QueueEntry, now: number): string {
  const size = entry.narSize ? ` ${formatBytes(entry.narSize)}` : "";
  switch (entry.state) {
    case "uploading":
      return `  ${entry.path}${size} (since ${formatDuration((now - entry.updatedAt) / 1000)})`;
    case "waiting": {
      const when =
        entry.nextTryAt > now ? `next try in ${formatDuration((entry.nextTryAt - now) / 1000)}` : "due now";
      const why = entry.reason ? `: ${entry.reason}` : "";
      return `  ${entry.path} (${entry.attempts ? `${entry.attempts} attempt(s), ` : ""}${when})${why}`;
    }
    case "failed":
      return `  ${entry.path}${size}: ${entry.outcome}: ${entry.reason}`;
    default:
      return `  ${entry.path}`;
  }
}

async function queueCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(args, {
    ...PATHS,
    json: { type: "boolean" },
    stdin: { type: "boolean" },
    limit: { type: "string" },
  });
  const action = positionals[0] ?? "status";
  if (values.help || !["status", "add", "retry", "forget-failed"].includes(action))
    throw new UsageError(
      "usage: nixstash queue [status [--json] [--limit N] | add PATHS…|--stdin | retry | forget-failed]",
    );
  const paths = loadPaths(values as Flags, io.env, io.uid);
  if (action === "add") {
    const items = [...positionals.slice(1), ...(values.stdin ? await readStdin(io.stdin) : [])];
    if (items.length === 0) throw new UsageError("nothing to add: give store paths, or --stdin");
    const file = writeRecord(paths.spoolDir, items, "nixstash queue add");
    io.stdout.write(`queued ${items.length} path(s) in ${file}\n`);
    return 0;
  }
  const file = queueFile(paths.stateDir);
  if (!existsSync(file)) {
    io.stdout.write(`no queue at ${file} (the daemon has not run with this state directory)\n`);
    return 0;
  }
  const queue = openQueue(file);
  try {
    if (action === "retry") {
      io.stdout.write(`${queue.retryFailed()} failed path(s) queued again\n`);
      return 0;
    }
    if (action === "forget-failed") {
      io.stdout.write(`${queue.forgetFailed()} failed path(s) forgotten\n`);
      return 0;
    }
    const status = queue.status(Number(values.limit ?? 50) || 50);
    if (values.json) {
      io.stdout.write(`${JSON.stringify(status)}\n`);
      return 0;
    }
    const now = Date.now();
    const daemonRunning = status.daemon && isRunning(status.daemon.pid);
    const out: string[] = [
      `queue ${file}`,
      `daemon: ${daemonRunning ? `running (pid ${status.daemon!.pid})` : "not running"}`,
      `waiting ${status.counts.waiting}, uploading ${status.counts.uploading}, failed ${status.counts.failed}, ` +
        `done ${status.counts.done}`,
    ];
    for (const [title, list] of [
      ["uploading", status.uploading],
      ["waiting", status.waiting],
      ["failed", status.failed],
    ] as const) {
      if (list.length === 0) continue;
      out.push(`${title}:`, ...list.map((entry) => describeEntry(entry, now)));
    }
    io.stdout.write(`${out.join("\n")}\n`);
    return 0;
  } finally {
    queue.close();
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function hookCommand(args: string[], io: Io): number {
  const { values } = parse(args, PATHS);
  if (values.help) throw new UsageError("usage: nixstash hook   (prints the post-build hook's path)");
  const paths = loadPaths(values as Flags, io.env, io.uid);
  io.stdout.write(`${HOOK_SCRIPT}\n`);
  io.stderr.write(
    `# nix.conf: post-build-hook = ${HOOK_SCRIPT}\n# it queues into ${paths.spoolDir} (for this user; ` +
      `as root under the nix-daemon: /var/lib/nixstash/spool unless NIXSTASH_SPOOL is set there)\n`,
  );
  return 0;
}

export async function main(argv: string[], io: Io): Promise<number> {
  const [command, ...args] = argv;
  try {
    switch (command) {
      case "use":
        return await useCommand(args, io);
      case "push":
        return await pushCommand(args, io);
      case "daemon":
        return await daemonCommand(args, io);
      case "queue":
        return await queueCommand(args, io);
      case "hook":
        return hookCommand(args, io);
      case "admin":
        return await adminCommand(args, io);
      case undefined:
      case "help":
      case "-h":
      case "--help":
        io.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
    }
  } catch (error) {
    if (error instanceof UsageError || error instanceof AdminUsageError) {
      io.stderr.write(`${error.message}\n`);
      return 2;
    }
    if (error instanceof ConfigError) {
      io.stderr.write(`nixstash ${command}: ${error.message}\n`);
      return 2;
    }
    io.stderr.write(`nixstash ${command}: ${(error as Error).message}\n`);
    return 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const controller = new AbortController();
  let interrupted = 0;
  const stop = () => {
    if (++interrupted > 1) process.exit(130);
    controller.abort();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  const code = await main(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    stdin: process.stdin,
    env: process.env,
    uid: process.getuid?.() ?? 1000,
    signal: controller.signal,
  });
  process.exitCode = code;
  // Nothing else should keep us alive; a stray timer or socket must not hang a CLI.
  setTimeout(() => process.exit(code), 1000).unref();
}
