// The server's life after start-up: which requests are still being handled, and whether it is draining.
//
// Graceful shutdown (start.ts) needs to know when the last in-flight request — an upload still streaming in,
// a NAR still streaming out — has finished, and /readyz must start answering 503 the moment draining begins
// so a load balancer sends new work to another replica. The request middleware (routes/request-log.ts)
// counts every request from its arrival until its response is fully sent (or the client went away) and the
// handler has returned; this object only holds the count and wakes whoever waits for zero.

export interface Lifecycle {
  /** True once shutdown has begun. */
  readonly draining: boolean;
  /** Requests being handled now. */
  readonly active: number;
  /**
   * Requests begun since the process started, those answered at once included (a change means activity:
   * trim-when-quiet.ts).
   */
  readonly begun: number;
  /** Counts one request; call the returned function (once; later calls do nothing) when it is done. */
  begin(): () => void;
  /** Counts a request answered before it could be seen in flight (the fast lane's hot reads): activity only. */
  answeredAtOnce(): void;
  startDraining(): void;
  /** Resolves true when no request is in flight, or false when `timeoutMs` passes first. */
  waitIdle(timeoutMs: number): Promise<boolean>;
}

export function createLifecycle(): Lifecycle {
  let draining = false;
  let active = 0;
  let begun = 0;
  const waiters = new Set<() => void>();
  const wake = () => {
    if (active !== 0) return;
    for (const w of waiters) w();
    waiters.clear();
  };
  return {
    get draining() {
      return draining;
    },
    get active() {
      return active;
    },
    get begun() {
      return begun;
    },
    begin() {
      active++;
      begun++;
      let done = false;
      return () => {
        if (done) return;
        done = true;
        active--;
        wake();
      };
    },
    answeredAtOnce() {
      begun++;
    },
    startDraining() {
      draining = true;
    },
    waitIdle(timeoutMs) {
      if (active === 0) return Promise.resolve(true);
      return new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          waiters.delete(done);
          resolve(false);
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          resolve(true);
        };
        waiters.add(done);
      });
    },
  };
}
