import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pairByPosition, type Row, ratioOf, renderTable } from "./report.ts";

const base: Row = {
  measure: "6 push",
  peer: "nix copy --to file:// (zstd)",
  unit: "s",
  values: [3, 4, 3],
  lowerIsBetter: true,
  isBaseline: true,
};

/** A peer's row compared with the baseline above. */
const peerRow = (over: Partial<Row>): Row => ({
  ...base,
  peer: "push",
  isBaseline: false,
  baseline: base.peer,
  ...over,
});

describe("ratioOf", () => {
  it("divides the medians when the row's samples have no pairs", () => {
    const peer = peerRow({ values: [4, 6, 5] });
    assert.equal(ratioOf([base, peer], peer, base.peer), 5 / 3);
  });

  it("takes the median of the paired ratios when every sample has its baseline timed next to it", () => {
    // Each push took 1.25x the copy just before it; the copies drifted from 3 to 4 s.
    const peer = peerRow({ values: [3.75, 5, 3.75], pairs: [3, 4, 3] });
    assert.equal(ratioOf([base, peer], peer, base.peer), 1.25);
    // Rates invert, so that a ratio over 1 is always the slower one.
    const rate = peerRow({ lowerIsBetter: false, values: [2, 2, 2], pairs: [4, 5, 6] });
    assert.equal(ratioOf([base, rate], rate, base.peer), 2.5);
  });

  it("falls back to the medians when some sample has no pair", () => {
    const peer = peerRow({ values: [4, 6, 5], pairs: [3] });
    assert.equal(ratioOf([base, peer], peer, base.peer), 5 / 3);
  });
});

describe("renderTable", () => {
  it("says which ratios are paired, and judges the target on the paired ratio", () => {
    const target = { text: "≤ 1.2× file://", ok: (_r: Row, x: number | undefined) => (x ?? 99) <= 1.2 };
    // By medians this row would be 3.3 / 3 = 1.10 as well; the 4.4 s sample is 1.10x its own copy too.
    const paired = peerRow({ values: [3.3, 4.4, 3.3], pairs: [3, 4, 3], target });
    const table = renderTable([base, paired]);
    const line = table.split("\n").find((l) => l.startsWith("| 6 push | push |"));
    assert.ok(line, table);
    assert.match(line, /1\.10× file:\/\/ \(paired\)/);
    assert.match(line, /\| yes \|$/);
  });

  it("adds the ratio to a second peer of the same measure, the S3 streaming floor by its short name", () => {
    const floor: Row = {
      ...base,
      peer: "S3 streaming floor: NARs in memory, zstd -3 as sent, a minimal Node relay, RGW + PostgreSQL; timed",
      isBaseline: false,
      values: [3.6, 4, 4.4],
    };
    const push = peerRow({ values: [4.8, 4.8, 4.8], pairs: [3, 4, 3], baseline2: floor.peer });
    const line = renderTable([base, floor, push])
      .split("\n")
      .find((l) => l.startsWith("| 6 push | push |"));
    assert.ok(line);
    assert.match(line, /1\.60× file:\/\/ \(paired\); 1\.20× S3 streaming floor \|/);
  });
});

describe("pairByPosition", () => {
  it("pairs the rows of the chosen measures with their baseline's samples of the same position", () => {
    // Run 2 was slow for both: by medians 5 / 3 = 1.67, by runs 4/3, 6/4, 5/3 → median 1.5.
    const peer = peerRow({ values: [4, 6, 5] });
    const other = peerRow({ measure: "1 narinfos", values: [4, 6, 5] });
    const baseOther = { ...base, measure: "1 narinfos" };
    const rows = [base, peer, baseOther, other];
    pairByPosition(rows, (m) => m.startsWith("6"));
    assert.deepEqual(peer.pairs, [3, 4, 3]);
    assert.equal(ratioOf(rows, peer, base.peer), 1.5);
    assert.equal(other.pairs, undefined);
    assert.equal(ratioOf(rows, other, base.peer), 5 / 3);
  });

  it("leaves a row whose samples do not line up with its baseline's, and one already paired", () => {
    const short = peerRow({ values: [4, 6] });
    const paired = peerRow({ peer: "paired", values: [4, 4, 4], pairs: [2, 2, 2] });
    pairByPosition([base, short, paired], () => true);
    assert.equal(short.pairs, undefined);
    assert.deepEqual(paired.pairs, [2, 2, 2]);
  });
});
