import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { it } from "node:test";
import { writeHeapSnapshot } from "node:v8";
import { bufferRetainers } from "./heap-summary.ts";

it("groups array buffer bytes by the chain that holds them", () => {
  const dir = mkdtempSync(join(tmpdir(), "heap-summary-"));
  // 24 MiB held in a stream's write queue (never read), reachable from a global.
  const stuck = new PassThrough({ highWaterMark: 1 });
  for (let i = 0; i < 24; i++) stuck.write(Buffer.alloc(1024 * 1024, i));
  (globalThis as Record<string, unknown>).heapSummaryTestStream = stuck;
  try {
    const groups = bufferRetainers(writeHeapSnapshot(join(dir, "test.heapsnapshot")));
    const largest = groups[0]!;
    assert.ok(largest.bytes >= 23 * 1024 * 1024, `largest group ${largest.bytes} bytes`);
    assert.ok(largest.buffers >= 23);
    assert.match(largest.path, /^JSArrayBufferData <- ArrayBuffer\.backing_store <- Buffer\.buffer/);
    assert.match(largest.path, /PassThrough\._writableState <- .*heapSummaryTestStream/);
  } finally {
    delete (globalThis as Record<string, unknown>).heapSummaryTestStream;
    stuck.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
});
