import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, sign as cryptoSign } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import { type NarInfo, parseNarInfo } from "./narinfo.ts";
import {
  fingerprint,
  formatPublicKey,
  formatSecretKey,
  generateSecretKey,
  parsePublicKey,
  parseSecretKey,
  publicKeyOf,
  signFingerprint,
  verifyNarInfo,
  verifySignature,
} from "./signing.ts";
import { type GoldenCache, goldenCache, realNix } from "./test-support/real-nix.ts";

const CACHE_NIXOS_ORG = parsePublicKey("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=");
const TESTDATA = join(import.meta.dirname, "testdata", "cache.nixos.org");
const golden = readdirSync(TESTDATA)
  .filter((f) => f.endsWith(".narinfo"))
  .map((f) => ({ file: f, info: parseNarInfo(readFileSync(join(TESTDATA, f), "utf8")) }));
const hello = golden.find((g) => g.file.startsWith("gdh8165b"))!.info;

describe("fingerprint", () => {
  it("is 1;path;narHash;narSize;sorted full reference paths", () => {
    assert.equal(
      fingerprint(hello),
      "1;/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10;" +
        "sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8;197528;" +
        "/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27,/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
    );
  });

  it("sorts references, normalises the hash, ends in ';' without references", () => {
    const reversed = { ...hello, references: [...hello.references].reverse() };
    assert.equal(fingerprint(reversed), fingerprint(hello));
    const hex = {
      ...hello,
      narHash: "sha256:4f3e4c8a0ea5ae98c3eac1f88cc1eeec92e9fc11a2bc06b0a2e6c5cd4f91fb1b",
    };
    assert.match(fingerprint(hex), /;sha256:[0-9a-z]{52};/);
    assert.ok(fingerprint({ ...hello, references: [] }).endsWith(";197528;"));
  });

  it("refuses what cannot be fingerprinted", () => {
    assert.throws(() => fingerprint({ ...hello, narSize: 0 }), /NarSize 0/);
    assert.throws(() => fingerprint({ ...hello, references: ["/nix/store/x"] }), NixFormatError);
    assert.throws(
      () => fingerprint({ ...hello, storePath: "gdh8165b7rg4y53v64chjys7mbbw89f9-hello" }),
      NixFormatError,
    );
    assert.throws(
      () => fingerprint({ ...hello, narHash: "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709" }),
      /sha1/,
    );
  });
});

describe("verifying real cache.nixos.org signatures", () => {
  for (const { file, info } of golden) {
    it(`${file}: its Sig verifies; changing NarHash, NarSize or References breaks it`, () => {
      assert.deepEqual(verifyNarInfo(info, [CACHE_NIXOS_ORG]), info.sigs);
      assert.equal(info.sigs.length, 1);
      const otherHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
      const tampered: NarInfo[] = [
        { ...info, narHash: otherHash },
        { ...info, narSize: info.narSize + 1 },
        { ...info, references: info.references.slice(1) },
        { ...info, references: [...info.references, "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27"] },
        { ...info, storePath: info.storePath.replace(/-[^/]*$/, "-renamed") },
      ];
      for (const t of tampered) assert.deepEqual(verifyNarInfo(t, [CACHE_NIXOS_ORG]), []);
    });
  }

  it("other fields (URL, Compression, FileHash, Deriver) are not signed", () => {
    const changed = { ...hello, url: "nar/elsewhere.nar", compression: "zstd", fileSize: 1 };
    delete changed.deriver;
    assert.deepEqual(verifyNarInfo(changed, [CACHE_NIXOS_ORG]), hello.sigs);
  });

  it("picks the key by name; unknown names and malformed signatures are just not valid", () => {
    const fp = fingerprint(hello);
    const sig = hello.sigs[0]!;
    const b64 = sig.slice(sig.indexOf(":") + 1);
    assert.ok(verifySignature([CACHE_NIXOS_ORG], fp, sig));
    const renamed = { name: "other-1", key: CACHE_NIXOS_ORG.key };
    assert.ok(!verifySignature([renamed], fp, sig));
    assert.ok(verifySignature([renamed, CACHE_NIXOS_ORG], fp, sig));
    assert.ok(
      !verifySignature([{ name: CACHE_NIXOS_ORG.name, key: generateSecretKey("x").publicKey }], fp, sig),
    );
    assert.ok(!verifySignature([], fp, sig));
    for (const bad of [
      "",
      b64,
      `:${b64}`,
      `cache.nixos.org-1:`,
      `cache.nixos.org-1:${b64.slice(4)}`,
      `cache.nixos.org-1:${b64}AAAA`,
      `cache.nixos.org-1:${b64.replace(/^./, (c) => (c === "A" ? "B" : "A"))}`,
      `cache.nixos.org-1:${"!".repeat(88)}`,
    ]) {
      assert.equal(verifySignature([CACHE_NIXOS_ORG], fp, bad), false, bad);
    }
  });
});

