// The spool: records written the hook's way are read back in order; a writer's temporary file is left
// alone while it may still be written, and read once stale; lines that are not store paths are set aside.
import assert from "node:assert/strict";
import { mkdtempSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { defaultPaths } from "./config.ts";
import {
  isSettled,
  listSpool,
  parseRecord,
  readRecord,
  removeRecord,
  UNMARKED_SETTLE_MS,
  writeRecord,
} from "./spool.ts";

const A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
const B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";

describe("spool", () => {
  it("reads back records oldest first and removes them", () => {
    const dir = mkdtempSync(join(tmpdir(), "nixstash-spool-"));
    const first = writeRecord(dir, [A], "drv x");
    const second = writeRecord(dir, [B, A]);
    utimesSync(first, new Date(1000_000), new Date(1000_000));
    const records = listSpool(dir);
    assert.deepEqual(
      records.map((r) => r.file),
      [first, second],
    );
    assert.deepEqual(readRecord(records[0]!), { complete: true, paths: [A], derivations: [], invalid: [] });
    assert.deepEqual(readRecord(records[1]!), {
      complete: true,
      paths: [B, A],
      derivations: [],
      invalid: [],
    });
    for (const r of records) removeRecord(r);
    removeRecord(records[0]!); // already gone: fine
    assert.deepEqual(listSpool(dir), []);
    assert.deepEqual(listSpool(join(dir, "missing")), []);
  });

  it("leaves a writer's temporary file alone until it is stale", () => {
    const dir = mkdtempSync(join(tmpdir(), "nixstash-spool-"));
    const tmp = join(dir, ".new-123");
    writeFileSync(tmp, `${A}\n/nix/store/bbbb`);
    assert.deepEqual(listSpool(dir), []);
    const later = Date.now() + 11 * 60_000;
    const stale = listSpool(dir, later);
    assert.deepEqual(
      stale.map((r) => r.file),
      [tmp],
    );
    assert.deepEqual(readRecord(stale[0]!), {
      complete: false,
      paths: [A],
      derivations: [],
      invalid: ["/nix/store/bbbb"],
    });
  });

  it("reads a record written in place once it ends with its end line, or has been still for a while", () => {
    const dir = mkdtempSync(join(tmpdir(), "nixstash-spool-"));
    // The hook's way: created in place, one printf ending in "# end".
    const file = join(dir, "4242-0.paths");
    writeFileSync(file, `# drv /nix/store/x.drv\n${A}\n`);
    const [partial] = listSpool(dir);
    assert.ok(partial);
    const before = readRecord(partial);
    assert.equal(before.complete, false);
    assert.equal(isSettled(partial, before, partial.mtimeMs + 10), false, "still being written: left alone");
    assert.equal(
      isSettled(partial, before, partial.mtimeMs + UNMARKED_SETTLE_MS),
      true,
      "still for long: read",
    );
    writeFileSync(file, `# drv /nix/store/x.drv\n${A}\n${B}\n# end\n`);
    const [done] = listSpool(dir);
    const after = readRecord(done!);
    assert.deepEqual(after, { complete: true, paths: [A, B], derivations: [], invalid: [] });
    assert.equal(isSettled(done!, after, done!.mtimeMs), true);
    // "# end" anywhere but last does not count.
    assert.equal(parseRecord(`${A}\n# end\n${B}\n`).complete, false);
    assert.equal(parseRecord("# end\n").complete, true);
  });

  it("parses comments, blank lines and junk", () => {
    const drv = "/nix/store/dddddddddddddddddddddddddddddddd-d.drv";
    assert.deepEqual(parseRecord(`# drv /nix/store/x.drv\n\n  ${A}  \nhello\n${B}\ndrv ${drv}\ndrv ${A}\n`), {
      complete: false,
      paths: [A, B],
      derivations: [drv],
      invalid: ["hello", `drv ${A}`],
    });
  });

  it("puts state and spool where the post-build hook does", () => {
    assert.deepEqual(defaultPaths({}, 0), {
      stateDir: "/var/lib/nixstash",
      spoolDir: "/var/lib/nixstash/spool",
    });
    assert.deepEqual(defaultPaths({ HOME: "/home/u" }, 1000), {
      stateDir: "/home/u/.local/state/nixstash",
      spoolDir: "/home/u/.local/state/nixstash/spool",
    });
    assert.equal(defaultPaths({ XDG_STATE_HOME: "/s" }, 1000).spoolDir, "/s/nixstash/spool");
    assert.equal(defaultPaths({ NIXSTASH_STATE_DIR: "/d" }, 0).spoolDir, "/d/spool");
    assert.equal(defaultPaths({ NIXSTASH_STATE_DIR: "/d", NIXSTASH_SPOOL: "/q" }, 0).spoolDir, "/q");
  });
});
