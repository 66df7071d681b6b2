// The collection schedule in the real server process, and one collector at a time across replicas: two
// server processes on the same PostgreSQL, bucket, secret and data directory, each scheduled to collect
// every second; the recorded runs never overlap in time.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { freshPostgres, freshS3 } from "../support/harness.ts";
import { type ServerProcess, startServerProcess } from "../support/server-process.ts";
import { testTmp } from "../support/services.ts";

interface Run {
  id: number;
  trigger: string;
  startedAt: number;
  finishedAt: number;
}

describe("scheduled collections across two replicas (postgres+s3)", () => {
  const replicas: ServerProcess[] = [];
  let drop: (() => Promise<void>) | undefined;

  before(async () => {
    const pg = await freshPostgres();
    const s3 = await freshS3();
    if (!pg || !s3) return;
    drop = pg.drop;
    const env = {
      ...s3.env,
      NIXSTASH_DATABASE_URL: pg.url,
      NIXSTASH_DATA_DIR: mkdtempSync(join(testTmp(), "replicas-")),
      NIXSTASH_SECRET: "replica-secret-".repeat(3),
      NIXSTASH_GC_INTERVAL: "1",
    };
    replicas.push(await startServerProcess(env));
    replicas.push(await startServerProcess(env));
  });
  after(async () => {
    for (const r of replicas) await r.stop();
    await drop?.();
  });

  it("runs on schedule, one collector at a time", async (t) => {
    if (replicas.length < 2) return t.skip("backend unavailable");
    const [first, second] = replicas as [ServerProcess, ServerProcess];
    // Both replicas serve the same cache with the same key.
    assert.equal(first.publicKey, second.publicKey);
    let runs: Run[] = [];
    for (let i = 0; i < 100 && runs.length < 8; i++) {
      await new Promise((r) => setTimeout(r, 200));
      const res = await fetch(`${second.url}/api/v1/gc/runs?limit=100`, {
        headers: { authorization: `Bearer ${first.adminToken}` },
      });
      runs = ((await res.json()) as { runs: Run[] }).runs;
    }
    assert.ok(runs.length >= 8, `only ${runs.length} scheduled runs`);
    assert.ok(runs.every((r) => r.trigger === "schedule"));
    const sorted = [...runs].sort((x, y) => x.startedAt - y.startedAt);
    for (let i = 1; i < sorted.length; i++)
      assert.ok(sorted[i]!.startedAt >= sorted[i - 1]!.finishedAt, "two collections overlapped");
  });
});
