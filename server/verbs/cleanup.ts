// Removes what interrupted uploads left behind. Every object is recorded as a pending upload before its first
// byte is written and forgotten in the transaction that makes it owned, so after a crash, a cut connection
// or a failed delete, the leftovers are exactly the pending uploads older than any upload could still be
// running. Idempotent, so replicas may run it at the same time.
import type { Context } from "../context.ts";

/** Longer than any upload may take: objects pending for longer belong to nobody. */
export const ABANDONED_AFTER_MS = 6 * 60 * 60 * 1000;

export async function removeAbandonedUploads({
  ctx,
  input,
}: {
  ctx: Context;
  input: { olderThanMs?: number };
}): Promise<{ removed: string[] }> {
  const cutoff = ctx.clock() - (input.olderThanMs ?? ABANDONED_AFTER_MS);
  const removed: string[] = [];
  for (const { storageKey } of await ctx.repo.pendingUploadsOlderThan(cutoff)) {
    try {
      await ctx.storage.delete(storageKey);
      await ctx.repo.removePendingUpload(storageKey);
      removed.push(storageKey);
    } catch (error) {
      ctx.log.warn({ err: error, storageKey }, "could not remove an abandoned upload; will retry");
    }
  }
  if (removed.length > 0) ctx.log.info({ count: removed.length }, "removed abandoned uploads");
  return { removed };
}
