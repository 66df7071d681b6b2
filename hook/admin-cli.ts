// `nixstash admin …`: the administration API (server/routes/admin.ts, /api/v1) from the command line —
// caches, tokens, signing keys, paths, pins, stats and garbage collection. Tables for people; `--json`
// prints the server's answer as it came, for scripts. Talks only HTTP, like the rest of hook/.
import { readFileSync } from "node:fs";
import { type ParseArgsConfig, parseArgs } from "node:util";
import { formatBytes } from "./units.ts";

export const ADMIN_USAGE = `usage: nixstash admin [--server URL] [--token T | --token-file F] [--json] COMMAND

  whoami
  caches list [--deleted]                   caches show NAME
  caches create NAME [settings]             caches update NAME [settings]
  caches delete NAME --confirm NAME         caches restore NAME
  caches purge NAME --confirm NAME          (removes a deleted cache's data for good)
      settings: --public | --private, --priority N, --description TEXT, --upstream-key KEY (repeat; "none"),
                --retention DURATION|none (e.g. 30d, 12h), --quota SIZE|none (e.g. 50G, 500MiB)
  tokens list [--all]                       tokens revoke ID
  tokens create NAME --cache PATTERN… --perm pull|push|delete|admin… [--expires DURATION|ISO-DATE]
  keys list CACHE                           keys generate CACHE [--name NAME]
  keys import CACHE SECRET-KEY-FILE         keys rotate CACHE [--name NAME]
  keys retire CACHE KEY-ID|KEY-NAME
  paths list CACHE [--search TEXT] [--pinned] [--limit N] [--cursor C]
  paths show CACHE PATH                     paths delete CACHE PATH [--referrers]
  paths pin CACHE PATH                      paths unpin CACHE PATH
  stats CACHE [--days N]
  gc [CACHE] [--dry-run] [--deep]           gc runs [CACHE] [--limit N]

PATH is a store path, its basename or its hash. Connection: --server (NIXSTASH_SERVER), --token
(NIXSTASH_TOKEN) or --token-file (NIXSTASH_TOKEN_FILE): a token with admin on the caches concerned.
`;

const OPTIONS = {
  server: { type: "string" },
  token: { type: "string" },
  "token-file": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  deleted: { type: "boolean" },
  all: { type: "boolean" },
  public: { type: "boolean" },
  private: { type: "boolean" },
  priority: { type: "string" },
  description: { type: "string" },
  "upstream-key": { type: "string", multiple: true },
  retention: { type: "string" },
  quota: { type: "string" },
  confirm: { type: "string" },
  cache: { type: "string", multiple: true },
  perm: { type: "string", multiple: true },
  expires: { type: "string" },
  name: { type: "string" },
  search: { type: "string" },
  pinned: { type: "boolean" },
  limit: { type: "string" },
  cursor: { type: "string" },
  referrers: { type: "boolean" },
  days: { type: "string" },
  "dry-run": { type: "boolean" },
  deep: { type: "boolean" },
} as const satisfies ParseArgsConfig["options"];

export class AdminUsageError extends Error {}

export interface AdminIo {
  stdout: { write(text: string): unknown };
  env: NodeJS.ProcessEnv;
}

