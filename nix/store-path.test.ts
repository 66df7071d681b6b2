import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import {
  isStorePathHash,
  parseStorePath,
  parseStorePathBasename,
  parseStorePathHash,
  type StorePathHash,
} from "./store-path.ts";

const HASH = "gdh8165b7rg4y53v64chjys7mbbw89f9";

describe("store paths", () => {
  it("parses full paths and basenames (real cache.nixos.org paths)", () => {
    const p = parseStorePath(`/nix/store/${HASH}-hello-2.10`);
    assert.deepEqual(p, {
      storeDir: "/nix/store",
      hash: HASH,
      name: "hello-2.10",
      basename: `${HASH}-hello-2.10`,
      path: `/nix/store/${HASH}-hello-2.10`,
    });
    assert.deepEqual(parseStorePathBasename(`${HASH}-hello-2.10`), p);
    const drv = parseStorePathBasename("5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv");
    assert.equal(drv.name, "hello-2.10.drv");
  });

  it("honours another store directory", () => {
    const p = parseStorePath(`/opt/store/${HASH}-x`, "/opt/store");
    assert.equal(p.path, `/opt/store/${HASH}-x`);
    assert.equal(parseStorePathBasename(`${HASH}-x`, "/opt/store").path, `/opt/store/${HASH}-x`);
    assert.throws(() => parseStorePath(`/nix/store/${HASH}-x`, "/opt/store"), /not in \/opt\/store/);
    assert.throws(() => parseStorePath(`/nix/store/${HASH}-x`, "/nix/store/"), /store directory/);
    assert.throws(() => parseStorePath(`/nix/store/${HASH}-x`, "nix/store"), /store directory/);
  });

  it("accepts every allowed name character and names up to 211 characters", () => {
    for (const name of ["A-Za-z0-9+-._?=", "a", "x".repeat(211), "foo.bar", "-", "a..b", "?=+"]) {
      assert.equal(parseStorePathBasename(`${HASH}-${name}`).name, name);
    }
  });

  it("rejects bad names", () => {
    for (const name of [
      "",
      "x".repeat(212),
      ".hidden",
      ".",
      "..",
      "a b",
      "a/b",
      "a:b",
      "ü",
      "a\nb",
      "a@b",
      "a~b",
    ]) {
      assert.throws(() => parseStorePathBasename(`${HASH}-${name}`), NixFormatError, JSON.stringify(name));
    }
    assert.throws(() => parseStorePathBasename(`${HASH}-.x`), /starts with "."/);
    assert.throws(() => parseStorePathBasename(`${HASH}-${"x".repeat(212)}`), /longer than 211/);
    assert.throws(() => parseStorePathBasename(`${HASH}-a b`), /character " "/);
  });

  it("rejects bad hash parts and shapes", () => {
    for (const bad of [
      `${HASH}hello`, // no dash
      `${HASH}-`, // no name
      `${HASH.slice(1)}-hello`, // 31 chars
      `e${HASH.slice(1)}-hello`, // 'e' is not nix32
      `${HASH.toUpperCase()}-hello`,
      HASH,
      "",
    ]) {
      assert.throws(() => parseStorePathBasename(bad), NixFormatError, bad);
    }
    assert.throws(() => parseStorePath(`/nix/store/${HASH}-hello/bin/hello`), /inside a store path/);
    assert.throws(() => parseStorePath(`${HASH}-hello`), /not in \/nix\/store/);
    assert.throws(() => parseStorePath(`/nix/store//${HASH}-hello`), NixFormatError);
  });

  it("validates store path hashes into the branded type", () => {
    const h: StorePathHash = parseStorePathHash(HASH);
    assert.equal(h, HASH);
    assert.ok(isStorePathHash(HASH));
    for (const bad of [
      "",
      HASH.slice(1),
      `${HASH}0`,
      `${HASH.slice(1)}e`,
      `${HASH.slice(1)}o`,
      `${HASH.slice(1)}u`,
    ]) {
      assert.ok(!isStorePathHash(bad), bad);
      assert.throws(() => parseStorePathHash(bad), /32 nix32 characters/);
    }
    assert.ok(!isStorePathHash(`${HASH.slice(1)}t`));
  });
});
