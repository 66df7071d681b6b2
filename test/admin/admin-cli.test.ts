// `nixstash admin …` against a real server (in-process app over HTTP, SQLite + local directory): every
// command group, human tables and --json.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { main } from "../../hook/cli.ts";
import { testTmp } from "../support/services.ts";
import { type AdminHarness, adminHarness, serveHarness } from "./support.ts";

describe("nixstash admin (CLI)", () => {
  let a: AdminHarness | undefined;
  let server: { url: string; close(): Promise<void> } | undefined;
  let tokenFile = "";

  before(async () => {
    a = await adminHarness({ db: "sqlite", storage: "local" });
    if (!a) return;
    server = await serveHarness(a.h);
    tokenFile = join(mkdtempSync(join(testTmp(), "cli-")), "token");
    writeFileSync(tokenFile, `${a.admin}\n`);
  });
  after(async () => {
    await server?.close();
    await a?.h.cleanup();
  });

  const run = async (...args: string[]) => {
    let stdout = "";
    let stderr = "";
    const code = await main(["admin", "--server", server!.url, "--token-file", tokenFile, ...args], {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: (s: string) => (stderr += s) },
      stdin: process.stdin,
      env: {},
      uid: 0,
      signal: new AbortController().signal,
    });
    return { code, stdout, stderr };
  };
  const ok = async (...args: string[]) => {
    const r = await run(...args);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };

  it("administers caches, tokens, keys, paths, stats and gc", async (t) => {
    if (!a || !server) return t.skip("backend unavailable");
    assert.match(await ok("whoami"), /^admin \(id 1\): admin on \*/);
    assert.match(
      await ok("caches", "create", "cli", "--private", "--retention", "30d", "--quota", "2G"),
      /retention {4}30d/,
    );
    const list = await ok("caches", "list");
    assert.match(list, /^NAME +PUBLIC/);
    assert.match(list, /cli +false +40 +30d +2\.0 GiB/);
    assert.match(await ok("caches", "update", "cli", "--quota", "none", "--priority", "20"), /quota {8}none/);
    const json = JSON.parse(await ok("--json", "caches", "show", "cli"));
    assert.equal(json.priority, 20);

    const created = await ok(
      "tokens",
      "create",
      "ci",
      "--cache",
      "cli",
      "--perm",
      "pull",
      "--perm",
      "push",
      "--expires",
      "7d",
    );
    const secret = /^(nxs_\S+)$/m.exec(created)![1]!;
    const tokens = await ok("tokens", "list");
    assert.match(tokens, /ci +nxs_/);
    assert.ok(!tokens.includes(secret));
    const id = /^(\d+) +ci /m.exec(tokens)![1]!;
    assert.match(await ok("tokens", "revoke", id), /revoked/);

    const p1 = await a.push("cli", "cli-dep");
    const p2 = await a.push("cli", "cli-top", [p1]);
    assert.match(await ok("keys", "rotate", "cli"), /key cli-2 \(id \d+\) added/);
    const dir = mkdtempSync(join(testTmp(), "key-"));
    execFileSync("nix-store", [
      "--generate-binary-cache-key",
      "cli-imported",
      join(dir, "sk"),
      join(dir, "pk"),
    ]);
    assert.match(await ok("keys", "import", "cli", join(dir, "sk")), /imported key cli-imported/);
    assert.match(await ok("keys", "retire", "cli", "cli-1"), /retired/);
    assert.match(await ok("keys", "list", "cli"), /cli-1 +retired/);

    assert.match(await ok("paths", "list", "cli", "--search", "cli-"), /cli-top[\s\S]*cli-dep/);
    assert.match(await ok("paths", "show", "cli", p2), /^References: \S+-cli-dep$/m);
    assert.match(await ok("paths", "pin", "cli", p2), /pinned/);
    const refused = await run("paths", "delete", "cli", p1);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /409 conflict: .*referenced by 1 other path/);
    assert.match(await ok("paths", "unpin", "cli", p2.slice(11)), /unpinned/);
    assert.match(await ok("paths", "delete", "cli", p1, "--referrers"), /deleted 2 path\(s\)/);

    assert.match(await ok("stats", "cli"), /cache cli: 0 paths/);
    assert.match(await ok("gc", "cli", "--dry-run"), /cli: would collect 0 path/);
    assert.match(await ok("gc"), /freed/);
    assert.match(await ok("gc", "runs"), /schedule|api/);
    const del = await run("caches", "delete", "cli");
    assert.equal(del.code, 1);
    assert.match(del.stderr, /confirm/);
    await ok("caches", "delete", "cli", "--confirm", "cli");
    assert.match(await ok("caches", "purge", "cli", "--confirm", "cli"), /purged/);
    assert.equal((await run("bogus")).code, 2);
  });
});
