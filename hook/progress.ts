// What `nixstash push` shows while it works: on a terminal, one line redrawn in place (paths and bytes done,
// rate, ETA); elsewhere (CI logs, pipes), one plain line per finished path, which is what a log wants.
// Those lines are written together, at most LINES_EVERY_MS apart: each write to a pipe wakes its reader, and a
// push of many small paths finished hundreds a second (a write each cost the push ~0.3 ms of CPU here).
import { type BatchPlan, isSuccess, type PathOutcome } from "./pipeline.ts";
import { formatBytes, formatDuration } from "./units.ts";

export interface ProgressView {
  /** Roots the cache has already, with their closures (nothing of theirs is sent). */
  cached(roots: readonly string[]): void;
  planned(plan: BatchPlan): void;
  progress(path: string, bytes: number): void;
  finished(outcome: PathOutcome): void;
  /** Writes the lines held back so far (before the caller writes anything of its own). */
  flush(): void;
  /** Stops redrawing and clears the line; writes what is held back. */
  end(): void;
}

/** Lines (without a terminal) are held back at most this long, or until this many characters are held. */
const LINES_EVERY_MS = 100;
const LINES_HELD_MAX = 16 * 1024;

export function createProgress(
  out: { write(text: string): unknown; columns?: number },
  tty: boolean,
  clock: () => number = Date.now,
): ProgressView {
  let totalPaths = 0;
  let totalBytes = 0;
  let donePaths = 0;
  let doneBytes = 0;
  const partial = new Map<string, number>();
  let startedAt: number | undefined;
  let lastDraw = 0;
  let drawn = false;

  const sentBytes = () => doneBytes + [...partial.values()].reduce((a, b) => a + b, 0);

  function line(): string {
    const sent = sentBytes();
    const seconds = startedAt === undefined ? 0 : (clock() - startedAt) / 1000;
    const rate = seconds > 0 ? sent / seconds : 0;
    const eta = rate > 0 ? (totalBytes - sent) / rate : Number.POSITIVE_INFINITY;
    const fraction = totalBytes > 0 ? Math.min(1, sent / totalBytes) : 0;
    const width = 20;
    const filled = Math.round(fraction * width);
    const bar = `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
    return (
      `${bar} ${donePaths}/${totalPaths} paths  ${formatBytes(sent)}/${formatBytes(totalBytes)}  ` +
      `${formatBytes(rate)}/s  ETA ${formatDuration(eta)}`
    );
  }

  function draw(force = false) {
    if (!tty) return;
    const now = clock();
    if (!force && now - lastDraw < 100) return;
    lastDraw = now;
    // A terminal that reports no width (0) gets a generous one.
    const columns = out.columns && out.columns >= 40 ? out.columns : 160;
    const text = line().slice(0, columns - 1);
    out.write(`\r\x1b[K${text}`);
    drawn = true;
  }

  let held = "";
  let heldTimer: ReturnType<typeof setTimeout> | undefined;
  function flush() {
    if (heldTimer) clearTimeout(heldTimer);
    heldTimer = undefined;
    if (held) out.write(held);
    held = "";
  }

  /** Prints a whole line above the bar (or holds the line back briefly, without a terminal). */
  function say(text: string) {
    if (!tty) {
      held += `${text}\n`;
      if (held.length >= LINES_HELD_MAX) flush();
      else if (!heldTimer) {
        heldTimer = setTimeout(flush, LINES_EVERY_MS);
        heldTimer.unref?.();
      }
      return;
    }
    if (drawn) out.write("\r\x1b[K");
    out.write(`${text}\n`);
    draw(true);
  }

  return {
    cached(roots) {
      const what = roots.length === 1 ? roots[0]! : `${roots.length} paths`;
      say(`${what}: already in the cache, with ${roots.length === 1 ? "its closure" : "their closures"}`);
    },
    planned(plan) {
      totalPaths += plan.upload.length;
      totalBytes += plan.upload.reduce((sum, p) => sum + p.narSize, 0);
      if (!tty)
        say(
          `${plan.closure} paths in the closure: ${plan.upload.length} to push ` +
            `(${formatBytes(plan.upload.reduce((s, p) => s + p.narSize, 0))}), ${plan.present} already there, ` +
            `${plan.upstream} served upstream`,
        );
      draw(true);
    },
    progress(path, bytes) {
      startedAt ??= clock();
      partial.set(path, (partial.get(path) ?? 0) + bytes);
      draw();
    },
    finished(outcome) {
      partial.delete(outcome.path);
      if (isSuccess(outcome)) {
        donePaths++;
        doneBytes += outcome.narSize;
        if (!tty) say(`pushed ${outcome.path} (${formatBytes(outcome.narSize)}, ${outcome.kind})`);
        else draw(true);
      } else {
        totalPaths--;
        totalBytes -= outcome.narSize;
        say(`${outcome.kind === "failed" ? "failed" : "not pushed"} ${outcome.path}: ${outcome.reason}`);
      }
    },
    flush,
    end() {
      flush();
      if (tty && drawn) out.write("\r\x1b[K");
      drawn = false;
    },
  };
}
