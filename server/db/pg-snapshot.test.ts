import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { othersFinished, parseSnapshot } from "./pg-snapshot.ts";

const snap = parseSnapshot;

describe("parseSnapshot", () => {
  it("reads xmin, xmax and the ids in progress", () => {
    assert.deepEqual(snap("748:752:748,750"), {
      xmin: 748n,
      xmax: 752n,
      inProgress: new Set([748n, 750n]),
    });
    assert.deepEqual(snap("753:753:"), { xmin: 753n, xmax: 753n, inProgress: new Set() });
    // 64-bit ids (epoch in the high half).
    assert.equal(snap("4294967996:4294967997:").xmax, 4294967997n);
  });

  it("refuses anything else", () => {
    for (const bad of ["", "1:2", "1:2:3:4", "a:b:", "5:4:", "1:2:x", "1:3:2,"])
      assert.throws(() => snap(bad), /not a PostgreSQL snapshot/, bad);
  });
});

describe("othersFinished", () => {
  it("is false when nothing started or finished", () => {
    assert.equal(othersFinished(snap("100:100:"), snap("100:100:"), new Set()), false);
    assert.equal(othersFinished(snap("90:100:95"), snap("90:100:95"), new Set()), false);
  });

  it("is true when another transaction started and finished in between", () => {
    assert.equal(othersFinished(snap("100:100:"), snap("101:101:"), new Set()), true);
  });

  it("is true when a transaction in progress before has finished", () => {
    assert.equal(othersFinished(snap("95:100:95"), snap("100:100:"), new Set()), true);
  });

  it("is false when the only transactions that finished are this process's own", () => {
    const own = new Set([100n, 101n]);
    assert.equal(othersFinished(snap("100:100:"), snap("102:102:"), own), false);
    assert.equal(own.size, 0, "accounted for");
    const running = new Set([95n]);
    assert.equal(othersFinished(snap("95:100:95"), snap("100:100:"), running), false);
  });

  it("is false while others' transactions are still in progress, true once they finish", () => {
    assert.equal(othersFinished(snap("100:100:"), snap("100:102:100,101"), new Set()), false);
    assert.equal(othersFinished(snap("100:102:100,101"), snap("101:102:101"), new Set()), true);
  });

  it("counts one of its own among others' as others' finishing", () => {
    assert.equal(othersFinished(snap("100:100:"), snap("103:103:"), new Set([101n])), true);
  });

  it("is true at once when more ids were handed out than could be its own or running", () => {
    assert.equal(othersFinished(snap("100:100:"), snap("10000100:10000100:"), new Set([100n])), true);
  });

  it("is true when the later look is older (another server, a restore)", () => {
    assert.equal(othersFinished(snap("100:200:"), snap("100:150:"), new Set()), true);
  });

  it("forgets its own ids once finished, whatever the answer", () => {
    const own = new Set([50n, 100n, 105n]);
    assert.equal(othersFinished(snap("100:100:"), snap("102:102:"), own), true);
    assert.deepEqual([...own], [105n], "50 and 100 are finished; 105 not yet handed out");
  });
});