describe("keys", () => {
  it("generates keys that round-trip, sign and verify", () => {
    const sk = generateSecretKey("my-cache-1");
    assert.equal(sk.seed.length, 32);
    const text = formatSecretKey(sk);
    assert.match(text, /^my-cache-1:[A-Za-z0-9+/]{86}==$/);
    assert.deepEqual(parseSecretKey(text), sk);
    const pk = publicKeyOf(sk);
    assert.deepEqual(parsePublicKey(formatPublicKey(pk)), pk);
    const fp = fingerprint(hello);
    const sig = signFingerprint(sk, fp);
    assert.ok(sig.startsWith("my-cache-1:"));
    assert.ok(verifySignature([pk], fp, sig));
    assert.ok(!verifySignature([pk], `${fp}x`, sig));
    assert.notDeepEqual(generateSecretKey("my-cache-1").seed, sk.seed);
  });

  it("signs exactly as an independent ed25519 implementation (OpenSSL through node:crypto) does", () => {
    const sk = generateSecretKey("k");
    const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), sk.seed]);
    const openssl = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
    const spki = createPublicKey(openssl).export({ format: "der", type: "spki" });
    assert.deepEqual(new Uint8Array(spki.subarray(12)), sk.publicKey);
    const fp = fingerprint(hello);
    const ours = Buffer.from(signFingerprint(sk, fp).slice(2), "base64");
    assert.deepEqual(ours, cryptoSign(null, Buffer.from(fp), openssl));
  });

  it("signs as OpenSSL does for many keys and messages, first and repeated use of a key alike", () => {
    for (let i = 0; i < 40; i++) {
      const sk = generateSecretKey(`k${i}`);
      const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), sk.seed]);
      const openssl = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
      for (const refs of [0, 1, i]) {
        const fp = fingerprint({
          ...hello,
          narSize: 1 + i * 977,
          references: hello.references.slice(0, refs),
        });
        const ours = Buffer.from(signFingerprint(sk, fp).slice(`k${i}:`.length), "base64");
        assert.deepEqual(ours, cryptoSign(null, Buffer.from(fp), openssl), `key ${i}, ${refs} references`);
      }
    }
  });

  it("trims whitespace around keys (files often end in a newline)", () => {
    const sk = generateSecretKey("k");
    assert.deepEqual(parseSecretKey(`  ${formatSecretKey(sk)}\n`), sk);
    assert.deepEqual(parsePublicKey(`${formatPublicKey(publicKeyOf(sk))}\n`), publicKeyOf(sk));
  });

  it("rejects malformed keys", () => {
    const sk = generateSecretKey("k");
    const skB64 = formatSecretKey(sk).slice(2);
    const pkB64 = formatPublicKey(publicKeyOf(sk)).slice(2);
    const other = generateSecretKey("k");
    const mismatched = Buffer.concat([sk.seed, other.publicKey]).toString("base64");
    const secretCases: [string, RegExp][] = [
      [skB64, /NAME:BASE64/],
      [`:${skB64}`, /name is empty/],
      [`a:b:${skB64}`, /not base64/],
      [`a b:${skB64}`, /whitespace/],
      [`k:${pkB64}`, /expected 64 bytes/],
      [`k:${skB64.slice(0, -4)}`, /expected 64 bytes/],
      [`k:${skB64}!`, /not base64/],
      [`k:${mismatched}`, /does not match its seed/],
      ["", /NAME:BASE64/],
    ];
    for (const [text, re] of secretCases) assert.throws(() => parseSecretKey(text), re, text);
    const publicCases: [string, RegExp][] = [
      [pkB64, /NAME:BASE64/],
      [`:${pkB64}`, /name is empty/],
      [`k:${skB64}`, /expected 32 bytes/],
      [`k:${pkB64.slice(0, -4)}`, /expected 32 bytes/],
      ["k:", /expected 32 bytes/],
    ];
    for (const [text, re] of publicCases) assert.throws(() => parsePublicKey(text), re, text);
    assert.throws(() => generateSecretKey(""), /empty/);
    assert.throws(() => generateSecretKey("a:b"), /contains ":"/);
    assert.throws(() => formatSecretKey({ ...sk, name: "a:b" }), /contains ":"/);
  });
});