/** "30d", "12h", "90m", "45s", "2w" or plain seconds → seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?$/.exec(text.trim());
  if (!m) throw new AdminUsageError(`not a duration: ${text} (e.g. 30d, 12h, 3600)`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[(m[2] ?? "s") as "s"];
  return Math.round(Number(m[1]) * unit);
}

/** "50G", "500MiB", "1.5TB", "1000" → bytes (K/M/G/T are powers of 1024, as du and ls -h show them). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new AdminUsageError(`not a size: ${text} (e.g. 50G, 500MiB, 1000000)`);
  const power = { "": 0, k: 1, m: 2, g: 3, t: 4 }[(m[2] ?? "").toLowerCase() as ""];
  return Math.round(Number(m[1]) * 1024 ** power);
}

function table(rows: Record<string, unknown>[], columns: string[]): string {
  const cell = (v: unknown) =>
    v === null || v === undefined ? "-" : Array.isArray(v) ? v.join(",") : String(v);
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  return `${[line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join("\n")}\n`;
}

const when = (ms: unknown) =>
  typeof ms === "number" ? new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") : "-";
const bytes = (n: unknown) => (typeof n === "number" ? formatBytes(n) : "-");
const seconds = (s: unknown) =>
  typeof s === "number" ? (s % 86400 === 0 ? `${s / 86400}d` : `${s}s`) : "none";

export async function adminCommand(args: string[], io: AdminIo): Promise<number> {
  let parsed: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new AdminUsageError(`${(error as Error).message}\n\n${ADMIN_USAGE}`);
  }
  const { values: v, positionals } = parsed;
  if (v.help || positionals.length === 0) {
    io.stdout.write(ADMIN_USAGE);
    return v.help ? 0 : 2;
  }
  const server = (v.server ?? io.env.NIXSTASH_SERVER ?? "").replace(/\/+$/, "");
  if (!server) throw new AdminUsageError("no server: give --server URL or set NIXSTASH_SERVER");
  const tokenFile = v["token-file"] ?? io.env.NIXSTASH_TOKEN_FILE;
  const token = v.token ?? io.env.NIXSTASH_TOKEN ?? (tokenFile ? readFileSync(tokenFile, "utf8").trim() : "");

  const call = async (method: string, path: string, body?: unknown): Promise<Record<string, unknown>> => {
    let res: Response;
    try {
      res = await fetch(`${server}/api/v1${path}`, {
        method,
        headers: {
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (error) {
      const cause = (error as Error & { cause?: { message?: string } }).cause;
      throw new Error(`cannot reach ${server}: ${cause?.message ?? (error as Error).message}`);
    }
    const text = await res.text();
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text);
    } catch {
      json = { message: text.trim() };
    }
    if (!res.ok)
      throw new Error(`${res.status} ${json.error ?? ""}: ${json.message ?? text}`.replace(" :", ":"));
    return json;
  };
  const out = (json: unknown, human: () => string) => {
    io.stdout.write(v.json ? `${JSON.stringify(json, null, 2)}\n` : human());
    return 0;
  };
  const arg = (i: number, what: string) => {
    const value = positionals[i];
    if (!value) throw new AdminUsageError(`missing ${what}\n\n${ADMIN_USAGE}`);
    return value;
  };
  const enc = encodeURIComponent;
  const hashOf = (text: string) => {
    const base = text.slice(text.lastIndexOf("/") + 1);
    return base.slice(0, 32);
  };
  const settings = () => {
    const s: Record<string, unknown> = {};
    if (v.public && v.private) throw new AdminUsageError("--public or --private, not both");
    if (v.public) s.public = true;
    if (v.private) s.public = false;
    if (v.priority !== undefined) s.priority = Number(v.priority);
    if (v.description !== undefined) s.description = v.description;
    if (v["upstream-key"]) s.upstreamKeys = v["upstream-key"].filter((k) => k !== "none");
    if (v.retention !== undefined)
      s.retentionSeconds = v.retention === "none" ? null : parseDuration(v.retention);
    if (v.quota !== undefined) s.quotaBytes = v.quota === "none" ? null : parseSize(v.quota);
    return s;
  };
  const showCache = (c: Record<string, unknown>) =>
    `${[
      `name         ${c.name}${c.deletedAt ? ` (deleted ${when(c.deletedAt)})` : ""}`,
      `url          ${c.url}`,
      `public       ${c.public}`,
      `priority     ${c.priority}`,
      `retention    ${seconds(c.retentionSeconds)}`,
      `quota        ${c.quotaBytes === null ? "none" : bytes(c.quotaBytes)}`,
      `public keys  ${(c.publicKeys as string[]).join(" ")}`,
      `upstream     ${(c.upstreamKeys as string[]).join(" ") || "-"}`,
      `description  ${c.description || "-"}`,
    ].join("\n")}\n`;

  const [group, action] = positionals;
  switch (
    `${group} ${group === "gc" || group === "stats" || group === "whoami" ? "" : (action ?? "")}`.trim()
  ) {
    case "whoami": {
      const me = await call("GET", "/whoami");
      return out(
        me,
        () =>
          `${me.name} (id ${me.id}): ${(me.permissions as string[]).join(",")} on ${(me.caches as string[]).join(", ")}\n`,
      );
    }
    case "caches list": {
      const r = await call("GET", `/caches${v.deleted ? "?deleted=true" : ""}`);
      const rows = (r.caches as Record<string, unknown>[]).map((c) => ({
        ...c,
        retention: seconds(c.retentionSeconds),
        quota: c.quotaBytes === null ? "none" : bytes(c.quotaBytes),
        deleted: c.deletedAt ? when(c.deletedAt) : "",
      }));
      return out(r, () =>
        table(rows, ["name", "public", "priority", "retention", "quota", "deleted", "publicKey"]),
      );
    }
    case "caches show": {
      const c = await call("GET", `/caches/${enc(arg(2, "cache name"))}`);
      return out(c, () => showCache(c));
    }
    case "caches create": {
      const c = await call("POST", "/caches", { name: arg(2, "cache name"), ...settings() });
      return out(c, () => `created\n${showCache(c)}`);
    }
    case "caches update": {
      const c = await call("PATCH", `/caches/${enc(arg(2, "cache name"))}`, settings());
      return out(c, () => showCache(c));
    }
    case "caches delete": {
      const name = arg(2, "cache name");
      const r = await call("DELETE", `/caches/${enc(name)}?confirm=${enc(v.confirm ?? "")}`);
      return out(r, () => `cache ${name} deleted (soft): it no longer serves; restore or purge it later\n`);
    }
    case "caches restore": {
      const c = await call("POST", `/caches/${enc(arg(2, "cache name"))}/restore`);
      return out(c, () => `restored\n${showCache(c)}`);
    }
    case "caches purge": {
      const name = arg(2, "cache name");
      const r = await call("DELETE", `/caches/${enc(name)}?purge=true&confirm=${enc(v.confirm ?? "")}`);
      return out(
        r,
        () =>
          `cache ${name} purged: ${r.purgedPaths} path(s); unused NARs leave storage at the next collection\n`,
      );
    }
    case "tokens list": {
      const r = await call("GET", `/tokens${v.all ? "?all=true" : ""}`);
      const rows = (r.tokens as Record<string, unknown>[]).map((x) => ({
        ...x,
        created: when(x.createdAt),
        lastUsed: when(x.lastUsedAt),
        expires: when(x.expiresAt),
      }));
      return out(r, () =>
        table(rows, [
          "id",
          "name",
          "prefix",
          "caches",
          "permissions",
          "state",
          "created",
          "lastUsed",
          "expires",
        ]),
      );
    }
    case "tokens create": {
      const name = arg(2, "token name");
      if (!v.cache?.length || !v.perm?.length)
        throw new AdminUsageError("tokens create needs --cache and --perm");
      let expiresAt: number | string | undefined;
      if (v.expires)
        expiresAt = /^\d+[smhdw]?$/.test(v.expires)
          ? Date.now() + parseDuration(v.expires) * 1000
          : v.expires;
      const r = await call("POST", "/tokens", {
        name,
        caches: v.cache,
        permissions: v.perm,
        ...(expiresAt ? { expiresAt } : {}),
      });
      return out(r, () => `token ${r.name} (id ${r.id}); shown once, keep it safe:\n${r.token}\n`);
    }
    case "tokens revoke": {
      const r = await call("DELETE", `/tokens/${enc(arg(2, "token id"))}`);
      return out(r, () => `token ${r.name} (id ${r.id}) revoked\n`);
    }
    case "keys list": {
      const r = await call("GET", `/caches/${enc(arg(2, "cache name"))}/keys`);
      const rows = (r.keys as Record<string, unknown>[]).map((k) => ({
        ...k,
        signed: `${k.signedPaths}/${r.paths}`,
        created: when(k.createdAt),
        retired: when(k.retiredAt),
      }));
      return out(r, () => table(rows, ["id", "name", "state", "signed", "created", "retired", "publicKey"]));
    }
    case "keys generate":
    case "keys rotate": {
      const cache = arg(2, "cache name");
      const r = await call(
        "POST",
        `/caches/${enc(cache)}/keys${action === "rotate" ? "/rotate" : ""}`,
        v.name ? { name: v.name } : {},
      );
      const k = r.key as Record<string, unknown>;
      return out(
        r,
        () =>
          `key ${k.name} (id ${k.id}) added; existing paths are being re-signed in the background.\n` +
          `public key: ${k.publicKey}\n` +
          "Clients may trust it now; retire the old key (nixstash admin keys retire …) once they all do.\n",
      );
    }
    case "keys import": {
      const cache = arg(2, "cache name");
      const secretKey = readFileSync(arg(3, "secret key file"), "utf8");
      const r = await call("POST", `/caches/${enc(cache)}/keys`, { secretKey });
      const k = r.key as Record<string, unknown>;
      return out(r, () => `imported key ${k.name} (id ${k.id}): ${k.publicKey}\n`);
    }
    case "keys retire": {
      const cache = arg(2, "cache name");
      const which = arg(3, "key id or name");
      let id = which;
      if (!/^\d+$/.test(which)) {
        const list = await call("GET", `/caches/${enc(cache)}/keys`);
        const found = (list.keys as { id: number; name: string; state: string }[]).find(
          (k) => k.name === which && k.state === "active",
        );
        if (!found) throw new Error(`cache ${cache} has no active key named ${which}`);
        id = String(found.id);
      }
      const r = await call("POST", `/caches/${enc(cache)}/keys/${id}/retire`);
      return out(r, () => `retired; ${r.signed} signature(s) added, ${r.stripped} removed\n`);
    }
    case "paths list": {
      const q = new URLSearchParams();
      if (v.search) q.set("q", v.search);
      if (v.pinned) q.set("pinned", "true");
      if (v.limit) q.set("limit", v.limit);
      if (v.cursor) q.set("cursor", v.cursor);
      const r = await call("GET", `/caches/${enc(arg(2, "cache name"))}/paths?${q}`);
      const rows = (r.paths as Record<string, unknown>[]).map((p) => ({
        ...p,
        size: bytes(p.narSize),
        stored: bytes(p.fileSize),
        pin: p.pinned ? "pinned" : "",
        created: when(p.createdAt),
        accessed: when(p.lastAccessedAt),
      }));
      return out(
        r,
        () =>
          table(rows, ["storePath", "size", "stored", "pin", "created", "accessed"]) +
          (r.next ? `more: --cursor ${r.next}\n` : ""),
      );
    }
    case "paths show": {
      const p = await call("GET", `/caches/${enc(arg(2, "cache name"))}/paths/${hashOf(arg(3, "path"))}`);
      const n = p.narinfo as Record<string, unknown>;
      return out(
        p,
        () =>
          `${[
            `StorePath: ${p.storePath}`,
            `URL: ${n.url}`,
            `Compression: ${n.compression}`,
            `FileHash: ${n.fileHash}`,
            `FileSize: ${n.fileSize} (${bytes(n.fileSize)})`,
            `NarHash: ${n.narHash}`,
            `NarSize: ${n.narSize} (${bytes(n.narSize)})`,
            `References: ${(n.references as string[]).join(" ")}`,
            `Deriver: ${n.deriver ?? "-"}`,
            ...(n.sigs as string[]).map((s) => `Sig: ${s}`),
            `pinned: ${p.pinned}`,
            `pushed: ${when(p.createdAt)}${p.pushedBy ? ` by ${(p.pushedBy as { name: string }).name}` : ""}`,
            `last access: ${when(p.lastAccessedAt)}`,
          ].join("\n")}\n`,
      );
    }
    case "paths delete": {
      const r = await call(
        "DELETE",
        `/caches/${enc(arg(2, "cache name"))}/paths/${hashOf(arg(3, "path"))}${v.referrers ? "?referrers=true" : ""}`,
      );
      return out(
        r,
        () =>
          `deleted ${(r.deleted as string[]).length} path(s):\n${(r.deleted as string[]).map((p) => `  ${p}\n`).join("")}`,
      );
    }
    case "paths pin":
    case "paths unpin": {
      const r = await call(
        action === "pin" ? "PUT" : "DELETE",
        `/caches/${enc(arg(2, "cache name"))}/paths/${hashOf(arg(3, "path"))}/pin`,
      );
      return out(r, () => `${action === "pin" ? "pinned" : "unpinned"} ${arg(3, "path")}\n`);
    }
    case "stats": {
      const r = await call(
        "GET",
        `/caches/${enc(arg(1, "cache name"))}/stats${v.days ? `?days=${enc(v.days)}` : ""}`,
      );
      const total = r.total as Record<string, number | null>;
      return out(
        r,
        () =>
          [
            `cache ${r.cache}: ${r.paths} paths (${r.pinnedPaths} pinned)`,
            `NAR bytes ${bytes(r.narBytes)}, stored ${bytes(r.storedBytes)} in ${r.nars} objects, dedup saves ${bytes(r.dedupSavings)}`,
            `quota ${r.quotaBytes === null ? "none" : `${bytes(r.quotaBytes)} (${Math.round((r.quotaUsed as number) * 100)}% used)`}, retention ${seconds(r.retentionSeconds)}`,
            `last ${r.days} days: ${total.narinfoHits} hits, ${total.narinfoMisses} misses, ${total.narDownloads} downloads (${bytes(total.narBytes)})`,
            "",
          ].join("\n") +
          table(r.daily as Record<string, unknown>[], [
            "day",
            "narinfoHits",
            "narinfoMisses",
            "narDownloads",
            "narBytes",
          ]),
      );
    }
    case "gc": {
      if (positionals[1] === "runs") {
        const q = v.limit ? `?limit=${enc(v.limit)}` : "";
        const r = await call(
          "GET",
          positionals[2] ? `/caches/${enc(positionals[2])}/gc/runs${q}` : `/gc/runs${q}`,
        );
        const rows = (r.runs as Record<string, unknown>[]).map((x) => ({
          ...x,
          started: when(x.startedAt),
          cache: x.cache ?? "(all)",
          freed: bytes(x.freedBytes),
        }));
        return out(r, () =>
          table(rows, ["id", "started", "cache", "trigger", "dryRun", "collectedPaths", "freed"]),
        );
      }
      const body = { dryRun: v["dry-run"] ?? false, deep: v.deep ?? false };
      const r = await call("POST", positionals[1] ? `/caches/${enc(positionals[1])}/gc` : "/gc", body);
      const s = r.storage as Record<string, number>;
      const verb = r.dryRun ? "would collect" : "collected";
      return out(r, () =>
        [
          ...(r.caches as Record<string, unknown>[]).map(
            (c) =>
              `${c.cache}: ${verb} ${c.collectedPaths} path(s) (${bytes(c.narBytes)} of NAR; retention ${(c.byReason as Record<string, number>).retention}, quota ${(c.byReason as Record<string, number>).quota})`,
          ),
          `storage: ${r.dryRun ? "would remove" : "removed"} ${s.removedNars} NAR(s), ${s.removedOrphans} orphan(s), ${s.removedStrays} stray object(s); ${s.waitingNars} NAR(s) in their ${s.graceSeconds}s grace period`,
          `${r.dryRun ? "would free" : "freed"} ${bytes(r.freedBytes)}`,
          "",
        ].join("\n"),
      );
    }
    default:
      throw new AdminUsageError(`unknown admin command: ${positionals.join(" ")}\n\n${ADMIN_USAGE}`);
  }
}
