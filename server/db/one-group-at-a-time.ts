// The sending discipline grouped-reads.ts and grouped-writes.ts share: one group in flight at a time, the
// next taken off the waiting list when it returns, and nothing waiting for a timer (a group asked for while
// none is in flight goes at once). A group out longer than `stallMs` stops holding the next one back, which
// then goes beside it (on another pooled connection): on a busy machine a database backend can be
// descheduled for milliseconds, and a connection can hang until the driver notices it is lost.

/**
 * Returns `send`, to be called whenever something joins the waiting list. `take` takes the next group off
 * the list and returns what sends it and settles its callers (it must not reject), or undefined when
 * nothing waits.
 */
export function oneGroupAtATime(stallMs: number, take: () => (() => Promise<void>) | undefined): () => void {
  let busy = false;
  const send = () => {
    if (busy) return;
    const run = take();
    if (!run) return;
    busy = true;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      clearTimeout(stall);
      busy = false;
      send();
    };
    const stall = setTimeout(release, stallMs);
    stall.unref?.();
    void run().finally(release);
  };
  return send;
}
