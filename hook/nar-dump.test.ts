// The in-process NAR dump writes what `nix-store --dump` writes, byte for byte: directories with entries
// whose byte order differs from string order, executables, empty files and directories, symlinks (dangling
// too), names that are not UTF-8, files bigger than one output chunk; a lone file or symlink as the root.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { NarReader } from "../nix/index.ts";
import { dumpNar } from "./nar-dump.ts";

const hasNix = spawnSync("nix-store", ["--version"]).status === 0;

async function ours(path: string): Promise<Buffer> {
  return Buffer.concat(await Readable.from(dumpNar(path)).toArray());
}

const nixDump = (path: string) => execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 28 });

function tree(): string {
  const root = mkdtempSync(join(tmpdir(), "nar-dump-"));
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
    const dir = mkdtempSync(join(tmpdir(), "nar-dump-"));
    execFileSync("mkfifo", [join(dir, "fifo")]);
    await assert.rejects(ours(dir), /unsupported type/);
    await assert.rejects(ours(join(dir, "missing")), /ENOENT/);
  });
});