describe("against the real Nix 2.8 (nix-store --generate-binary-cache-key, nix copy with secret-key)", () => {
  let cache: GoldenCache | undefined;
  before(() => {
    const nix = realNix();
    if (nix) cache = goldenCache(nix, { file: "contents\n", dir: { inner: "x" } });
  });

  it("imports Nix's key files and writes them back byte for byte", (t) => {
    if (!cache) return t.skip("no real Nix");
    const sk = parseSecretKey(cache.secretKeyText);
    const pk = parsePublicKey(cache.publicKeyText);
    assert.equal(sk.name, "nixstash-test-1");
    assert.deepEqual(publicKeyOf(sk), pk);
    assert.equal(formatSecretKey(sk), cache.secretKeyText);
    assert.equal(formatPublicKey(pk), cache.publicKeyText);
  });

  it("produces Nix's Sig lines byte for byte, and verifies them", (t) => {
    if (!cache) return t.skip("no real Nix");
    const sk = parseSecretKey(cache.secretKeyText);
    const pk = parsePublicKey(cache.publicKeyText);
    for (const path of [cache.tree, cache.user, cache.dep]) {
      const info = parseNarInfo(path.narinfo);
      assert.equal(info.sigs.length, 1);
      assert.equal(signFingerprint(sk, fingerprint(info)), info.sigs[0]);
      assert.deepEqual(verifyNarInfo(info, [pk]), info.sigs);
      assert.deepEqual(verifyNarInfo(info, [CACHE_NIXOS_ORG]), []);
    }
  });

  it("Nix accepts a key we generate: `nix store sign` with it makes the Sig we make", (t) => {
    const nix = realNix();
    if (!nix || !cache) return t.skip("no real Nix");
    const ours = generateSecretKey("ours-1");
    const dir = nix.tempDir("ours");
    writeFileSync(join(dir, "sk"), formatSecretKey(ours));
    const store = join(dir, "store");
    const src = join(dir, "src");
    writeFileSync(src, "signed by a key made in TypeScript\n");
    const path = nix.run("nix", ["--store", store, "store", "add-path", src]).toString().trim();
    nix.run("nix", ["--store", store, "store", "sign", "--key-file", join(dir, "sk"), path]);
    const [json] = JSON.parse(
      nix.run("nix", ["--store", store, "path-info", "--json", "--sigs", path]).toString(),
    );
    const info = {
      storePath: path,
      narHash: json.narHash,
      narSize: json.narSize,
      references: json.references,
    };
    assert.deepEqual(json.signatures, [signFingerprint(ours, fingerprint(info))]);
    assert.ok(verifySignature([publicKeyOf(ours)], fingerprint(info), json.signatures[0]));
  });
});
