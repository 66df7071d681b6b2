// Readiness: can this replica serve right now? It can when its database answers a query and its storage
// answers a check (local root writable; S3 bucket reachable and present). Each probe gets a deadline, so a
// backend that hangs makes the replica "not ready" instead of hanging the probe (and the load balancer).
// Liveness (/healthz) deliberately checks nothing of the sort: a replica whose database is down is alive,
// and restarting it would not bring the database back.
import type { Context } from "../context.ts";

export interface ReadinessCheck {
  ok: boolean;
  ms: number;
  error?: string;
}

export interface Readiness {
  ready: boolean;
  draining: boolean;
  checks: { database: ReadinessCheck; storage: ReadinessCheck };
}

async function probe(fn: () => Promise<void>, timeoutMs: number): Promise<ReadinessCheck> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([fn(), timeout]);
    return { ok: true, ms: Math.round(performance.now() - started) };
  } catch (error) {
    return { ok: false, ms: Math.round(performance.now() - started), error: (error as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

export async function checkReadiness({
  ctx,
  input,
}: {
  ctx: Context;
  input: { draining: boolean; timeoutMs: number };
}): Promise<Readiness> {
  const [database, storage] = await Promise.all([
    probe(() => ctx.database.ping(), input.timeoutMs),
    probe(() => ctx.storage.check(), input.timeoutMs),
  ]);
  if (!database.ok) ctx.log.warn({ check: "database", error: database.error }, "not ready");
  if (!storage.ok) ctx.log.warn({ check: "storage", error: storage.error }, "not ready");
  return {
    ready: database.ok && storage.ok && !input.draining,
    draining: input.draining,
    checks: { database, storage },
  };
}
