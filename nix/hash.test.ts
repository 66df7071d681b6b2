import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import { formatHash, hashesEqual, normaliseHash, parseHash } from "./hash.ts";
import { realNix } from "./test-support/real-nix.ts";

// sha256("") in each spelling, as `nix hash to-base32|to-base16|to-base64|to-sri` print it
const EMPTY_NIX32 = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
const EMPTY_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const EMPTY_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

describe("hash", () => {
  it("parses every spelling Nix accepts to the same bytes", () => {
    for (const s of [
      EMPTY_NIX32,
      `sha256:${EMPTY_HEX}`,
      `sha256:${EMPTY_HEX.toUpperCase()}`,
      `sha256:${EMPTY_B64}`,
      `sha256-${EMPTY_B64}`,
    ]) {
      assert.equal(Buffer.from(parseHash(s)).toString("hex"), EMPTY_HEX, s);
      assert.equal(normaliseHash(s), EMPTY_NIX32);
    }
  });

  it("formats as sha256:<nix32>, and agrees with `nix hash` conversions", (t) => {
    const digest = createHash("sha256").update("").digest();
    assert.equal(formatHash(digest), EMPTY_NIX32);
    const nix = realNix();
    if (!nix) return t.skip("no real Nix");
    for (let k = 0; k < 5; k++) {
      const bytes = new Uint8Array(randomBytes(32));
      const h = Buffer.from(bytes).toString("hex");
      const sri = nix.run("nix", ["hash", "to-sri", "--type", "sha256", h]).toString().trim();
      const b32 = nix.run("nix", ["hash", "to-base32", "--type", "sha256", h]).toString().trim();
      assert.equal(formatHash(bytes), `sha256:${b32}`);
      assert.equal(normaliseHash(sri), `sha256:${b32}`);
      assert.ok(hashesEqual(sri, bytes));
    }
  });

  it("refuses other algorithms, bare digests and wrong lengths", () => {
    for (const bad of [
      "md5:d41d8cd98f00b204e9800998ecf8427e",
      "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
      `sha512:${"0".repeat(128)}`,
      "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
      EMPTY_NIX32.slice(7),
      EMPTY_HEX,
      EMPTY_B64,
      `SHA256:${EMPTY_HEX}`,
      `sha256:${EMPTY_HEX.slice(1)}`,
      `sha256:${EMPTY_HEX}0`,
      `sha256:${EMPTY_NIX32.slice(8)}`,
      `sha256-${EMPTY_B64.slice(0, -1)}`,
      `sha256-${EMPTY_HEX}`,
      "sha256:",
      "",
    ]) {
      assert.throws(() => parseHash(bad), NixFormatError, bad);
    }
    assert.throws(
      () => parseHash("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709"),
      /unsupported hash algorithm sha1/,
    );
  });

  it("refuses bad characters and non-canonical encodings", () => {
    assert.throws(() => parseHash(`sha256:${EMPTY_HEX.slice(0, -1)}g`), /base16/);
    assert.throws(() => parseHash(`sha256:${EMPTY_NIX32.slice(7, -1)}e`), /nix32/);
    assert.throws(
      () => parseHash("sha256:2mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
      /bits past/,
    );
    assert.throws(() => parseHash(`sha256-${EMPTY_B64.slice(0, 42)}!=`), /base64/);
    // 'V' and 'U' differ only in bits past the 32nd byte: same bytes, so only one may be accepted
    assert.throws(() => parseHash(`sha256-${EMPTY_B64.slice(0, 42)}V=`), /non-canonical/);
  });

  it("compares hashes across spellings", () => {
    assert.ok(hashesEqual(EMPTY_NIX32, `sha256-${EMPTY_B64}`));
    assert.ok(!hashesEqual(EMPTY_NIX32, new Uint8Array(32)));
    assert.ok(!hashesEqual(new Uint8Array(32), new Uint8Array(31)));
    assert.throws(() => hashesEqual("nonsense", EMPTY_NIX32), NixFormatError);
  });

  it("formatHash refuses digests that are not 32 bytes", () => {
    assert.throws(() => formatHash(new Uint8Array(20)), /32 bytes/);
  });
});
