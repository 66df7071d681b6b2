import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { PathOutcome } from "./pipeline.ts";
import { createProgress } from "./progress.ts";

const pushed = (i: number): PathOutcome => ({
  path: `/nix/store/${String(i).padStart(32, "a")}-p${i}`,
  kind: "stored",
  narSize: 1024,
});

function recorder() {
  const writes: string[] = [];
  return { writes, out: { write: (text: string) => writes.push(text) } };
}

describe("push progress without a terminal", () => {
  it("writes the lines of paths finished together in one write, in order, and all of them at the end", () => {
    const { writes, out } = recorder();
    const progress = createProgress(out, false);
    progress.planned({ roots: [], closure: 10, upstream: 0, present: 0, upload: [] });
    for (let i = 0; i < 10; i++) progress.finished(pushed(i));
    assert.equal(writes.length, 0, "held back for a moment");
    progress.end();
    assert.equal(writes.length, 1);
    const lines = writes[0]!.trimEnd().split("\n");
    assert.equal(lines.length, 11);
    assert.match(lines[0]!, /^10 paths in the closure/);
    assert.deepEqual(
      lines.slice(1),
      Array.from({ length: 10 }, (_, i) => `pushed ${pushed(i).path} (1.0 KiB, stored)`),
    );
  });

  it("says in one line which given paths the cache had, one or many", () => {
    const { writes, out } = recorder();
    const progress = createProgress(out, false);
    progress.cached([pushed(1).path]);
    progress.cached([pushed(2).path, pushed(3).path]);
    progress.end();
    assert.equal(
      writes.join(""),
      `${pushed(1).path}: already in the cache, with its closure\n` +
        "2 paths: already in the cache, with their closures\n",
    );
  });

  it("writes held lines within a moment without being asked, and when the caller flushes", async () => {
    const { writes, out } = recorder();
    const progress = createProgress(out, false);
    progress.finished(pushed(1));
    await new Promise((resolve) => setTimeout(resolve, 250));
    assert.equal(writes.join(""), `pushed ${pushed(1).path} (1.0 KiB, stored)\n`);
    progress.finished(pushed(2));
    progress.flush();
    assert.equal(writes.length, 2);
    progress.end();
    assert.equal(writes.length, 2, "nothing left to write");
  });

  it("does not hold back more than a few KiB", () => {
    const { writes, out } = recorder();
    const progress = createProgress(out, false);
    for (let i = 0; i < 1000; i++) progress.finished(pushed(i));
    assert.ok(writes.length >= 3, `${writes.length} writes`);
    progress.end();
    assert.equal(writes.join("").split("\n").length - 1, 1000);
  });
});
