// The spool directory: where the post-build hook (hook/post-build-hook.sh) drops one record per build, and
// where the daemon picks them up. Files, not a database, so that the hook stays a few lines of POSIX sh
// with no client library and no lock; the daemon moves records into its durable queue (hook/queue.ts) and
// only then deletes them, so a crash in between re-reads a record (harmless: enqueueing is idempotent).
//
// Record format: a regular file whose name does not start with "." (the hook uses `<pid>-<n>.paths`), one
// store path per line, or `drv <path>` for a derivation whose outputs are to be pushed (Nix 2.8.0 gives the
// hook no output paths; the daemon asks the store), "#" starts a comment line, and a last line `# end`
// says the record is complete. The hook creates its record in place (exclusively: `set -C`) and writes it
// with one printf, ending in that line, so it needs no `mv`: on a machine where starting a process costs
// ~4 ms that halves the time a build waits for the hook. A record without the end line is read once it has
// not changed for UNMARKED_SETTLE_MS (a writer that died, or one from before the end line, which renamed
// its records into place). Dot-files are writers' temporary files (writeRecord below, older hooks): read
// only once stale, as a writer that died before its rename leaves them (a truncated last line is dropped
// by validation).
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
  /** Ends with the `# end` line: the writer finished it. */
  complete: boolean;
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

/** The last line of a complete record. */
export const END_LINE = "# end";
/** How long a record without its end line must stay unchanged before it is read anyway. */
export const UNMARKED_SETTLE_MS = 5_000;

export function parseRecord(text: string, storeDir?: string): ParsedRecord {
  const complete = text === `${END_LINE}\n` || text.endsWith(`\n${END_LINE}\n`);
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
  return { complete, paths, derivations, invalid };
}

/** Whether a record may be read now: complete, or left unchanged long enough to be taken as it is. */
export function isSettled(record: SpoolRecord, parsed: ParsedRecord, now = Date.now()): boolean {
  return parsed.complete || now - record.mtimeMs >= UNMARKED_SETTLE_MS;
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

/** Writes a complete record (temporary dot-name, then rename: any size is atomic). Returns its file name. */
export function writeRecord(dir: string, paths: readonly string[], comment?: string): string {
  mkdirSync(dir, { recursive: true });
  const id = `${process.pid}-${Date.now()}-${randomBytes(4).toString("hex")}`;
  const tmp = join(dir, `.new-${id}`);
  const file = join(dir, `${id}.paths`);
  const lines = comment ? [`# ${comment}`, ...paths, END_LINE] : [...paths, END_LINE];
  writeFileSync(tmp, `${lines.join("\n")}\n`, { mode: 0o644 });
  renameSync(tmp, file);
  return file;
}
