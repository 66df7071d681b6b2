import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import { formatNarInfo, type NarInfo, parseNarInfo } from "./narinfo.ts";
import { Exec, type GoldenCache, goldenCache, Link, realNix } from "./test-support/real-nix.ts";

const TESTDATA = join(import.meta.dirname, "testdata", "cache.nixos.org");
const golden = readdirSync(TESTDATA)
  .filter((f) => f.endsWith(".narinfo"))
  .map((f) => ({ file: f, text: readFileSync(join(TESTDATA, f), "utf8") }));

const HELLO = golden.find((g) => g.file.startsWith("gdh8165b"))!.text;

/** Replace (or with `undefined`, drop) the line of `key` in a narinfo text. */
function edit(text: string, key: string, value: string | undefined): string {
  const re = new RegExp(`^${key}: .*\\n`, "m");
  assert.match(text, re);
  return text.replace(re, value === undefined ? "" : `${key}: ${value}\n`);
}

describe("parseNarInfo / formatNarInfo", () => {
  it("has the four real cache.nixos.org narinfos", () => {
    assert.equal(golden.length, 4);
  });

  for (const { file, text } of golden) {
    it(`round-trips ${file} byte for byte (its keys are in Nix's order)`, () => {
      const info = parseNarInfo(text);
      assert.equal(info.storePath.slice(11, 43), file.slice(0, 32));
      assert.equal(formatNarInfo(info), text);
    });
  }

  it("parses every field of a real narinfo", () => {
    assert.deepEqual(parseNarInfo(HELLO), {
      storePath: "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
      url: "nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar.xz",
      compression: "xz",
      fileHash: "sha256:0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb",
      fileSize: 40360,
      narHash: "sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8",
      narSize: 197528,
      references: [
        "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27",
        "gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
      ],
      deriver: "5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv",
      sigs: [
        "cache.nixos.org-1:K0thQEG60rzAK8ZS9f1whb7eRlIshlMDJAm7xvX1oF284H+PTqlicv/wGW6BIj+wWWONHvUZ2MYc+KDArekjDA==",
      ],
    } satisfies NarInfo);
    const ripgrep = parseNarInfo(golden.find((g) => g.file.startsWith("axp6"))!.text);
    assert.equal(ripgrep.deriver, undefined);
    assert.equal(ripgrep.compression, "zstd");
  });

  describe("against narinfos the real Nix 2.8 writes (nix copy --to file://)", () => {
    let cache: GoldenCache | undefined;
    before(() => {
      const nix = realNix();
      if (nix) cache = goldenCache(nix, { a: "hello world\n", x: new Exec("#!/bin/sh\n"), l: new Link("a") });
    });

    it("round-trips them byte for byte: empty References with its space, CA, several paths", (t) => {
      if (!cache) return t.skip("no real Nix");
      for (const path of [cache.tree, cache.user, cache.dep]) {
        const info = parseNarInfo(path.narinfo);
        assert.equal(formatNarInfo(info), path.narinfo);
        assert.equal(info.storePath, path.storePath);
        assert.equal(info.narSize, path.nar.length);
      }
      assert.match(cache.tree.narinfo, /^References: \n/m);
      assert.deepEqual(parseNarInfo(cache.tree.narinfo).references, []);
      assert.match(parseNarInfo(cache.tree.narinfo).ca ?? "", /^fixed:r:sha256:[0-9a-z]{52}$/);
      assert.match(parseNarInfo(cache.user.narinfo).ca ?? "", /^text:sha256:[0-9a-z]{52}$/);
      assert.deepEqual(parseNarInfo(cache.user.narinfo).references, [cache.dep.storePath.slice(11)]);
    });
  });

  it("normalises hashes given in base16, base64 or SRI to sha256:nix32", () => {
    const hex = "sha256:4f3e4c8a0ea5ae98c3eac1f88cc1eeec92e9fc11a2bc06b0a2e6c5cd4f91fb1b";
    const info = parseNarInfo(edit(HELLO, "NarHash", hex));
    assert.match(info.narHash, /^sha256:[0-9a-df-np-sv-z]{52}$/);
    const sri = `sha256-${Buffer.from(hex.slice(7), "hex").toString("base64")}`;
    assert.equal(parseNarInfo(edit(HELLO, "NarHash", sri)).narHash, info.narHash);
    assert.equal(parseNarInfo(edit(HELLO, "FileHash", sri)).fileHash, info.narHash);
  });

  it("follows Nix's defaults: no Compression = bzip2, unknown-deriver = none, unknown keys ignored, any order", () => {
    assert.equal(parseNarInfo(edit(HELLO, "Compression", undefined)).compression, "bzip2");
    assert.equal(parseNarInfo(edit(HELLO, "Compression", "")).compression, "bzip2");
    assert.equal(parseNarInfo(edit(HELLO, "Deriver", "unknown-deriver")).deriver, undefined);
    const extra = `${HELLO}Future: something\nEmpty: \n`;
    assert.deepEqual(parseNarInfo(extra), parseNarInfo(HELLO));
    const reversed = `${HELLO.trimEnd().split("\n").reverse().join("\n")}\n`;
    assert.deepEqual(parseNarInfo(reversed), parseNarInfo(HELLO));
    assert.equal(formatNarInfo(parseNarInfo(reversed)), HELLO);
    assert.equal(parseNarInfo(`${HELLO}System: x86_64-linux\n`).system, "x86_64-linux");
  });

  it("sorts and de-duplicates References and Sig lines as Nix's sets do", () => {
    const refs = "gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10  7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27 ";
    const info = parseNarInfo(edit(HELLO, "References", refs));
    assert.deepEqual(info.references, parseNarInfo(HELLO).references);
    const sigLine = /^Sig: .*\n/m.exec(HELLO)![0];
    const twoSigs = HELLO.replace(sigLine, `Sig: z-key:abc\n${sigLine}${sigLine}`);
    const parsed = parseNarInfo(twoSigs);
    assert.equal(parsed.sigs.length, 2);
    assert.deepEqual(parsed.sigs, [...parsed.sigs].sort());
    assert.equal(formatNarInfo(parsed), HELLO.replace(sigLine, `${sigLine}Sig: z-key:abc\n`));
  });

  it("rejects structural damage", () => {
    const cases: [string, string, RegExp][] = [
      ["empty", "", /empty/],
      ["no final newline", HELLO.slice(0, -1), /newline/],
      ["CRLF", HELLO.replaceAll("\n", "\r\n"), /carriage return/],
      ["line without colon", `${HELLO}garbage\n`, /"Key: value"/],
      ["blank line", `${HELLO}\n`, /"Key: value"/],
      [
        "no space after colon",
        edit(HELLO, "References", undefined).replace("NarSize: ", "NarSize:"),
        /space/,
      ],
      [
        "References: without its space",
        `${edit(HELLO, "References", undefined)}References:\n`,
        /References: /,
      ],
      ["duplicate key", `${HELLO}NarSize: 197528\n`, /NarSize appears more than once/],
    ];
    for (const [what, text, re] of cases) assert.throws(() => parseNarInfo(text), re, what);
  });

  it("rejects missing required fields", () => {
    for (const key of ["StorePath", "URL", "NarHash", "NarSize"]) {
      assert.throws(
        () => parseNarInfo(edit(HELLO, key, undefined)),
        new RegExp(`${key} line is missing`),
        key,
      );
    }
    assert.throws(() => parseNarInfo(edit(HELLO, "URL", "")), /URL is empty/);
  });

  it("rejects bad values", () => {
    const cases: [string, string | undefined, RegExp][] = [
      ["NarSize", "0", /NarSize is 0/],
      ["NarSize", "-1", /plain decimal/],
      ["NarSize", "+5", /plain decimal/],
      ["NarSize", "0123", /plain decimal/],
      ["NarSize", " 12", /plain decimal/],
      ["NarSize", "12 ", /plain decimal/],
      ["NarSize", "1e5", /plain decimal/],
      ["NarSize", "0x10", /plain decimal/],
      ["NarSize", "", /plain decimal/],
      ["NarSize", "99999999999999999999", /too large/],
      ["FileSize", "abc", /plain decimal/],
      ["NarHash", "sha256:xyz", /NarHash/],
      ["NarHash", "md5:d41d8cd98f00b204e9800998ecf8427e", /unsupported hash algorithm md5/],
      ["FileHash", "1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8", /FileHash/],
      ["StorePath", "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9", /StorePath/],
      ["StorePath", "gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10", /not in \/nix\/store/],
      ["StorePath", "/gnu/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10", /not in \/nix\/store/],
      ["References", "/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27", /References/],
      ["References", "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc", /References/],
      ["Deriver", "", /Deriver/],
      ["Deriver", "/nix/store/5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv", /Deriver/],
      ["Sig", "", /Sig is empty/],
      ["CA", "sha256:abc", /CA/],
    ];
    for (const [key, value, re] of cases) {
      assert.throws(
        () => parseNarInfo(`${edit(HELLO, key, undefined)}${key}: ${value}\n`),
        re,
        `${key}: ${value}`,
      );
    }
  });

  it("reads StorePath against another store directory", () => {
    const other = HELLO.replace("StorePath: /nix/store/", "StorePath: /opt/nix/store/");
    assert.equal(parseNarInfo(other, "/opt/nix/store").storePath.startsWith("/opt/nix/store/"), true);
    assert.throws(() => parseNarInfo(other), NixFormatError);
  });

  it("formatNarInfo writes `References: ` with its space and refuses line breaks in values", () => {
    const info = parseNarInfo(HELLO);
    info.references = [];
    delete info.deriver;
    info.fileHash = undefined;
    info.fileSize = undefined;
    assert.equal(
      formatNarInfo(info),
      [
        "StorePath: /nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
        "URL: nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar.xz",
        "Compression: xz",
        "NarHash: sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8",
        "NarSize: 197528",
        "References: ",
        `Sig: ${info.sigs[0]}`,
        "",
      ].join("\n"),
    );
    info.system = "x86_64-linux\nSig: forged:AAAA";
    assert.throws(() => formatNarInfo(info), /System value contains a line break/);
  });

  it("error messages are one line and say where", () => {
    try {
      parseNarInfo(edit(HELLO, "NarSize", "ten"));
      assert.fail("accepted");
    } catch (e) {
      assert.ok(e instanceof NixFormatError);
      assert.equal(e.message, 'invalid narinfo, line 7: NarSize "ten" is not a plain decimal number');
    }
  });
});
