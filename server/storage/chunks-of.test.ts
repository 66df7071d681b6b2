import assert from "node:assert/strict";
import { PassThrough, Readable } from "node:stream";
import { describe, it } from "node:test";
import { setImmediate as tick } from "node:timers/promises";
import { chunksOf } from "./storage.ts";

describe("chunksOf", () => {
  it("yields the chunks one by one as they were pushed, where for await joins those waiting", async () => {
    const chunks = [Buffer.alloc(1000, 1), Buffer.alloc(2000, 2), Buffer.alloc(3000, 3)];
    const joined: number[] = [];
    for await (const chunk of Readable.from(chunks).pipe(new PassThrough())) {
      await tick();
      await tick();
      joined.push((chunk as Buffer).length);
    }
    assert.ok(joined.length < 3, `for await joined nothing (${joined}): this test shows nothing`);
    const seen: Buffer[] = [];
    for await (const chunk of chunksOf(Readable.from(chunks).pipe(new PassThrough()))) {
      await tick();
      await tick();
      seen.push(chunk);
    }
    assert.deepEqual(seen, chunks);
  });

  it("holds back the stream while the consumer is busy", async () => {
    const stream = new PassThrough({ highWaterMark: 16 });
    const iterator = chunksOf(stream);
    stream.write(Buffer.alloc(10, 1));
    const first = await iterator.next();
    assert.equal(first.value?.length, 10);
    // Taken and not yet asked for the next: the stream is paused, so writes back up.
    assert.equal(stream.readableFlowing, false);
    assert.equal(stream.write(Buffer.alloc(20, 2)), false, "backpressure reaches the writer");
    stream.end();
    const rest: number[] = [];
    for (let r = await iterator.next(); !r.done; r = await iterator.next()) rest.push(r.value.length);
    assert.deepEqual(rest, [20]);
  });

  it("throws the stream's error, and destroys the stream when the consumer stops early", async () => {
    const failing = new PassThrough();
    failing.write(Buffer.from("a"));
    setTimeout(() => failing.destroy(new Error("the body broke")), 5);
    await assert.rejects(
      (async () => {
        for await (const _ of chunksOf(failing));
      })(),
      /the body broke/,
    );
    const left = new PassThrough();
    left.write(Buffer.from("a"));
    left.write(Buffer.from("b"));
    for await (const _ of chunksOf(left)) break;
    assert.equal(left.destroyed, true);
    // A stream that ends before any byte: nothing, and done.
    const empty = new PassThrough();
    empty.end();
    const none: Buffer[] = [];
    for await (const chunk of chunksOf(empty)) none.push(chunk);
    assert.deepEqual(none, []);
  });
});
