// The push pipeline's upload order: weights along the longest chain of uploads, and a semaphore that gives a
// free place to the heaviest waiter; small paths in batches. The server here is a stand-in that records what
// it was sent (tests in test/hook push to a real server): it is how the batches' order, a refusal inside a
// batch and a server from before batches can be set up exactly.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type BatchItemResult, type Client, PushError, type PushPathInfo } from "./client.ts";
import type { LocalPathInfo } from "./local-store.ts";
import { createPusher, createSemaphore, criticalPathWeights, type LocalStore } from "./pipeline.ts";

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

  /** A semaphore of one place, held; `wait` queues a waiter that notes its name in `order` once in. */
  async function heldSemaphore() {
    const acquire = createSemaphore(1);
    const holder = await acquire(0);
    const order: string[] = [];
    const wait = (name: string, priority: number) =>
      acquire(priority).then((release) => {
        order.push(name);
        release();
      });
    return { holder, order, wait };
  }

  it("gives a free place to the waiter of highest priority, the earliest among equals", async () => {
    const { holder, order, wait } = await heldSemaphore();
    const all = [wait("low", 1), wait("high-1", 5), wait("mid", 3), wait("high-2", 5)];
    holder();
    await Promise.all(all);
    assert.deepEqual(order, ["high-1", "high-2", "mid", "low"]);
  });

  it("gives a freed place to a heavier waiter that the holder's end made ready, not to one already waiting", async () => {
    const { holder, order, wait } = await heldSemaphore();
    const light = wait("light, waiting before", 1);
    // As an upload ends: its place is released, then what waited for its path asks for one.
    holder();
    const heavy = Promise.resolve().then(() => wait("heavy, ready as the holder ends", 9));
    await Promise.all([light, heavy]);
    assert.deepEqual(order, ["heavy, ready as the holder ends", "light, waiting before"]);
  });
});

describe("batches of small paths", () => {
  const storeOf = (infos: LocalPathInfo[]): LocalStore => ({
    pathInfos: async () => infos,
    invalidPaths: async () => [],
    derivationOutputs: async () => ({ outputs: [], missing: [] }),
    narSource: () =>
      function* (scratch) {
        yield scratch.subarray(0, 8);
      },
    onDisk: () => true,
  });

  /** A stand-in server: records each request (a batch's paths, or one path), answers with `answer`. */
  function recordingClient(
    answer: (info: PushPathInfo) => BatchItemResult = () => ({ result: { status: "stored" } as never }),
  ) {
    const requests: string[][] = [];
    const client = {
      missing: async (paths: readonly string[]) => [...paths],
      upload: async (info: PushPathInfo) => {
        requests.push([info.storePath]);
        return { storePath: info.storePath, status: "stored" };
      },
      uploadBatch: async (items: readonly { info: PushPathInfo }[]) => {
        requests.push(items.map((i) => i.info.storePath));
        await new Promise((resolve) => setTimeout(resolve, 5));
        return items.map(({ info }) => answer(info));
      },
    };
    return { client: client as unknown as Client, requests };
  }

  /** Every path goes up after its references: earlier in the same batch, or in an earlier request. */
  function assertOrdered(requests: string[][], infos: LocalPathInfo[]) {
    const sentAt = new Map<string, [number, number]>();
    for (const [r, paths] of requests.entries()) for (const [i, p] of paths.entries()) sentAt.set(p, [r, i]);
    for (const info of infos)
      for (const ref of info.references) {
        if (ref === info.path) continue;
        const [r, i] = sentAt.get(info.path)!;
        const [rr, ri] = sentAt.get(ref)!;
        assert.ok(rr < r || (rr === r && ri < i), `${ref} goes before ${info.path}`);
      }
  }

  it("sends small paths in batches (references before referrers), big ones on their own", async () => {
    // A chain of 100 small paths, a big path on the chain, and small paths above it.
    const chain = Array.from({ length: 100 }, (_, i) => info(`s${i}`, 1000, i ? [`s${i - 1}`] : []));
    const big = info("big", 8 * MiB, ["s99"]);
    const above = Array.from({ length: 10 }, (_, i) => info(`a${i}`, 1000, ["big", "s50"]));
    const infos = [...chain, big, ...above];
    const { client, requests } = recordingClient();
    const report = await createPusher({
      client,
      concurrency: 4,
      upstreamKeys: async () => [],
      store: storeOf(infos),
    }).push([above[0]!.path]);
    assert.ok(
      report.paths.every((p) => p.kind === "stored"),
      JSON.stringify(report.paths.filter((p) => p.kind !== "stored")),
    );
    assertOrdered(requests, infos);
    assert.deepEqual(
      requests.filter((r) => r.includes(big.path)),
      [[big.path]],
      "the big path goes alone",
    );
    // 100 paths of a chain need 2 batches (64 paths at most each), not 100 requests.
    assert.ok(requests.length <= 5, `${requests.length} requests: ${requests.map((r) => r.length)}`);
  });

  it("fails a path whose reference was refused in the same batch with that reference's reason", async () => {
    const a = info("a", 1000);
    const b = info("b", 1000, ["a"]);
    const c = info("c", 1000);
    const { client } = recordingClient((pushed) =>
      pushed.storePath === a.path
        ? { refused: new PushError(422, "hash_mismatch", "NarHash mismatch for a") }
        : pushed.storePath === b.path
          ? { refused: new PushError(422, "missing_references", "references not in cache: a") }
          : { result: { status: "stored" } as never },
    );
    const report = await createPusher({
      client,
      concurrency: 4,
      upstreamKeys: async () => [],
      store: storeOf([a, b, c]),
    }).push([b.path, c.path]);
    const outcome = (p: LocalPathInfo) => report.paths.find((o) => o.path === p.path)!;
    assert.deepEqual([outcome(a).kind, outcome(a).code], ["failed", "hash_mismatch"]);
    assert.deepEqual([outcome(b).kind, outcome(b).code], ["failed", "reference_failed"]);
    assert.match(outcome(b).reason!, /reference .*-a was not pushed: NarHash mismatch for a/);
    assert.equal(outcome(c).kind, "stored");
  });

  it("uploads one path at a time, in order, to a server from before batches", async () => {
    const infos = Array.from({ length: 20 }, (_, i) => info(`p${i}`, 1000, i ? [`p${i - 1}`] : []));
    const { client, requests } = recordingClient();
    let batches = 0;
    (client as { uploadBatch: unknown }).uploadBatch = async () => {
      batches++;
      throw new PushError(404, "batch_unsupported", "no route POST /api/v1/caches/main/paths");
    };
    const pusher = createPusher({
      client,
      concurrency: 4,
      upstreamKeys: async () => [],
      store: storeOf(infos),
    });
    const report = await pusher.push([infos[19]!.path]);
    assert.ok(report.paths.every((p) => p.kind === "stored"));
    assert.equal(batches, 1, "asked once");
    assert.equal(requests.length, 20);
    assertOrdered(requests, infos);
  });
});
