// When to try again after a failure worth retrying (server down, overloaded, network cut): exponential
// backoff with jitter, so that many builders coming back after an outage do not hit the server in lockstep.
// "Equal jitter": half of the exponential step is fixed, half random, so a retry is never immediate.

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
  random?: () => number;
}

/** Delay before attempt number `attempt` + 1, given `attempt` failed attempts so far (>= 1). */
export function backoffDelay(attempt: number, options: BackoffOptions): number {
  const random = options.random ?? Math.random;
  const step = Math.min(options.maxMs, options.baseMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(step / 2 + random() * (step / 2));
}
