import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { groupedReads } from "./grouped-reads.ts";

/** A `read` whose queries the test answers by hand, in any order. */
function manualReads() {
  const queries: {
    scope: number;
    keys: readonly string[];
    answer(rows: Record<string, string>): void;
    fail(error: Error): void;
  }[] = [];
  const read = (scope: number, keys: readonly string[]) =>
    new Promise<Map<string, string>>((resolve, reject) => {
      queries.push({
        scope,
        keys,
        answer: (rows) => resolve(new Map(Object.entries(rows))),
        fail: reject,
      });
    });
  return { queries, read };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("groupedReads", () => {
  it("sends a read at once when none is in flight, and gathers the reads asked for meanwhile", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read });
    const a = reads.get(1, "a");
    assert.deepEqual(
      queries.map((q) => q.keys),
      [["a"]],
      "no waiting for a timer",
    );
    const b = reads.get(1, "b");
    const c = reads.get(1, "c");
    const b2 = reads.get(1, "b");
    await tick();
    assert.equal(queries.length, 1, "the others wait for the query in flight");
    queries[0]!.answer({ a: "row a" });
    assert.equal(await a, "row a");
    await tick();
    assert.deepEqual(queries[1]?.keys, ["b", "c"], "one query for what gathered, each key once");
    queries[1]!.answer({ c: "row c" });
    assert.deepEqual(await Promise.all([b, c, b2]), [undefined, "row c", undefined]);
  });

  it("never answers a read from a query that started before it was asked for", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read });
    const early = reads.get(1, "x");
    // "x" is committed now (say, through another replica), while the first query is still out.
    const late = reads.get(1, "x");
    queries[0]!.answer({});
    assert.equal(await early, undefined);
    await tick();
    assert.deepEqual(queries[1]?.keys, ["x"], "the later read goes out again");
    queries[1]!.answer({ x: "row x" });
    assert.equal(await late, "row x");
  });

  it("keeps scopes apart and bounds the keys per query", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read, maxKeys: 2 });
    const first = reads.get(1, "a");
    const rest = [reads.get(2, "a"), reads.get(1, "b"), reads.get(1, "c"), reads.get(1, "d")];
    queries[0]!.answer({ a: "1/a" });
    await first;
    await tick();
    assert.deepEqual([queries[1]?.scope, queries[1]?.keys], [2, ["a"]]);
    queries[1]!.answer({ a: "2/a" });
    await tick();
    assert.deepEqual([queries[2]?.scope, queries[2]?.keys], [1, ["b", "c"]]);
    queries[2]!.answer({ b: "1/b", c: "1/c" });
    await tick();
    assert.deepEqual([queries[3]?.scope, queries[3]?.keys], [1, ["d"]]);
    queries[3]!.answer({ d: "1/d" });
    assert.deepEqual(await Promise.all(rest), ["2/a", "1/b", "1/c", "1/d"]);
  });

  it("sends what one scope has left over after the other scopes", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read, maxKeys: 2 });
    const first = reads.get(1, "a");
    const rest = [reads.get(1, "b"), reads.get(1, "c"), reads.get(1, "d"), reads.get(2, "x")];
    for (let i = 0; i < 4; i++) {
      queries[i]!.answer({});
      await tick();
    }
    await first;
    await Promise.all(rest);
    assert.deepEqual(
      queries.map((q) => `${q.scope}:${q.keys.join(",")}`),
      ["1:a", "1:b,c", "2:x", "1:d"],
    );
  });

  it("fails every read of a failed query, and only those", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read });
    const first = reads.get(1, "a");
    const second = [reads.get(1, "b"), reads.get(1, "b")];
    queries[0]!.fail(new Error("connection lost"));
    await assert.rejects(first, /connection lost/);
    await tick();
    queries[1]!.answer({ b: "row b" });
    assert.deepEqual(await Promise.all(second), ["row b", "row b"]);
  });

  it("a read that throws instead of returning a promise fails its group, not the caller's stack", async () => {
    let calls = 0;
    const reads = groupedReads<string>({
      read: () => {
        calls++;
        if (calls === 1) throw new Error("bad statement");
        return Promise.resolve(new Map([["k", "row k"]]));
      },
    });
    await assert.rejects(reads.get(1, "k"), /bad statement/);
    assert.equal(await reads.get(1, "k"), "row k", "the next read still goes out");
  });

  it("a query that hangs holds the next group back only for stallMs", async () => {
    const { queries, read } = manualReads();
    const reads = groupedReads({ read, stallMs: 30 });
    const hung = reads.get(1, "a");
    const next = reads.get(1, "b");
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(queries[1]?.keys, ["b"], "sent beside the hung query");
    queries[1]!.answer({ b: "row b" });
    assert.equal(await next, "row b");
    queries[0]!.answer({ a: "row a" });
    assert.equal(await hung, "row a", "a late answer still reaches its reads");
  });
});
