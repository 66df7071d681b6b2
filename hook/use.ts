// `nixstash use <server>/<cache>`: the nix.conf and netrc lines that make Nix substitute from a cache and
// hand its builds to the push daemon, printed or merged into the files in place.
//
// Merging keeps what is there. nix.conf (Nix's format: `name = value`, `#` starts a comment, a later line
// overrides an earlier one, `extra-<name>` appends): list settings (substituters, trusted-public-keys) get
// our value appended to the last line that sets them, or a new `extra-<name>` line so that the defaults
// (cache.nixos.org) stay; scalars (netrc-file, post-build-hook) are added only if absent, an existing
// netrc-file is used rather than replaced, and someone else's post-build-hook is kept unless asked. netrc
// (curl's format, which Nix uses for auth): the entry for our host gets the new password, other entries stay.
// A second run changes nothing. Files are written whole through a temporary file and a rename, after a
// backup copy; netrc gets mode 0600.
import {
  chmodSync,
  copyFileSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  type Stats,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";

export interface UseTarget {
  /** e.g. http://cache.example.org:8080 */
  server: string;
  cache: string;
  /** the substituter URL, server + "/" + cache */
  url: string;
  /** for netrc: the host name without port (curl matches machines by host name) */
  host: string;
}

export function parseTarget(text: string): UseTarget {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`not a URL: ${JSON.stringify(text)} (expected e.g. https://cache.example.org/main)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new Error(`${text}: only http:// and https:// caches are supported`);
  if (url.search || url.hash || url.username || url.password)
    throw new Error(`${text}: give the cache URL without query, fragment or credentials`);
  const segments = url.pathname.split("/").filter(Boolean);
  const cache = segments.pop();
  if (!cache) throw new Error(`${text}: the URL must end in the cache name, e.g. ${url.origin}/main`);
  const server = `${url.origin}${segments.length ? `/${segments.join("/")}` : ""}`;
  return { server, cache, url: `${server}/${cache}`, host: url.hostname };
}

export interface WantedNixConf {
  substituter: string;
  publicKeys: readonly string[];
  /** omit for a public cache used without a token */
  netrcFile?: string | undefined;
  /** omit to leave the post-build hook alone */
  postBuildHook?: string | undefined;
  /** replace a post-build-hook that is not ours */
  replaceHook?: boolean;
}

export interface NixConfMerge {
  text: string;
  changed: boolean;
  /** The netrc file Nix will read (an existing netrc-file setting wins over ours). */
  netrcFile: string | undefined;
  notes: string[];
  /** Lines added or extended, for the user. */
  added: string[];
}

interface ConfLine {
  index: number;
  name: string;
  values: string[];
}

const SETTING = /^\s*([A-Za-z0-9][A-Za-z0-9-]*)\s*=\s*(.*?)\s*$/;

function parseConf(lines: readonly string[]): ConfLine[] {
  const out: ConfLine[] = [];
  lines.forEach((line, index) => {
    const hash = line.indexOf("#");
    const body = hash >= 0 ? line.slice(0, hash) : line;
    const m = SETTING.exec(body);
    if (m) out.push({ index, name: m[1]!, values: m[2]!.split(/\s+/).filter(Boolean) });
  });
  return out;
}

/** Appends a value to a setting line, before any comment on it. */
function appendValue(line: string, value: string): string {
  const hash = line.indexOf("#");
  const body = hash >= 0 ? line.slice(0, hash) : line;
  const comment = hash >= 0 ? ` ${line.slice(hash)}` : "";
  return `${body.replace(/\s+$/, "")} ${value}${comment}`;
}

export function mergeNixConf(text: string, wanted: WantedNixConf): NixConfMerge {
  const lines = text === "" ? [] : text.replace(/\n$/, "").split("\n");
  const notes: string[] = [];
  const added: string[] = [];
  const appended: string[] = [];

  const list = (name: string, value: string) => {
    const conf = parseConf(lines).filter((c) => c.name === name || c.name === `extra-${name}`);
    if (conf.some((c) => c.values.includes(value))) return;
    const last = conf.at(-1);
    if (last) {
      lines[last.index] = appendValue(lines[last.index]!, value);
      added.push(lines[last.index]!.trim());
    } else {
      appended.push(`extra-${name} = ${value}`);
    }
  };
  list("substituters", wanted.substituter);
  for (const key of wanted.publicKeys) list("trusted-public-keys", key);

  let netrcFile = wanted.netrcFile;
  if (wanted.netrcFile) {
    const existing = parseConf(lines)
      .filter((c) => c.name === "netrc-file")
      .at(-1);
    if (!existing) appended.push(`netrc-file = ${wanted.netrcFile}`);
    else if (existing.values.join(" ") !== wanted.netrcFile) {
      netrcFile = existing.values.join(" ");
      notes.push(`nix.conf already sets netrc-file = ${netrcFile}; the token goes there`);
    }
  }

  if (wanted.postBuildHook) {
    const existing = parseConf(lines)
      .filter((c) => c.name === "post-build-hook")
      .at(-1);
    const current = existing?.values.join(" ");
    if (!existing) appended.push(`post-build-hook = ${wanted.postBuildHook}`);
    else if (current !== wanted.postBuildHook) {
      if (wanted.replaceHook) {
        lines[existing.index] = `post-build-hook = ${wanted.postBuildHook}`;
        added.push(lines[existing.index]!);
        notes.push(`replaced post-build-hook = ${current}`);
      } else {
        notes.push(
          `nix.conf already has post-build-hook = ${current}; kept it (Nix runs one hook: call ` +
            `${wanted.postBuildHook} from it, or pass --replace-hook)`,
        );
      }
    }
  }

  if (appended.length > 0) {
    if (lines.length > 0 && lines.at(-1)!.trim() !== "") lines.push("");
    lines.push(`# nixstash: ${wanted.substituter}`, ...appended);
    added.push(...appended);
  }
  const result = lines.length ? `${lines.join("\n")}\n` : "";
  return { text: result, changed: result !== text, netrcFile, notes, added };
}

export interface NetrcMerge {
  text: string;
  changed: boolean;
}

/** Sets the password of `host` in a netrc text (curl's format), keeping every other entry as it is. */
export function mergeNetrc(text: string, host: string, token: string): NetrcMerge {
  const tokens = [...text.matchAll(/\S+/g)].map((m) => ({
    value: m[0],
    start: m.index,
    end: m.index + m[0].length,
  }));
  const starts = tokens
    .map((t, i) => ({ t, i }))
    .filter(({ t }) => t.value === "machine" || t.value === "default" || t.value === "macdef");
  for (let s = 0; s < starts.length; s++) {
    const { t, i } = starts[s]!;
    if (t.value !== "machine" || tokens[i + 1]?.value !== host) continue;
    const endToken = starts[s + 1];
    const end = endToken ? endToken.t.start : text.length;
    const inside = tokens.filter((x) => x.start >= t.start && x.end <= end);
    const password = inside.findIndex((x) => x.value === "password");
    if (password >= 0 && inside[password + 1]?.value === token) return { text, changed: false };
    const login = inside.findIndex((x) => x.value === "login");
    const loginPart = login >= 0 && inside[login + 1] ? ` login ${inside[login + 1]!.value}` : "";
    const entry = `machine ${host}${loginPart} password ${token}\n`;
    return { text: `${text.slice(0, t.start)}${entry}${text.slice(end)}`, changed: true };
  }
  const prefix = text === "" || text.endsWith("\n") ? text : `${text}\n`;
  return { text: `${prefix}machine ${host} password ${token}\n`, changed: true };
}

export interface WriteResult {
  path: string;
  changed: boolean;
  backup?: string | undefined;
}

export function readIfExists(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw error;
  }
}

