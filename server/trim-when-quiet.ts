// Giving a burst's memory back to the system once the server goes quiet (server/native/memory.cc): V8's
// low-memory notification first, the full collections V8's memory reducer would run on its own some seconds
// to a minute later (after a push into S3 an ordinary full collection left 40-75 MB of ArrayBuffers alive that
// these free), then glibc's malloc_trim(0), which hands the pages freed back to the kernel (glibc keeps them).
//
// When: at the first tick (every second) that finds no request in flight and none begun since the tick
// before, if requests came since the last trim and left the process at least 16 MiB larger than that trim
// did. So a push or an ingest is followed by one trim about a second after its last request; an idle server,
// or one that answered a few reads, trims nothing; and a busy one is never interrupted. It blocks the event
// loop for 75-140 ms (after the benchmark closure's push; the collections are most of it), so a request that
// arrives just then waits that long, once per burst. Pages given back are taken again from the kernel as the
// next burst needs them. Without the addon (not built) nothing runs; on a C library other than glibc only the
// collections do.
import type { Logger } from "pino";
import type { Lifecycle } from "./lifecycle.ts";
import { loadAddon } from "./native-addon.ts";

const loaded = loadAddon<{ reduce(): void; trim(): boolean }>("memory");
/** Why the memory addon is not there (start.ts logs it once), or undefined when it is. */
export const memoryTrimUnavailable = loaded.error;

export const QUIET_TICK_MS = 1000;
/** How much larger than after the last trim a burst must leave the process for the next one. */
export const TRIM_AFTER_GROWTH_BYTES = 16 * 1024 * 1024;

export interface QuietTrimmer {
  /** One tick: trims if the server has been quiet since the last tick after some activity; true if it did. */
  tick(): boolean;
  /** Ticks every `ms` (a timer that does not keep the process alive); returns the function that stops it. */
  start(ms?: number): () => void;
}

/**
 * A trimmer on `lifecycle`'s request counts; `trim` and `collect` stand in for the addon's, and `rss` for the
 * process's resident size (tests).
 */
export function quietTrimmer(
  lifecycle: Pick<Lifecycle, "active" | "begun">,
  options: {
    trim?: () => boolean;
    collect?: () => void;
    rss?: () => number;
    growthBytes?: number;
    log?: Logger;
  } = {},
): QuietTrimmer | undefined {
  const addon = loaded.addon;
  const trim = options.trim ?? (addon ? () => addon.trim() : undefined);
  const collect = options.collect ?? (addon ? () => addon.reduce() : undefined);
  if (!trim) return undefined;
  const rssNow = options.rss ?? (() => process.memoryUsage.rss());
  const growth = options.growthBytes ?? TRIM_AFTER_GROWTH_BYTES;
  let begunAtTick = lifecycle.begun;
  /** The requests begun when a quiet tick last looked at the process (trimmed it or found it too small). */
  let begunWhenLooked = lifecycle.begun;
  let rssAfterTrim = rssNow();
  const tick = () => {
    const begun = lifecycle.begun;
    const quiet = lifecycle.active === 0 && begun === begunAtTick;
    begunAtTick = begun;
    if (!quiet || begun === begunWhenLooked) return false;
    begunWhenLooked = begun;
    const rss = rssNow();
    if (rss - rssAfterTrim < growth) return false;
    const t0 = performance.now();
    collect?.();
    const released = trim();
    rssAfterTrim = rssNow();
    options.log?.debug(
      {
        released,
        returnedMiB: Math.round((rss - rssAfterTrim) / 1024 / 102.4) / 10,
        ms: Math.round((performance.now() - t0) * 10) / 10,
      },
      "quiet: freed memory returned to the system",
    );
    return true;
  };
  return {
    tick,
    start(ms = QUIET_TICK_MS) {
      const timer = setInterval(tick, ms);
      timer.unref();
      return () => clearInterval(timer);
    },
  };
}
