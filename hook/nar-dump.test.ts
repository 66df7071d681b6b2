// The in-process NAR dump writes what `nix-store --dump` writes, byte for byte: directories with entries
// whose byte order differs from string order, executables, empty files and directories, symlinks (dangling
// too), names that are not UTF-8, files bigger than one output chunk; a lone file or symlink as the root.
// The synchronous serialiser under it gives the same bytes through a scratch buffer of any allowed size,
// as views of that scratch, and lets go of an open file when cut off.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { NarReader } from "../nix/index.ts";
import { dumpNar, NAR_SCRATCH_MIN, narPieces } from "./nar-dump.ts";

const hasNix = spawnSync("nix-store", ["--version"]).status === 0;

async function ours(path: string): Promise<Buffer> {
  return Buffer.concat(await Readable.from(dumpNar(path)).toArray());
}

const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "nar-dump-"));
  made.push(dir);
  return dir;
}

const nixDump = (path: string) => execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 28 });

function tree(): string {
  const root = tempDir();
  const dir = join(root, "out");
  mkdirSync(join(dir, "bin"), { recursive: true });
  mkdirSync(join(dir, "empty"));
  mkdirSync(join(dir, "share/doc/deep"), { recursive: true });
  writeFileSync(join(dir, "bin/run"), "#!/bin/sh\necho hi\n");
  chmodSync(join(dir, "bin/run"), 0o555);
  writeFileSync(join(dir, "bin/notexec"), "x");
  chmodSync(join(dir, "bin/notexec"), 0o444);
  writeFileSync(join(dir, "empty-file"), "");
  writeFileSync(join(dir, "eight-bytes"), "12345678");
  for (const name of ["b", "a", "B", "a.b", "a-b", "Z", "é", "ab", "a b"])
    writeFileSync(join(dir, name), name);
  writeFileSync(Buffer.from(join(dir, "latin1-\xe9"), "latin1"), "not UTF-8");
  writeFileSync(join(dir, "share/doc/deep/big"), randomBytes(3 * (1 << 20) + 13));
  symlinkSync("../bin/run", join(dir, "share/link"));
  symlinkSync("/nonexistent/dangling", join(dir, "dangling"));
  return dir;
}

describe("dumpNar", { skip: hasNix ? false : "nix-store is not installed" }, () => {
  it("writes what nix-store --dump writes, for a tree", async () => {
    const dir = tree();
    const nar = await ours(dir);
    assert.ok(nar.equals(nixDump(dir)));
    const reader = new NarReader();
    reader.update(nar);
    assert.equal(reader.finish().narSize, nar.length);
  });

  it("writes what nix-store --dump writes, for a lone file, an executable and a symlink", async () => {
    const dir = tree();
    for (const path of [
      join(dir, "a"),
      join(dir, "bin/run"),
      join(dir, "share/link"),
      join(dir, "empty-file"),
    ])
      assert.ok((await ours(path)).equals(nixDump(path)), path);
  });

  it("fails on what a NAR cannot hold, and on a missing path", async () => {
    const dir = tempDir();
    execFileSync("mkfifo", [join(dir, "fifo")]);
    await assert.rejects(ours(dir), /unsupported type/);
    await assert.rejects(ours(join(dir, "missing")), /ENOENT/);
  });
});

/** The pieces of narPieces, copied (each is valid only until the next one), and how many came. */
function viaPieces(path: string, scratch: Buffer): { nar: Buffer; pieces: number } {
  const copies: Buffer[] = [];
  for (const piece of narPieces(path, scratch)) {
    assert.equal(piece.buffer, scratch.buffer, "a piece is a view of the scratch, not a copy");
    assert.ok(piece.length > 0, "no empty pieces");
    copies.push(Buffer.from(piece));
  }
  return { nar: Buffer.concat(copies), pieces: copies.length };
}

const openFds = () => readdirSync("/proc/self/fd").length;

describe("narPieces", { skip: hasNix ? false : "nix-store is not installed" }, () => {
  it("writes what nix-store --dump writes through the smallest scratch and a big one", () => {
    const dir = tree();
    // Sizes around the scratch size and its multiples, so that contents, padding and headers meet its end.
    for (const size of [NAR_SCRATCH_MIN - 200, NAR_SCRATCH_MIN - 1, NAR_SCRATCH_MIN, NAR_SCRATCH_MIN + 7])
      writeFileSync(join(dir, `around-${size}`), randomBytes(size));
    for (let i = 0; i < 40; i++)
      writeFileSync(join(dir, `n${i}-${"x".repeat(i * 5)}`), randomBytes((i * 977) % 9000));
    const expected = nixDump(dir);
    for (const size of [NAR_SCRATCH_MIN, NAR_SCRATCH_MIN + 5, 1 << 20]) {
      const { nar, pieces } = viaPieces(dir, Buffer.alloc(size));
      assert.ok(nar.equals(expected), `scratch of ${size} bytes`);
      assert.ok(pieces >= Math.ceil(expected.length / size), "pieces are at most the scratch size");
    }
  });

  it("writes what nix-store --dump writes for a lone file bigger than the scratch, and an empty one", () => {
    const dir = tree();
    for (const path of [join(dir, "share/doc/deep/big"), join(dir, "empty-file"), join(dir, "bin/run")])
      assert.ok(viaPieces(path, Buffer.alloc(NAR_SCRATCH_MIN)).nar.equals(nixDump(path)), path);
  });

  it("refuses a scratch too small for a header", () => {
    assert.throws(() => narPieces("/", Buffer.alloc(NAR_SCRATCH_MIN - 1)).next(), RangeError);
  });

  it("fails when a file shrinks while being read", () => {
    const dir = tempDir();
    const file = join(dir, "file");
    writeFileSync(file, randomBytes(5 * NAR_SCRATCH_MIN));
    const pieces = narPieces(file, Buffer.alloc(NAR_SCRATCH_MIN));
    assert.equal(pieces.next().done, false);
    truncateSync(file, NAR_SCRATCH_MIN);
    assert.throws(() => {
      while (!pieces.next().done);
    }, /shrank while being read/);
  });

  it("closes the file it was reading when cut off, or when it fails", () => {
    const dir = tempDir();
    const file = join(dir, "file");
    writeFileSync(file, randomBytes(3 * NAR_SCRATCH_MIN));
    const before = openFds();
    const pieces = narPieces(file, Buffer.alloc(NAR_SCRATCH_MIN));
    pieces.next();
    assert.equal(openFds(), before + 1, "the file is open mid-read");
    pieces.return();
    assert.equal(openFds(), before);

    const failing = narPieces(file, Buffer.alloc(NAR_SCRATCH_MIN));
    failing.next();
    truncateSync(file, 10);
    assert.throws(() => {
      while (!failing.next().done);
    }, /shrank/);
    assert.equal(openFds(), before);
  });

  it("fails on what a NAR cannot hold, and on a missing path, with the messages of dumpNar", () => {
    const dir = tempDir();
    execFileSync("mkfifo", [join(dir, "fifo")]);
    assert.throws(() => viaPieces(dir, Buffer.alloc(1 << 16)), /file '.*fifo' has an unsupported type/);
    assert.throws(() => viaPieces(join(dir, "missing"), Buffer.alloc(1 << 16)), /ENOENT.*lstat/);
  });
});