/**
 * Replaces a file's content: a backup copy of the old one first (`<file>.nixstash-backup-<time>`), then a
 * temporary file renamed over it, so a crash leaves the old or the new file, never half of one.
 */
export function writeConfigFile(
  path: string,
  content: string,
  options: { mode?: number; now?: Date } = {},
): WriteResult {
  let mode = options.mode;
  let backup: string | undefined;
  let stat: Stats | undefined;
  try {
    stat = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  if (stat?.isSymbolicLink())
    throw new Error(
      `${path} is a symbolic link (managed by NixOS or home-manager?): add the lines to its source instead`,
    );
  if (stat) {
    if (readFileSync(path, "utf8") === content) return { path, changed: false };
    const stamp = (options.now ?? new Date()).toISOString().replace(/[:.]/g, "-");
    backup = `${path}.nixstash-backup-${stamp}`;
    copyFileSync(path, backup);
    mode ??= stat.mode & 0o777;
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const tmp = join(dirname(path), `.${path.slice(dirname(path).length + 1)}.nixstash-${process.pid}`);
  writeFileSync(tmp, content, { mode: mode ?? 0o644, flush: true });
  chmodSync(tmp, mode ?? 0o644);
  renameSync(tmp, path);
  return { path, changed: true, backup };
}

/** Default nix.conf and netrc for this user: the system files for root (multi-user daemon), else per user. */
export function defaultConfPaths(env: NodeJS.ProcessEnv, uid: number): { nixConf: string; netrc: string } {
  if (uid === 0) return { nixConf: "/etc/nix/nix.conf", netrc: "/etc/nix/netrc" };
  const config = env.XDG_CONFIG_HOME || join(env.HOME || "/nonexistent", ".config");
  return { nixConf: join(config, "nix/nix.conf"), netrc: join(config, "nix/netrc") };
}
