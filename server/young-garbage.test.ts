import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { COLLECT_EVERY_BYTES, youngGarbageCollector } from "./young-garbage.ts";

describe("youngGarbageCollector", () => {
  it("collects once per everyBytes of body taken in, across calls of any size", () => {
    let collections = 0;
    const seen = youngGarbageCollector({ everyBytes: 1000, collect: () => collections++ })!;
    for (let i = 0; i < 9; i++) seen(100);
    assert.equal(collections, 0, "900 bytes: not yet");
    seen(100);
    assert.equal(collections, 1);
    seen(5000);
    assert.equal(collections, 2, "one large read: one collection, the count starts again");
    for (let i = 0; i < 20; i++) seen(100);
    assert.equal(collections, 4);
  });

  it("uses node's gc when exposed, and is absent without it", () => {
    const global = globalThis as { gc?: unknown };
    const saved = global.gc;
    try {
      delete global.gc;
      assert.equal(youngGarbageCollector(), undefined);
      const calls: unknown[] = [];
      global.gc = (options: unknown) => calls.push(options);
      const seen = youngGarbageCollector()!;
      seen(COLLECT_EVERY_BYTES - 1);
      assert.equal(calls.length, 0);
      seen(1);
      assert.deepEqual(calls, [{ type: "minor" }], "a young-generation collection");
    } finally {
      if (saved === undefined) delete global.gc;
      else global.gc = saved;
    }
  });
});
