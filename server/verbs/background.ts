// The server's background work, started once per process by start.ts: the access log (batched last-access
// and download counters) and the garbage-collection schedule. Every replica runs the schedule; the
// collector lease in the database lets one of them collect at a time, the others skip that tick.
import type { Context } from "../context.ts";
import { AppError } from "../errors.ts";
import { createAccessLog } from "./access-log.ts";
import { runCollection } from "./gc.ts";

export interface BackgroundJobs {
  /** Flushes the access log and stops the timers; waits for a running collection to finish. */
  stop(): Promise<void>;
}

export function startBackgroundJobs(ctx: Context, options: { gcIntervalSeconds: number }): BackgroundJobs {
  const access = createAccessLog({
    repo: ctx.repo,
    clock: () => ctx.clock(),
    onError: (error) => ctx.log.warn({ err: error }, "could not record accesses"),
  });
  ctx.access = access;
  let running: Promise<unknown> = Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    if (options.gcIntervalSeconds <= 0) return;
    // A little jitter, so replicas started together do not all race for the lease at the same instant.
    const delay = options.gcIntervalSeconds * 1000 * (0.9 + Math.random() * 0.2);
    timer = setTimeout(() => {
      running = runCollection({ ctx, input: { dryRun: false, trigger: "schedule" } })
        .catch((error) => {
          if (error instanceof AppError && error.code === "conflict") return;
          ctx.log.warn({ err: error }, "scheduled garbage collection failed");
        })
        .finally(schedule);
    }, delay);
    timer.unref();
  };
  schedule();
  return {
    async stop() {
      if (timer) clearTimeout(timer);
      options.gcIntervalSeconds = 0;
      await running;
      await access.stop();
    },
  };
}
