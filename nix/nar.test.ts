import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { NixFormatError } from "./errors.ts";
import { formatHash } from "./hash.ts";
import {
  formatListing,
  type NarListingDirectory,
  type NarListingNode,
  NarReader,
  type NarSummary,
  readNar,
} from "./nar.ts";
import { parseNarInfo } from "./narinfo.ts";
import {
  Exec,
  type GoldenCache,
  goldenCache,
  Link,
  realNix,
  type TreeSpec,
  writeTree,
} from "./test-support/real-nix.ts";

// ---- a tiny NAR writer, for crafting good and (mostly) bad NARs by hand ----

type Token = string | Uint8Array | RawBytes;
/** bytes written as they are, not as a str */
class RawBytes {
  constructor(readonly bytes: Uint8Array) {}
}
const raw = (bytes: Uint8Array | number[]): RawBytes => new RawBytes(Uint8Array.from(bytes));

function u64(n: number | bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function str(s: string | Uint8Array, padByte = 0): Uint8Array {
  const data = typeof s === "string" ? Buffer.from(s, "utf8") : s;
  const pad = (8 - (data.length % 8)) % 8;
  return Buffer.concat([u64(data.length), data, Buffer.alloc(pad, padByte)]);
}

function nar(...tokens: Token[]): Uint8Array {
  return new Uint8Array(Buffer.concat(tokens.map((t) => (t instanceof RawBytes ? t.bytes : str(t)))));
}

const MAGIC = "nix-archive-1";
const file = (contents: string | Uint8Array, executable = false): Token[] => [
  "(",
  "type",
  "regular",
  ...(executable ? ["executable", ""] : []),
  "contents",
  contents,
  ")",
];
const symlink = (target: string): Token[] => ["(", "type", "symlink", "target", target, ")"];
const dir = (...entries: [string | Uint8Array, Token[]][]): Token[] => [
  "(",
  "type",
  "directory",
  ...entries.flatMap(([name, node]) => ["entry", "(", "name", name, "node", ...node, ")"]),
  ")",
];

function sha256(bytes: Uint8Array): string {
  return formatHash(createHash("sha256").update(bytes).digest());
}

function feed(bytes: Uint8Array, sizes: () => number): NarSummary {
  const r = new NarReader();
  for (let i = 0; i < bytes.length; ) {
    const n = Math.max(1, sizes());
    r.update(bytes.subarray(i, i + n));
    i += n;
  }
  return r.finish();
}

function rejects(bytes: Uint8Array, re: RegExp, message?: string): void {
  assert.throws(
    () => readNar(bytes),
    (e: unknown) => e instanceof NixFormatError && re.test(e.message),
    message,
  );
  // and the same when fed one byte at a time
  assert.throws(
    () => feed(bytes, () => 1),
    (e: unknown) => e instanceof NixFormatError && re.test(e.message),
    message,
  );
}

/** every regular file in a listing with its path */
function regulars(node: NarListingNode, path = ""): [string, { size: number; narOffset: number }][] {
  if (node.type === "regular") return [[path, node]];
  if (node.type === "symlink") return [];
  return Object.entries(node.entries).flatMap(([name, child]) => regulars(child, `${path}/${name}`));
}

// ---- the tests ----

describe("NarReader: good NARs", () => {
  it("a 12-byte file makes a 128-byte NAR with its contents at narOffset 96", () => {
    const bytes = nar(MAGIC, ...file("hello world\n"));
    assert.equal(bytes.length, 128);
    const s = readNar(bytes);
    assert.equal(s.narSize, 128);
    assert.equal(s.narHash, sha256(bytes));
    assert.deepEqual(s.listing, { type: "regular", size: 12, narOffset: 96 });
    assert.equal(Buffer.from(bytes.subarray(96, 108)).toString(), "hello world\n");
    assert.equal(
      formatListing(s.listing),
      '{"version":1,"root":{"type":"regular","size":12,"narOffset":96}}',
    );
  });

  it("reads executables, empty files, symlinks, empty and nested directories", () => {
    const bytes = nar(
      MAGIC,
      ...dir(
        ["a", file("abc")],
        ["b", file("", true)],
        ["c", symlink("../target/of/link")],
        ["d", dir()],
        ["e", dir(["f", dir(["g", file("deep", true)])])],
      ),
    );
    const s = readNar(bytes);
    assert.deepEqual(s.listing, {
      type: "directory",
      entries: {
        a: { type: "regular", size: 3, narOffset: 232 },
        b: { type: "regular", size: 0, executable: true, narOffset: 456 },
        c: { type: "symlink", target: "../target/of/link" },
        d: { type: "directory", entries: {} },
        e: {
          type: "directory",
          entries: {
            f: {
              type: "directory",
              entries: { g: { type: "regular", size: 4, executable: true, narOffset: 1320 } },
            },
          },
        },
      },
    });
    assert.equal(Buffer.from(bytes.subarray(232, 235)).toString(), "abc");
    assert.equal(Buffer.from(bytes.subarray(1320, 1324)).toString(), "deep");
    assert.equal(s.narSize, bytes.length);
    assert.equal(s.narHash, sha256(bytes));
  });

  it("accepts a symlink or an empty directory as the root, and file names of any byte but / and NUL", () => {
    assert.deepEqual(readNar(nar(MAGIC, ...symlink("/nix/store/x"))).listing, {
      type: "symlink",
      target: "/nix/store/x",
    });
    assert.deepEqual(readNar(nar(MAGIC, ...dir())).listing, { type: "directory", entries: {} });
    const names = ["...", ".a", "A", "a", "a\nb", "a b", "z", "é", "\uE000", "😀"]; // sorted by UTF-8 bytes
    const listing = readNar(nar(MAGIC, ...dir(...names.map((n): [string, Token[]] => [n, file(n)])))).listing;
    assert.deepEqual(Object.keys((listing as NarListingDirectory).entries).sort(), [...names].sort());
  });

  it("keeps a directory entry named __proto__ as an entry", () => {
    const s = readNar(nar(MAGIC, ...dir(["__proto__", file("x")], ["constructor", file("y")])));
    const entries = (s.listing as NarListingDirectory).entries;
    assert.deepEqual(Object.keys(entries), ["__proto__", "constructor"]);
    assert.equal(Object.getPrototypeOf(entries), Object.prototype);
    assert.match(formatListing(s.listing), /"__proto__":\{"type":"regular","size":1,/);
  });

  it("gives the same result whatever the chunking: 1 byte, 7 bytes, random sizes", () => {
    const bytes = nar(
      MAGIC,
      ...dir(["big", file(randomBytes(100_003))], ["x", file("", true)], ["y", symlink("a".repeat(4095))]),
    );
    const whole = readNar(bytes);
    assert.deepEqual(
      feed(bytes, () => 1),
      whole,
    );
    assert.deepEqual(
      feed(bytes, () => 7),
      whole,
    );
    for (let k = 0; k < 20; k++) {
      const max = [3, 17, 100, 5000, 70_000][k % 5]!;
      assert.deepEqual(
        feed(bytes, () => Math.floor(Math.random() * max)),
        whole,
      );
    }
  });

  it("takes empty chunks and any Uint8Array view", () => {
    const bytes = nar(MAGIC, ...file("x"));
    const r = new NarReader();
    r.update(new Uint8Array(0));
    const padded = new Uint8Array(bytes.length + 10);
    padded.set(bytes, 5);
    r.update(padded.subarray(5, 5 + bytes.length));
    r.update(new Uint8Array(0));
    assert.equal(r.finish().narHash, sha256(bytes));
  });

  it("processes a 64 MiB single-file NAR fed in chunks without holding it", (t) => {
    const size = 64 * 1024 * 1024;
    const head = nar(MAGIC, "(", "type", "regular", "contents", raw(u64(size)));
    const tail = nar(")");
    const chunk = new Uint8Array(randomBytes(1024 * 1024));
    const reference = createHash("sha256").update(head);
    const r = new NarReader();
    const before = process.memoryUsage().arrayBuffers;
    const start = process.hrtime.bigint();
    r.update(head);
    for (let done = 0; done < size; done += chunk.length) r.update(chunk);
    r.update(tail);
    const s = r.finish();
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const grown = process.memoryUsage().arrayBuffers - before;
    t.diagnostic(
      `64 MiB in ${seconds.toFixed(3)} s (${(64 / seconds).toFixed(0)} MiB/s), arrayBuffers +${grown}`,
    );
    for (let done = 0; done < size; done += chunk.length) reference.update(chunk);
    reference.update(tail);
    assert.equal(s.narSize, head.length + size + tail.length);
    assert.equal(s.narHash, formatHash(reference.digest()));
    assert.deepEqual(s.listing, { type: "regular", size, narOffset: head.length });
    assert.ok(grown < 16 * 1024 * 1024, `reader kept ${grown} bytes`);
  });
});

describe("NarReader: rejections", () => {
  it("bad magic", () => {
    rejects(nar("nix-archive-2", ...file("x")), /bad magic/);
    rejects(nar("nix-archive", ...file("x")), /at byte 0: bad magic/);
    rejects(nar("(", ...file("x")), /bad magic/);
    rejects(new Uint8Array(Buffer.from("\x1f\x8b\x08\x00\x00\x00\x00\x00 gzip, not a NAR")), /bad magic/);
    rejects(new Uint8Array(Buffer.from("hello world, this is no NAR at all")), /bad magic/);
  });

  it("unknown or misplaced tags", () => {
    rejects(
      nar(MAGIC, "[", "type", "regular", "contents", "x", ")"),
      /at byte 24: unknown or misplaced tag "\["/,
    );
    rejects(nar(MAGIC, "(", "kind", "regular", "contents", "x", ")"), /"kind" where "type" was expected/);
    rejects(nar(MAGIC, "(", "type", "fifo", ")"), /unknown file type "fifo"/);
    rejects(
      nar(MAGIC, "(", "type", "regular", "target", "x", ")"),
      /"target" where "executable" or "contents"/,
    );
    rejects(nar(MAGIC, "(", "type", "regular", ")"), /"\)" where "executable" or "contents"/); // no contents
    rejects(
      nar(MAGIC, "(", "type", "regular", "executable", "", "executable", "", "contents", "x", ")"),
      /tag/,
    );
    rejects(
      nar(MAGIC, "(", "type", "regular", "contents", "x", "executable", "", ")"),
      /"executable" where "\)"/,
    );
    rejects(nar(MAGIC, "(", "type", "regular", "contents", "x", "contents", "y", ")"), /tag/);
    rejects(nar(MAGIC, "(", "type", "regular", "type", "regular", "contents", "x", ")"), /tag/);
    rejects(nar(MAGIC, "(", "type", "symlink", "contents", "x", ")"), /"contents" where "target"/);
    rejects(
      nar(MAGIC, "(", "type", "directory", "entry", "(", "node", ...file("x"), ")", ")"),
      /"node" where "name"/,
    );
    rejects(
      nar(MAGIC, "(", "type", "directory", "entry", "(", "name", "a", ...file("x"), ")", ")"),
      /"\(" where "node"/,
    );
    rejects(
      nar(MAGIC, "(", "type", "directory", "entry", "(", "name", "a", "node", ...file("x"), ")"),
      /truncated/,
    );
    rejects(nar(MAGIC, "(", "type", "regular", "contents", "x", ")", ")"), /trailing data/);
    rejects(nar(MAGIC, "(", "type", "directory", "name", "a", ")"), /"name" where "entry" or "\)"/);
    rejects(
      nar(MAGIC, "(", "type", "regular", "executable", "1", "contents", "x", ")"),
      /"executable" is followed by a 1-byte string/,
    );
    rejects(
      nar(MAGIC, "(", "type", "regular", "a-string-longer-than-any-tag", ")"),
      /found a 28-byte string/,
    );
  });

  it("non-zero padding, anywhere", () => {
    const good = nar(MAGIC, ...dir(["abc", file("hello")], ["l", symlink("t")]));
    const s = readNar(good);
    // every padding byte of this NAR (found by flipping each byte and seeing which flips the reader calls padding)
    let paddingBytes = 0;
    for (let i = 0; i < good.length; i++) {
      const bad = good.slice();
      bad[i] = bad[i]! ^ 0x40;
      try {
        readNar(bad); // a flipped byte of a name, target or contents is still a valid NAR
      } catch (e) {
        if (!(e instanceof NixFormatError)) throw e;
        // (a flipped length byte may also end in a padding error, but further on)
        if (e.message.includes(`at byte ${i}: non-zero padding`)) paddingBytes++;
      }
    }
    assert.ok(s.narSize > 0);
    // magic 3, "(" 7, "type" 4, "directory" 7, "entry" 3, "(" 7, "name" 4, "abc" 5, "node" 4, "(" 7, "type" 4,
    // "regular" 1, "contents" 0, "hello" 3, ")" 7, ")" 7, "entry" 3, "(" 7, "name" 4, "l" 7, "node" 4, "(" 7,
    // "type" 4, "symlink" 1, "target" 2, "t" 7, ")" 7, ")" 7, ")" 7
    assert.equal(
      paddingBytes,
      3 +
        7 +
        4 +
        7 +
        3 +
        7 +
        4 +
        5 +
        4 +
        7 +
        4 +
        1 +
        0 +
        3 +
        7 +
        7 +
        3 +
        7 +
        4 +
        7 +
        4 +
        7 +
        4 +
        1 +
        2 +
        7 +
        7 +
        7 +
        7,
    );
    rejects(
      nar(MAGIC, "(", "type", "regular", "contents", raw(str("x", 1)), ")"),
      /at byte 97: non-zero padding/,
    );
  });

  it("bad names", () => {
    const entry = (name: string | Uint8Array): Uint8Array => nar(MAGIC, ...dir([name, file("x")]));
    rejects(entry(""), /empty entry name/);
    rejects(entry("."), /entry name "\."/);
    rejects(entry(".."), /entry name "\.\."/);
    rejects(entry("a/b"), /contains "\/"/);
    rejects(entry("/"), /contains "\/"/);
    rejects(entry("a\0b"), /NUL/);
    rejects(entry("x".repeat(256)), /entry name of 256 bytes/);
    assert.doesNotThrow(() => readNar(entry("x".repeat(255))));
    rejects(nar(MAGIC, ...symlink("t".repeat(4096))), /symlink target of 4096 bytes/);
  });

  it("directory entries not strictly increasing by bytes", () => {
    const two = (a: string, b: string): Uint8Array => nar(MAGIC, ...dir([a, file("1")], [b, file("2")]));
    rejects(two("b", "a"), /out of order: "a" after "b"/);
    rejects(two("a", "a"), /out of order/);
    rejects(two("ab", "a"), /out of order/);
    rejects(two("a", "B"), /out of order/); // 'B' (0x42) < 'a' (0x61)
    rejects(two("😀", "\uE000"), /out of order/); // F0 9F 98 80 > EE 80 80, though UTF-16 says otherwise
    assert.doesNotThrow(() => readNar(two("B", "a")));
    assert.doesNotThrow(() => readNar(two("a", "ab")));
    assert.doesNotThrow(() => readNar(two("\uE000", "😀")));
    // order is per directory: a nested directory starts afresh
    assert.doesNotThrow(() =>
      readNar(nar(MAGIC, ...dir(["m", dir(["z", file("")])], ["n", dir(["a", file("")])]))),
    );
  });

  it("trailing data after the root node", () => {
    const good = nar(MAGIC, ...file("x"));
    rejects(new Uint8Array([...good, 0]), new RegExp(`at byte ${good.length}: trailing data`));
    rejects(new Uint8Array([...good, ...u64(0)]), /trailing data/);
    rejects(nar(MAGIC, ...file("x"), ...file("y")), /trailing data/);
  });

  it("lengths too large to be real", () => {
    rejects(
      nar(MAGIC, "(", "type", "regular", "contents", raw(u64(2n ** 60n))),
      /string length 1152921504606846976 is too large/,
    );
    rejects(nar(MAGIC, raw(u64(2n ** 40n))), /at byte 24: expected "\(", found a 1099511627776-byte string/);
  });

  it("truncation at every position", () => {
    const good = nar(MAGIC, ...dir(["a", file("hello", true)], ["b", symlink("a")], ["c", dir()]));
    readNar(good);
    for (let cut = 0; cut < good.length; cut++) {
      const r = new NarReader();
      r.update(good.subarray(0, cut)); // a prefix is never an error by itself
      assert.throws(
        () => r.finish(),
        new RegExp(`^NixFormatError: truncated NAR: input ends at byte ${cut} `),
        `cut ${cut}`,
      );
    }
  });

  it("a reader that failed keeps failing; finish() twice is a bug", () => {
    const r = new NarReader();
    assert.throws(() => r.update(nar("nope")), /bad magic/);
    assert.throws(() => r.update(nar(MAGIC)), /bad magic/);
    assert.throws(() => r.finish(), /bad magic/);
    const ok = new NarReader();
    ok.update(nar(MAGIC, ...file("")));
    ok.finish();
    assert.throws(() => ok.finish(), /already called/);
  });
});

describe("formatListing", () => {
  it("writes keys in Nix 2.8's order and entries sorted by UTF-8 bytes (not JS key order)", () => {
    const listing: NarListingNode = {
      type: "directory",
      entries: {
        "9": { type: "regular", size: 1, narOffset: 10 },
        "10": { type: "symlink", target: 'say "hi"' },
        "😀": { type: "directory", entries: {} },
        "\uE000": { type: "regular", size: 0, executable: true, narOffset: 20 },
      },
    };
    assert.equal(
      formatListing(listing),
      '{"version":1,"root":{"type":"directory","entries":{' +
        '"10":{"type":"symlink","target":"say \\"hi\\""},' +
        '"9":{"type":"regular","size":1,"narOffset":10},' +
        '"\uE000":{"type":"regular","size":0,"executable":true,"narOffset":20},' +
        '"😀":{"type":"directory","entries":{}}}}}',
    );
    JSON.parse(formatListing(listing));
  });

  it("handles any depth without recursion", () => {
    let node: NarListingNode = { type: "regular", size: 0, narOffset: 1 };
    for (let k = 0; k < 100_000; k++) node = { type: "directory", entries: { d: node } };
    const text = formatListing(node);
    assert.ok(text.startsWith('{"version":1,"root":{"type":"directory","entries":{"d":'));
    assert.ok(text.endsWith("}}".repeat(100_001)));
  });
});

describe("against the real Nix 2.8 (nix-store --dump, nix-hash, nix copy with write-nar-listing)", () => {
  const deep: TreeSpec = { f: "bottom\n" };
  let deepTree: TreeSpec = deep;
  for (let k = 0; k < 40; k++) deepTree = { [`level${k}`]: deepTree };
  const TREE: TreeSpec = {
    a: "hello world\n",
    exe: new Exec("#!/bin/sh\necho hi\n"),
    "empty-exe": new Exec(""),
    empty: "",
    emptydir: {},
    link: new Link("a"),
    "abs-link": new Link("/nix/store/00000000000000000000000000000000-nowhere/bin/sh"),
    "dir-link": new Link("sub/"),
    pad7: "1234567",
    pad8: "12345678",
    pad9: "123456789",
    big: new Uint8Array(Buffer.alloc(300_001, "nar")),
    "9": "nine",
    "10": "ten",
    ["__proto__"]: "proto",
    B: "upper",
    b: "lower",
    ü: "u umlaut",
    "\uE000": "private use",
    "😀": "emoji",
    'quote"name': "q",
    "back\\slash": "b",
    "tab\tname": "t",
    "nl\nname": "n",
    ".hidden": "h",
    sub: { deeper: { deepest: { f: "deep\n", x: new Exec("") } } },
    deep: deepTree,
  };

  let nixRun: ReturnType<typeof realNix>;
  let treeDir = "";
  let dumped: Buffer = Buffer.alloc(0);
  let cache: GoldenCache | undefined;
  before(() => {
    nixRun = realNix();
    if (!nixRun) return;
    treeDir = join(nixRun.tempDir("tree"), "root");
    writeTree(treeDir, TREE);
    dumped = nixRun.run("nix-store", ["--dump", treeDir]);
    cache = goldenCache(nixRun, TREE);
  });

  it("narHash and narSize equal nix-hash / nix hash path / nix-store --dump", (t) => {
    if (!nixRun) return t.skip("no real Nix");
    const s = readNar(dumped);
    const nixHash = nixRun.run("nix-hash", ["--type", "sha256", "--base32", treeDir]).toString().trim();
    const nixHashPath = nixRun
      .run("nix", ["hash", "path", "--base32", "--type", "sha256", treeDir])
      .toString()
      .trim();
    assert.equal(s.narHash, `sha256:${nixHash}`);
    assert.equal(s.narHash, `sha256:${nixHashPath}`);
    assert.equal(s.narSize, dumped.length);
    assert.deepEqual(
      feed(dumped, () => 1 + Math.floor(Math.random() * 50)),
      s,
    );
  });

  it("every narOffset points at the file's real bytes in the dumped NAR", (t) => {
    if (!nixRun) return t.skip("no real Nix");
    const files = regulars(readNar(dumped).listing);
    assert.ok(files.length >= 20);
    for (const [path, { size, narOffset }] of files) {
      const onDisk = readFileSync(join(treeDir, path));
      assert.equal(size, onDisk.length, path);
      assert.ok(Buffer.from(dumped.subarray(narOffset, narOffset + size)).equals(onDisk), path);
    }
  });

  it("a single file and a single symlink as the root, as nix-store --dump writes them", (t) => {
    if (!nixRun) return t.skip("no real Nix");
    const base = nixRun.tempDir("single");
    writeTree(join(base, "f"), "hello world\n");
    writeTree(join(base, "l"), new Link("somewhere/else"));
    const f = nixRun.run("nix-store", ["--dump", join(base, "f")]);
    assert.equal(f.length, 128);
    assert.deepEqual(Buffer.from(f), Buffer.from(nar(MAGIC, ...file("hello world\n"))));
    assert.deepEqual(readNar(f).listing, { type: "regular", size: 12, narOffset: 96 });
    const l = nixRun.run("nix-store", ["--dump", join(base, "l")]);
    assert.deepEqual(readNar(l).listing, { type: "symlink", target: "somewhere/else" });
    assert.equal(
      readNar(f).narHash,
      `sha256:${nixRun
        .run("nix-hash", ["--type", "sha256", "--base32", join(base, "f")])
        .toString()
        .trim()}`,
    );
  });

  it("the listing equals the .ls Nix writes, byte for byte, and the NAR matches its narinfo", (t) => {
    if (!cache) return t.skip("no real Nix");
    for (const path of [cache.tree, cache.user, cache.dep]) {
      const s = readNar(path.nar);
      assert.equal(formatListing(s.listing), path.listing);
      const info = parseNarInfo(path.narinfo);
      assert.equal(s.narHash, info.narHash);
      assert.equal(s.narSize, info.narSize);
    }
  });
});
