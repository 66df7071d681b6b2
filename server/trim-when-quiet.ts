// Giving a burst's memory back to the system once the server goes quiet: a full collection first, so the
// Buffers the burst left dead are freed (V8 counts them as external memory until a major collection sweeps
// them: 40-55 MB after a closure pushed into S3, against 18 MB of live ones in a heap snapshot), then glibc's
// malloc_trim(0) (server/native/memory.c; its header says why glibc keeps freed pages).
//
// When: at the first tick (every second) that finds no request in flight and none begun since the tick
// before, if requests came since the last trim. So a burst of uploads or downloads is followed by one trim
// about a second after its last request, an idle server trims nothing, and a busy one is never interrupted
// (collection and trim block the event loop for some milliseconds). Pages given back are taken
// again from the kernel as the next burst needs them. Without the addon (not glibc, not built) nothing runs.
import type { Logger } from "pino";
import type { Lifecycle } from "./lifecycle.ts";
import { loadAddon } from "./native-addon.ts";
import { exposedGc } from "./young-garbage.ts";

const loaded = loadAddon<{ trim(): boolean }>("memory");
/** Why the memory addon is not there (start.ts logs it once), or undefined when it is. */
export const memoryTrimUnavailable = loaded.error;

export const QUIET_TICK_MS = 1000;

export interface QuietTrimmer {
  /** One tick: trims if the server has been quiet since the last tick after some activity; true if it did. */
  tick(): boolean;
  /** Ticks every `ms` (a timer that does not keep the process alive); returns the function that stops it. */
  start(ms?: number): () => void;
}

/**
 * A trimmer on `lifecycle`'s request counts; `trim` and `collect` stand in for the addon's and node's major
 * collection (tests; without --expose-gc there is no collection). Undefined without a trim.
 */
export function quietTrimmer(
  lifecycle: Pick<Lifecycle, "active" | "begun">,
  options: { trim?: () => boolean; collect?: () => void; log?: Logger } = {},
): QuietTrimmer | undefined {
  const trim = options.trim ?? (loaded.addon ? () => loaded.addon.trim() : undefined);
  if (!trim) return undefined;
  const gc = exposedGc();
  const collect = options.collect ?? (gc ? () => gc({ type: "major" }) : undefined);
  let begunAtTick = lifecycle.begun;
  let begunAtTrim = lifecycle.begun;
  const tick = () => {
    const begun = lifecycle.begun;
    const quiet = lifecycle.active === 0 && begun === begunAtTick;
    begunAtTick = begun;
    if (!quiet || begun === begunAtTrim) return false;
    begunAtTrim = begun;
    const rss = process.memoryUsage.rss();
    const t0 = performance.now();
    collect?.();
    const released = trim();
    options.log?.debug(
      {
        released,
        returnedMiB: Math.round((rss - process.memoryUsage.rss()) / 1024 / 102.4) / 10,
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
