// The push pipeline's upload order: weights along the longest chain of uploads, and a semaphore that gives a
// free place to the heaviest waiter; small paths in batches. The server here is a stand-in that records what
// it was sent (tests in test/hook push to a real server): it is how the batches' order, a refusal inside a
// batch and a server from before batches can be set up exactly.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { PublicKey } from "../nix/index.ts";
import { type BatchItemResult, type Client, PushError, type PushPathInfo } from "./client.ts";
import type { LocalPathInfo } from "./local-store.ts";
import {
  createPusher,
  createSemaphore,
  criticalPathWeights,
  type LocalStore,
  type PushEvents,
} from "./pipeline.ts";

const MiB = 1024 * 1024;
const info = (name: string, narSize: number, references: string[] = []): LocalPathInfo =>
  ({
    path: `/nix/store/${name.padEnd(32, "0")}-${name}`,
    narHash: "sha256:0000000000000000000000000000000000000000000000000000",
    narSize,
    references: references.map((r) => `/nix/store/${r.padEnd(32, "0")}-${r}`),
  }) as LocalPathInfo;

/** A local store of these infos (a closure query answers all of them), each NAR 8 bytes. */
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

describe("roots the cache has", () => {
  /** storeOf, counting the closure queries it is asked. */
  function countingStore(infos: LocalPathInfo[]) {
    const asked: string[][] = [];
    const store: LocalStore = {
      ...storeOf(infos),
      pathInfos: async (paths) => {
        asked.push([...paths]);
        return infos;
      },
    };
    return { store, asked };
  }

  /** A stand-in server that has `present` and says so; records every query and upload. */
  function serverWith(present: string[]) {
    const queries: string[][] = [];
    const uploads: string[] = [];
    const client = {
      missing: async (paths: readonly string[]) => {
        queries.push([...paths]);
        return paths.filter((p) => !present.includes(p));
      },
      uploadBatch: async (items: readonly { info: PushPathInfo }[]) => {
        for (const { info: pushed } of items) uploads.push(pushed.storePath);
        return items.map(() => ({ result: { status: "stored" } as never }));
      },
    };
    return { client: client as unknown as Client, queries, uploads };
  }

  /** A pusher with these upstream keys (ours and the cache's; none by default). */
  const pusherOf = (
    client: Client,
    store: LocalStore,
    keys: { ours?: PublicKey[]; cache?: PublicKey[] } = {},
    events: PushEvents = {},
  ) =>
    createPusher({
      client,
      concurrency: 4,
      upstreamKeys: async () => keys.ours ?? [],
      cacheUpstreamKeys: async () => keys.cache ?? [],
      store,
      events,
    });

  it("settles a root the cache has with one query, without asking the local store for its closure", async () => {
    const dep = info("d1", 1000);
    const root = info("r1", 1000, ["d1"]);
    const { store, asked } = countingStore([dep, root]);
    const { client, queries, uploads } = serverWith([root.path, dep.path]);
    const cached: string[][] = [];
    const report = await pusherOf(client, store, {}, { cached: (roots) => cached.push([...roots]) }).push([
      root.path,
    ]);
    assert.deepEqual(report.roots, [{ path: root.path, kind: "done", how: "present" }]);
    assert.deepEqual(report.paths, []);
    assert.deepEqual(asked, [], "the local store was not asked");
    assert.deepEqual(queries, [[root.path]], "one query, for the root");
    assert.deepEqual(uploads, []);
    assert.deepEqual(cached, [[root.path]]);
  });

  it("expands and pushes only the roots the cache lacks", async () => {
    const had = info("r1", 1000);
    const dep = info("d2", 1000);
    const lacking = info("r2", 1000, ["d2"]);
    const { store, asked } = countingStore([dep, lacking]);
    const { client, queries, uploads } = serverWith([had.path]);
    const report = await pusherOf(client, store).push([had.path, lacking.path]);
    assert.deepEqual(
      report.roots.map((r) => [r.path, r.kind, r.how]),
      [
        [had.path, "done", "present"],
        [lacking.path, "done", "stored"],
      ],
    );
    assert.deepEqual(asked, [[lacking.path]], "only the lacking root's closure was asked for");
    assert.deepEqual(queries, [
      [had.path, lacking.path],
      [dep.path, lacking.path],
    ]);
    assert.deepEqual(uploads, [dep.path, lacking.path]);
  });

  it("leaves the roots to retry, the store unasked, when the first query fails", async () => {
    const root = info("r1", 1000);
    const { store, asked } = countingStore([root]);
    const client = {
      missing: async () => {
        throw new PushError(0, "unreachable", "cannot reach http://127.0.0.1:9: connect ECONNREFUSED");
      },
    } as unknown as Client;
    const report = await pusherOf(client, store).push([root.path]);
    assert.deepEqual(report.roots, [
      {
        path: root.path,
        kind: "retry",
        code: "unreachable",
        reason: "cannot reach http://127.0.0.1:9: connect ECONNREFUSED",
      },
    ]);
    assert.deepEqual(asked, []);
  });

  it("looks at a cached root's closure when the cache leaves to upstream what this pusher would send", async () => {
    // The cache trusts an upstream key this pusher does not (`--upstream-keys none`): the cache may hold the
    // root with a reference only upstream serves, which this pusher wants in the cache.
    const upstreamKey = { name: "upstream-1", key: new Uint8Array(32).fill(7) };
    const dep = info("d1", 1000);
    const root = info("r1", 1000, ["d1"]);
    const { store, asked } = countingStore([dep, root]);
    const { client, queries, uploads } = serverWith([root.path]);
    const report = await pusherOf(client, store, { cache: [upstreamKey] }).push([root.path]);
    assert.deepEqual(asked, [[root.path]]);
    assert.deepEqual(queries, [[dep.path, root.path]]);
    assert.deepEqual(uploads, [dep.path]);
    assert.deepEqual(report.roots, [{ path: root.path, kind: "done", how: "present" }]);
    // With the same key on both sides, the root settles it.
    const same = serverWith([root.path]);
    const second = countingStore([dep, root]);
    await pusherOf(same.client, second.store, {
      ours: [upstreamKey],
      cache: [{ ...upstreamKey, key: new Uint8Array(upstreamKey.key) }],
    }).push([root.path]);
    assert.deepEqual(second.asked, []);
    assert.deepEqual(same.uploads, []);
  });
});
