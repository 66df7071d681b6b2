import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { constants, PerformanceObserver } from "node:perf_hooks";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { createLifecycle } from "./lifecycle.ts";
import { memoryTrimUnavailable, quietTrimmer } from "./trim-when-quiet.ts";

describe("quietTrimmer", () => {
  it("trims once after a burst, at the first tick with nothing in flight and nothing begun since the last", () => {
    const lifecycle = createLifecycle();
    let trims = 0;
    const trimmer = quietTrimmer(lifecycle, { trim: () => ++trims > 0, growthBytes: 0 })!;
    assert.equal(trimmer.tick(), false, "nothing happened yet");
    const first = lifecycle.begin();
    const second = lifecycle.begin();
    assert.equal(trimmer.tick(), false, "requests in flight");
    first();
    second();
    lifecycle.begin()();
    assert.equal(trimmer.tick(), false, "a request began (and ended) since the previous tick");
    assert.equal(trimmer.tick(), true, "a whole tick quiet after the burst");
    assert.equal(trims, 1);
    assert.equal(trimmer.tick(), false, "no new activity: no second trim");
    assert.equal(trimmer.tick(), false);
    assert.equal(trims, 1);
  });

  it("never trims while requests keep coming (those answered at once too), and trims once they stop", () => {
    const lifecycle = createLifecycle();
    let trims = 0;
    const trimmer = quietTrimmer(lifecycle, { trim: () => ++trims > 0, growthBytes: 0 })!;
    for (let i = 0; i < 10; i++) {
      if (i % 2 === 0) lifecycle.begin()();
      else lifecycle.answeredAtOnce();
      assert.equal(trimmer.tick(), false, `tick ${i}: a request began since the last`);
    }
    const long = lifecycle.begin();
    assert.equal(trimmer.tick(), false);
    assert.equal(trimmer.tick(), false, "one long request in flight (an upload)");
    long();
    assert.equal(trimmer.tick(), true);
    assert.equal(trims, 1);
  });

  it("trims only after a burst that left the process 16 MiB larger than the last trim did", () => {
    const lifecycle = createLifecycle();
    const MiB = 1024 * 1024;
    let rss = 100 * MiB;
    let trims = 0;
    const trimmer = quietTrimmer(lifecycle, {
      rss: () => rss,
      trim: () => {
        trims++;
        rss -= 30 * MiB;
        return true;
      },
    })!;
    const burst = (grow: number) => {
      lifecycle.begin()();
      rss += grow;
      trimmer.tick();
      return trimmer.tick();
    };
    assert.equal(burst(15 * MiB), false, "a few reads: 15 MiB more, no trim");
    assert.equal(burst(2 * MiB), true, "17 MiB over the start in all");
    assert.equal(rss, 87 * MiB);
    assert.equal(burst(10 * MiB), false, "10 MiB over what the trim left");
    assert.equal(burst(40 * MiB), true);
    assert.equal(trims, 2);
  });

  it("runs V8's collections and glibc's malloc_trim through the addon, from a timer that does not hold the process", async () => {
    assert.equal(memoryTrimUnavailable, undefined, `the memory addon did not load: ${memoryTrimUnavailable}`);
    const lifecycle = createLifecycle();
    const trimmer = quietTrimmer(lifecycle, { growthBytes: 0 })!;
    assert.ok(trimmer, "a trimmer with the addon's trim");
    lifecycle.begin()();
    trimmer.tick();
    // V8's low-memory notification runs full collections: a PerformanceObserver sees them.
    const kinds: number[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries())
        kinds.push((entry as unknown as { detail: { kind: number } }).detail.kind);
    });
    observer.observe({ entryTypes: ["gc"] });
    assert.equal(trimmer.tick(), true, "the addon's collections and trim ran");
    await new Promise((r) => setTimeout(r, 50));
    observer.disconnect();
    assert.ok(kinds.includes(constants.NODE_PERFORMANCE_GC_MAJOR), `full collections: ${kinds.join(",")}`);
    // A process whose only timer is the trimmer's exits on its own.
    const script = `import { createLifecycle } from "./server/lifecycle.ts";
      import { quietTrimmer } from "./server/trim-when-quiet.ts";
      quietTrimmer(createLifecycle()).start(10);`;
    const exited = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script],
      { timeout: 20_000 },
    );
    assert.equal(exited.stderr, "");
  });

  it("gives a burst's freed C heap back: resident size falls after the trim", async () => {
    // A child allocates 200 MB in 64 KiB Buffers (malloc, below glibc's mmap threshold) with a small
    // Buffer kept between every 64 of them, frees the rest: glibc keeps the pages; malloc_trim returns them.
    const script = `import { createLifecycle } from "./server/lifecycle.ts";
      import { quietTrimmer } from "./server/trim-when-quiet.ts";
      const lifecycle = createLifecycle();
      const trimmer = quietTrimmer(lifecycle);
      let big = [];
      const kept = [];
      for (let i = 0; i < 3200; i++) { big.push(Buffer.allocUnsafeSlow(65536).fill(1)); if (i % 64 === 0) kept.push(Buffer.allocUnsafeSlow(64)); }
      big = undefined;
      globalThis.gc(); globalThis.gc();
      await new Promise((r) => setTimeout(r, 100));
      const before = process.memoryUsage.rss();
      lifecycle.begin()();
      trimmer.tick();
      trimmer.tick();
      console.log(JSON.stringify({ before, after: process.memoryUsage.rss(), kept: kept.length }));`;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script],
      { timeout: 30_000, env: { ...process.env, MALLOC_ARENA_MAX: "2" } },
    );
    const { before, after } = JSON.parse(stdout) as { before: number; after: number };
    const MB = 1e6;
    assert.ok(
      before - after > 50 * MB,
      `RSS ${(before / MB).toFixed(1)} MB before the trim, ${(after / MB).toFixed(1)} after: expected > 50 MB back`,
    );
  });
});
