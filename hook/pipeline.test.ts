// The push pipeline's upload order: weights along the longest chain of uploads, and a semaphore that gives a
// free place to the heaviest waiter.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { LocalPathInfo } from "./local-store.ts";
import { createSemaphore, criticalPathWeights } from "./pipeline.ts";

const MiB = 1024 * 1024;
const info = (name: string, narSize: number, references: string[] = []): LocalPathInfo =>
  ({
    path: `/nix/store/${name.padEnd(32, "0")}-${name}`,
    narHash: "sha256:0000000000000000000000000000000000000000000000000000",
    narSize,
    references: references.map((r) => `/nix/store/${r.padEnd(32, "0")}-${r}`),
  }) as LocalPathInfo;

describe("upload order", () => {
  it("weighs a path by its own NAR and the heaviest chain of uploads that refer to it", () => {
    // base <- big <- top, and a lone small path; big's chain outweighs everything else.
    const base = info("base", 1 * MiB);
    const big = info("big", 300 * MiB, ["base"]);
    const top = info("top", 1 * MiB, ["big", "side"]);
    const side = info("side", 2 * MiB);
    const lone = info("lone", 50 * MiB);
    const w = criticalPathWeights([base, side, lone, big, top]);
    const overhead = w.get(top.path)! - 1 * MiB;
    assert.ok(overhead > 0, "an upload costs more than its bytes");
    assert.equal(w.get(big.path), 300 * MiB + overhead + w.get(top.path)!);
    assert.equal(w.get(base.path), 1 * MiB + overhead + w.get(big.path)!);
    assert.equal(w.get(side.path), 2 * MiB + overhead + w.get(top.path)!);
    assert.equal(w.get(lone.path), 50 * MiB + overhead);
    // The small path at the head of the big chain goes before a bigger path that heads nothing.
    assert.ok(w.get(base.path)! > w.get(lone.path)!);
  });

  it("ignores self-references and references that are not uploaded", () => {
    const a = info("a", MiB, ["a", "elsewhere"]);
    const w = criticalPathWeights([a]);
    assert.equal(w.size, 1);
    assert.ok(w.get(a.path)! > MiB && w.get(a.path)! < 2 * MiB);
  });

  it("weighs a long chain without deep trouble", () => {
    const chain = Array.from({ length: 5000 }, (_, i) => info(`p${i}`, 1000, i ? [`p${i - 1}`] : []));
    const w = criticalPathWeights(chain);
    assert.ok(w.get(chain[0]!.path)! > w.get(chain[4999]!.path)! * 4000);
  });

  it("gives a free place to the waiter of highest priority, the earliest among equals", async () => {
    const acquire = createSemaphore(1);
    const holder = await acquire(0);
    const order: string[] = [];
    const wait = (name: string, priority: number) =>
      acquire(priority).then((release) => {
        order.push(name);
        release();
      });
    const all = [wait("low", 1), wait("high-1", 5), wait("mid", 3), wait("high-2", 5)];
    holder();
    await Promise.all(all);
    assert.deepEqual(order, ["high-1", "high-2", "mid", "low"]);
  });
});
