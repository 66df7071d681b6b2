// Logs of the builder-side commands: pino (structured, as the server logs), written to stderr either as JSON
// lines (`--log-format json`, for machines and tests) or as one readable line per event (the default, for a
// terminal or the systemd journal): `2025-01-01T12:00:00.000Z INFO  pushed path=/nix/store/… size=1.2 MiB`.
import { createRequire } from "node:module";
import { Writable } from "node:stream";
import type * as Pino from "pino";
import type { Logger } from "pino";
import type { LogSettings } from "./config.ts";

/** pino, loaded by the first logger made: `nixstash push` makes none, and would have waited ~35 ms for it. */
const load = createRequire(import.meta.url);

export type { Logger };

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};

const SKIP = new Set(["level", "time", "msg", "pid", "hostname"]);

function formatValue(value: unknown): string {
  const text =
    typeof value === "string"
      ? value
      : Array.isArray(value) && value.every((v) => typeof v === "string")
        ? value.join(",")
        : JSON.stringify(value);
  return /[\s"=]/.test(text) ? JSON.stringify(text) : text;
}

/** One JSON log line as text: time, level, message, then key=value pairs. */
export function formatLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const time = typeof record.time === "number" ? new Date(record.time).toISOString() : String(record.time);
  const level = (LEVEL_NAMES[record.level as number] ?? String(record.level)).padEnd(5);
  const fields = Object.entries(record)
    .filter(([key, value]) => !SKIP.has(key) && value !== undefined)
    .map(([key, value]) =>
      key === "err" && value && typeof value === "object" && "message" in value
        ? `err=${formatValue((value as { message: unknown }).message)}`
        : `${key}=${formatValue(value)}`,
    );
  return `${time} ${level} ${record.msg ?? ""}${fields.length ? ` ${fields.join(" ")}` : ""}\n`;
}

export function createLogger(settings: LogSettings, out: NodeJS.WritableStream = process.stderr): Logger {
  const { pino } = load("pino") as typeof Pino;
  const options = { level: settings.logLevel, base: undefined };
  if (settings.logFormat === "json") return pino(options, pino.destination({ dest: 2, sync: true }));
  const text = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split("\n")) if (line) out.write(formatLine(line));
      callback();
    },
  });
  return pino(options, text);
}
