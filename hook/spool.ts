// The spool directory: where the post-build hook (hook/post-build-hook.sh) drops one record per build, and
// where the daemon picks them up. Files, not a database, so that the hook stays a few lines of POSIX sh
// with no client library and no lock; the daemon moves records into its durable queue (hook/queue.ts) and
// only then deletes them, so a crash in between re-reads a record (harmless: enqueueing is idempotent).
//
// Record format: a regular file whose name does not start with "." (the hook uses `<pid>-<n>.paths`), one
// store path per line, or `drv <path>` for a derivation whose outputs are to be pushed (Nix 2.8.0 gives the
// hook no output paths; the daemon asks the store), "#" starts a comment line. Writers create it under a dot-name and rename it into
// place, so readers never see a partial record. A dot-file left by a writer that died before the rename is
// read anyway once it is old enough (it may hold a truncated last line, which validation drops).
import { randomBytes } from "node:crypto";
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { parseStorePath } from "../nix/index.ts";

export interface SpoolRecord {
  file: string;
  mtimeMs: number;
}

export interface ParsedRecord {
  paths: string[];
  /** Derivations whose outputs are meant (`drv <path>` lines). */
  derivations: string[];
  /** Lines that are neither comments nor store paths. */
  invalid: string[];
}

/** Records waiting in the spool, oldest first; writers' temporary files only once older than staleMs. */
export function listSpool(dir: string, now = Date.now(), staleMs = 10 * 60_000): SpoolRecord[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  const records: SpoolRecord[] = [];
  for (const name of names) {
    const file = join(dir, name);
    let stat: Stats;
    try {
      stat = statSync(file);
    } catch {
      continue; // taken by someone else meanwhile
    }
    if (!stat.isFile()) continue;
    if (name.startsWith(".") && now - stat.mtimeMs < staleMs) continue;
    records.push({ file, mtimeMs: stat.mtimeMs });
  }
  return records.sort((a, b) => a.mtimeMs - b.mtimeMs || (a.file < b.file ? -1 : 1));
}

export function parseRecord(text: string, storeDir?: string): ParsedRecord {
  const paths: string[] = [];
  const derivations: string[] = [];
  const invalid: string[] = [];
  for (const line of text.split("\n")) {
    const item = line.trim();
    if (item === "" || item.startsWith("#")) continue;
    const drv = /^drv\s+(\S+)$/.exec(item)?.[1];
    try {
      if (drv === undefined) paths.push(parseStorePath(item, storeDir).path);
      else if (drv.endsWith(".drv")) derivations.push(parseStorePath(drv, storeDir).path);
      else invalid.push(item);
    } catch {
      invalid.push(item);
    }
  }
  return { paths, derivations, invalid };
}

export function readRecord(record: SpoolRecord, storeDir?: string): ParsedRecord {
  return parseRecord(readFileSync(record.file, "utf8"), storeDir);
}

export function removeRecord(record: SpoolRecord): void {
  try {
    unlinkSync(record.file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

/** Writes a record the way the hook does (temporary dot-name, then rename). Returns its file name. */
export function writeRecord(dir: string, paths: readonly string[], comment?: string): string {
  mkdirSync(dir, { recursive: true });
  const id = `${process.pid}-${Date.now()}-${randomBytes(4).toString("hex")}`;
  const tmp = join(dir, `.new-${id}`);
  const file = join(dir, `${id}.paths`);
  const lines = comment ? [`# ${comment}`, ...paths] : [...paths];
  writeFileSync(tmp, `${lines.join("\n")}\n`, { mode: 0o644 });
  renameSync(tmp, file);
  return file;
}
