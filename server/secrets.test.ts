import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatSecretKey, generateSecretKey } from "../nix/index.ts";
import { createSecretBox } from "./secrets.ts";

describe("SecretBox", () => {
  const box = createSecretBox("a server secret for the tests, long enough");

  it("opens what it sealed, and refuses what another secret sealed", () => {
    const sealed = box.seal("some text");
    assert.match(sealed, /^v1:/);
    assert.equal(box.open(sealed), "some text");
    assert.throws(() => createSecretBox("another secret").open(sealed), /server secret differs/);
  });

  it("opens a signing key parsed, and keeps it by its sealed form", () => {
    const key = generateSecretKey("cache-1");
    const sealed = box.seal(formatSecretKey(key));
    const opened = box.openSigningKey(sealed);
    assert.equal(opened.name, "cache-1");
    assert.deepEqual(Buffer.from(opened.seed), Buffer.from(key.seed));
    assert.deepEqual(Buffer.from(opened.publicKey), Buffer.from(key.publicKey));
    assert.equal(box.openSigningKey(sealed), opened, "the second open is the kept key");
    // Another sealing of the same key is another entry, with the same key in it.
    const again = box.openSigningKey(box.seal(formatSecretKey(key)));
    assert.notEqual(again, opened);
    assert.deepEqual(Buffer.from(again.seed), Buffer.from(key.seed));
  });

  it("refuses a sealed key whose public key does not match its seed, every time", () => {
    const a = generateSecretKey("k");
    const b = generateSecretKey("k");
    const forged = box.seal(formatSecretKey({ name: "k", seed: a.seed, publicKey: b.publicKey }));
    for (let i = 0; i < 2; i++) assert.throws(() => box.openSigningKey(forged), /does not match its seed/);
  });
});
