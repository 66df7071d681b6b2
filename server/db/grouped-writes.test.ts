import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { groupedWrites } from "./grouped-writes.ts";

interface Row {
  key: string;
  value: string;
}

/** A `write` whose statements the test commits or fails by hand, in any order. */
function manualWrites() {
  const statements: { rows: readonly Row[]; commit(): void; fail(error: Error): void }[] = [];
  const write = (rows: readonly Row[]) =>
    new Promise<void>((resolve, reject) => {
      statements.push({ rows: [...rows], commit: resolve, fail: reject });
    });
  return { statements, write };
}

const tick = () => new Promise((r) => setImmediate(r));
const row = (key: string, value = `v-${key}`): Row => ({ key, value });

/** Whether a promise has settled yet (after the microtasks already queued). */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await tick();
  return done;
}

describe("groupedWrites", () => {
  it("writes at once when nothing is in flight, and gathers the writes asked for meanwhile", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({ write, key: (r) => r.key });
    const a = put(row("a"));
    assert.deepEqual(
      statements.map((s) => s.rows),
      [[row("a")]],
      "no waiting for a timer",
    );
    const b = put(row("b"));
    const c = put(row("c"));
    await tick();
    assert.equal(statements.length, 1, "the others wait for the statement in flight");
    assert.equal(await settled(a), false, "a write settles only when its statement has committed");
    statements[0]!.commit();
    await a;
    await tick();
    assert.deepEqual(statements[1]?.rows, [row("b"), row("c")], "one statement for what gathered");
    assert.equal(await settled(b), false);
    statements[1]!.commit();
    await Promise.all([b, c]);
  });

  it("fails every write of a failed statement, and goes on with the next group", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({ write, key: (r) => r.key });
    const a = put(row("a"));
    const b = put(row("b"));
    const c = put(row("c"));
    statements[0]!.commit();
    await a;
    await tick();
    statements[1]!.fail(new Error("database is down"));
    await assert.rejects(b, /database is down/);
    await assert.rejects(c, /database is down/);
    const d = put(row("d"));
    assert.deepEqual(statements[2]?.rows, [row("d")]);
    statements[2]!.commit();
    await d;
  });

  it("writes a key once per statement, the value asked for last, and settles both writes with it", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({ write, key: (r) => r.key });
    const first = put(row("a"));
    const older = put(row("k", "older"));
    const newer = put(row("k", "newer"));
    statements[0]!.commit();
    await first;
    await tick();
    assert.deepEqual(statements[1]?.rows, [row("k", "newer")]);
    statements[1]!.commit();
    await Promise.all([older, newer]);
  });

  it("puts at most maxItems rows in a statement", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({ write, key: (r) => r.key, maxItems: 2 });
    const all = ["a", "b", "c", "d"].map((k) => put(row(k)));
    statements[0]!.commit();
    await tick();
    assert.deepEqual(statements[1]?.rows, [row("b"), row("c")]);
    statements[1]!.commit();
    await tick();
    assert.deepEqual(statements[2]?.rows, [row("d")]);
    statements[2]!.commit();
    await Promise.all(all);
  });

  it("puts at most maxBytes in a statement, and an item larger than that alone", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({
      write,
      key: (r) => r.key,
      bytes: (r) => r.value.length,
      maxBytes: 10,
    });
    const all = [row("a"), row("b", "12345"), row("c", "123456"), row("d", "12345678901"), row("e", "1")].map(
      (r) => put(r),
    );
    for (const expected of [["a"], ["b"], ["c"], ["d"], ["e"]]) {
      await tick();
      assert.deepEqual(
        statements.at(-1)?.rows.map((r) => r.key),
        expected,
      );
      statements.at(-1)!.commit();
    }
    await Promise.all(all);
    const { statements: grouped, write: write2 } = manualWrites();
    const put2 = groupedWrites<Row>({
      write: write2,
      key: (r) => r.key,
      bytes: (r) => r.value.length,
      maxBytes: 10,
    });
    const more = [row("a"), row("b", "1234"), row("c", "12345"), row("d", "12")].map((r) => put2(r));
    grouped[0]!.commit();
    await tick();
    assert.deepEqual(
      grouped[1]?.rows.map((r) => r.key),
      ["b", "c"],
      "4 + 5 bytes fit in 10; d waits",
    );
    grouped[1]!.commit();
    await tick();
    grouped[2]!.commit();
    await Promise.all(more);
  });

  it("sends the next group beside a statement that stalls", async () => {
    const { statements, write } = manualWrites();
    const put = groupedWrites<Row>({ write, key: (r) => r.key, stallMs: 20 });
    const stuck = put(row("a"));
    const next = put(row("b"));
    await tick();
    assert.equal(statements.length, 1);
    await new Promise((r) => setTimeout(r, 40));
    assert.deepEqual(statements[1]?.rows, [row("b")], "gone out beside the stalled one");
    statements[1]!.commit();
    await next;
    assert.equal(await settled(stuck), false, "the stalled write still waits for its own statement");
    statements[0]!.commit();
    await stuck;
  });

  it("fails the writes of a statement that throws before it starts", async () => {
    const put = groupedWrites<Row>({
      write: () => {
        throw new Error("no connection");
      },
      key: (r) => r.key,
    });
    await assert.rejects(put(row("a")), /no connection/);
    await assert.rejects(put(row("b")), /no connection/, "and is not left busy");
  });
});
