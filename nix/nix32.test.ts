import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import { decodeNix32, encodeNix32, nix32Length } from "./nix32.ts";
import { realNix } from "./test-support/real-nix.ts";

const hex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

describe("nix32", () => {
  it("encodes known digests as Nix does", () => {
    // sha256("") — `nix-hash --type sha256 --to-base32 e3b0…`
    const empty = hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert.equal(encodeNix32(empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    // the lowest byte holds the lowest bits, written last
    assert.equal(
      encodeNix32(hex(`${"00".repeat(31)}01`)),
      "0080000000000000000000000000000000000000000000000000",
    );
    assert.equal(
      encodeNix32(hex(`01${"00".repeat(31)}`)),
      "0000000000000000000000000000000000000000000000000001",
    );
    // sha1("") — 20 bytes make the 32 characters of a store path hash
    assert.equal(
      encodeNix32(hex("da39a3ee5e6b4b0d3255bfef95601890afd80709")),
      "143xibwh31h9bvxzalr0sjvbbvpa6ffs",
    );
    assert.equal(encodeNix32(new Uint8Array(0)), "");
  });

  it("decodes what it encodes, for every length", () => {
    for (let size = 0; size <= 70; size++) {
      const bytes = new Uint8Array(randomBytes(size));
      const s = encodeNix32(bytes);
      assert.equal(s.length, nix32Length(size));
      assert.equal(toHex(decodeNix32(s)), toHex(bytes));
    }
    assert.equal(nix32Length(32), 52);
    assert.equal(nix32Length(20), 32);
  });

  it("agrees with the real nix-hash on random digests (sha256, sha1, md5)", (t) => {
    const nix = realNix();
    if (!nix) return t.skip("no real Nix");
    for (const [type, size] of [
      ["sha256", 32],
      ["sha1", 20],
      ["md5", 16],
    ] as const) {
      const digests = Array.from({ length: 40 }, () => new Uint8Array(randomBytes(size)));
      const out = nix.run("nix-hash", ["--type", type, "--to-base32", ...digests.map(toHex)]);
      const golden = out.toString().trim().split("\n");
      assert.equal(golden.length, digests.length);
      digests.forEach((d, k) => {
        assert.equal(encodeNix32(d), golden[k]);
        assert.equal(toHex(decodeNix32(golden[k]!)), toHex(d));
      });
    }
  });

  it("rejects characters outside the alphabet", () => {
    const good = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    for (const bad of ["e", "o", "u", "t", "A", "-", " ", "é", "\n"]) {
      const s = good.slice(0, 20) + bad + good.slice(21);
      assert.throws(() => decodeNix32(s), NixFormatError, `accepted ${JSON.stringify(bad)}`);
    }
  });

  it("rejects lengths that encode no whole number of bytes", () => {
    for (const len of [1, 3, 6, 51, 54]) {
      assert.throws(() => decodeNix32("0".repeat(len)), /length/);
    }
  });

  it("rejects non-zero bits past the end, as Nix does ('invalid base-32 hash')", () => {
    // for 32 bytes the first of 52 characters carries 1 bit: only '0' and '1' are valid there
    const rest = "mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    assert.doesNotThrow(() => decodeNix32(`0${rest}`));
    assert.doesNotThrow(() => decodeNix32(`1${rest}`));
    for (const c of "23456789abcdfghijklmnpqrsvwxyz") {
      assert.throws(() => decodeNix32(c + rest), /bits past/);
    }
    // 20 bytes = 160 bits = exactly 32 characters: every first character is fine
    assert.doesNotThrow(() => decodeNix32("z43xibwh31h9bvxzalr0sjvbbvpa6ffs"));
  });
});
