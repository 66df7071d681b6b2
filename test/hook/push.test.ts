// `nixstash push` and `nixstash use` end to end, with the real CLI, the real server process and a real
// Nix 2.8 client: a closure pushed with a summary (and a second push finding it there), paths signed by an
// upstream key left to upstream and sent as proofs, a failure reported with a non-zero exit, the progress
// line on a terminal, and `use --write` producing a nix.conf + netrc with which Nix substitutes from a
// private cache.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { buildClosure, nix, nixEnv } from "../support/nix-client.ts";
import { testTmp } from "../support/services.ts";
import {
  buildHooked,
  type Cache,
  cli,
  createToken,
  HOOK,
  hookedNix,
  narinfoStatus,
  ROOT,
  startCache,
} from "./hook-harness.ts";

const execFileP = promisify(execFile);
/** The escape that starts the terminal's "clear to end of line" (ESC [ K). */
const ESC = String.fromCharCode(0x1b);

interface Summary {
  pushed: { path: string; status: string }[];
  alreadyThere: string[];
  upstream: string[];
  failed: { path: string; code: string; reason: string }[];
}

describe("nixstash push and use", () => {
  let cache: Cache;
  const connect = () => ["--server", cache.server.url, "--token", cache.pushToken];

  before(async () => {
    cache = await startCache();
  });
  after(async () => {
    await cache?.server.stop();
  });

  it("pushes a closure with a summary; a second push finds it there", { timeout: 60_000 }, async () => {
    const env = nixEnv();
    const closure = await buildClosure(env);
    const first = await cli(["push", ...connect(), "--json", closure.top]);
    assert.equal(first.code, 0, first.stderr);
    const summary = JSON.parse(first.stdout) as Summary;
    assert.deepEqual(
      summary.pushed.map((p) => p.path).sort(),
      [closure.dep, closure.mid, closure.top].sort(),
    );
    assert.ok(summary.pushed.every((p) => p.status === "stored"));
    assert.match(first.stderr, /3 paths in the closure: 3 to push/);
    assert.match(first.stderr, new RegExp(`pushed ${closure.dep} \\(`));
    assert.match(first.stderr, /pushed 3 \(.*\), already there 0, upstream 0, failed 0/);
    for (const p of [closure.dep, closure.mid, closure.top])
      assert.equal(await narinfoStatus(cache.server.url, p), 200);

    // Paths from stdin, and a ./result-style link into the store.
    const link = join(env.dir, "result");
    await execFileP("ln", ["-s", closure.mid, link]);
    const again = await cli(["push", ...connect(), "--json", "--stdin", link], { input: `${closure.top}\n` });
    assert.equal(again.code, 0, again.stderr);
    const second = JSON.parse(again.stdout) as Summary;
    assert.deepEqual(second.pushed, []);
    // Both roots are in the cache, so their closures are too: settled without looking at them.
    assert.deepEqual(second.alreadyThere.sort(), [closure.mid, closure.top].sort());
    assert.match(again.stderr, /2 paths: already in the cache, with their closures/);
    assert.match(again.stderr, /pushed 0 \(.*\), already there 2, upstream 0, failed 0/);
  });

  it("leaves paths signed by an upstream key to upstream, sending their signatures as proof", {
    timeout: 60_000,
  }, async () => {
    const dir = mkdtempSync(join(testTmp(), "upstream-"));
    const env = nixEnv();
    await nix(env, "nix-store", [
      "--generate-binary-cache-key",
      "upstream-test-1",
      join(dir, "secret"),
      join(dir, "public"),
    ]);
    const upstreamKey = readFileSync(join(dir, "public"), "utf8").trim();
    const res = await fetch(`${cache.server.url}/api/v1/caches`, {
      method: "POST",
      headers: { authorization: `Bearer ${cache.server.adminToken}` },
      body: JSON.stringify({ name: "withupstream", upstreamKeys: [upstreamKey] }),
    });
    assert.equal(res.status, 201, await res.text());

    const closure = await buildClosure(env);
    // dep is "on upstream": signed by the upstream key in the local store, as substituted paths are.
    const signed = await nix(env, "nix", ["store", "sign", "--key-file", join(dir, "secret"), closure.dep]);
    assert.equal(signed.code, 0, signed.stderr);

    const result = await cli(["push", ...connect(), "--cache", "withupstream", "--json", closure.top]);
    assert.equal(result.code, 0, result.stderr);
    const summary = JSON.parse(result.stdout) as Summary;
    assert.deepEqual(summary.upstream, [closure.dep]);
    assert.deepEqual(summary.pushed.map((p) => p.path).sort(), [closure.mid, closure.top].sort());
    const url = cache.server.url;
    assert.equal(
      await narinfoStatus(url, closure.dep, "withupstream"),
      404,
      "not pushed: upstream serves it",
    );
    assert.equal(
      await narinfoStatus(url, closure.mid, "withupstream"),
      200,
      "accepted on the strength of the proof",
    );
    assert.equal(await narinfoStatus(url, closure.top, "withupstream"), 200);

    // With upstream skipping turned off, the same push sends dep too.
    const all = await cli([
      "push",
      ...connect(),
      "--cache",
      "withupstream",
      "--upstream-keys",
      "none",
      "--json",
      closure.top,
    ]);
    assert.equal(all.code, 0, all.stderr);
    assert.deepEqual(
      (JSON.parse(all.stdout) as Summary).pushed.map((p) => p.path),
      [closure.dep],
    );
  });

  it("exits 1 naming what failed and why, after pushing the rest", { timeout: 60_000 }, async () => {
    const env = nixEnv();
    const closure = await buildClosure(env);
    const gone = "/nix/store/00000000000000000000000000000000-never-built";
    const result = await cli(["push", ...connect(), "--json", gone, closure.mid]);
    assert.equal(result.code, 1);
    const summary = JSON.parse(result.stdout) as Summary;
    assert.deepEqual(summary.pushed.map((p) => p.path).sort(), [closure.dep, closure.mid].sort());
    assert.equal(summary.failed.length, 1);
    assert.equal(summary.failed[0]!.path, gone);
    assert.match(summary.failed[0]!.reason, /not a valid path in the local store/);
    assert.match(result.stderr, /failed 1\n {2}failed \/nix\/store\/0+-never-built: /);

    const refused = await cli(["push", "--server", cache.server.url, "--token", "nxs_wrong", closure.top]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /failed .*(token|auth)/i);

    const usage = await cli(["push", ...connect()]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /nothing to push/);
  });

  it("draws a progress line on a terminal", { timeout: 90_000 }, async () => {
    const env = hookedNix(join(mkdtempSync(join(testTmp(), "unused-")), "spool"));
    const built = await buildHooked(env, { bigMiB: 64 });
    const command = [
      "node",
      "--import",
      "tsx",
      join(ROOT, "hook/cli.ts"),
      "push",
      ...connect(),
      "--jobs",
      "1",
      built.top,
    ].join(" ");
    // `script` gives the command a pseudo-terminal, as a user's shell would.
    const { stdout } = await execFileP("script", ["-qfec", command, "/dev/null"], {
      cwd: ROOT,
      maxBuffer: 1 << 24,
    });
    assert.match(
      stdout,
      new RegExp(
        `\r${ESC}\\[K\\[[#.]{20}\\] \\d+/4 paths {2}[\\d.]+ [KMG]?i?B/[\\d.]+ MiB {2}[\\d.]+ [KMG]?i?B/s {2}ETA `,
      ),
    );
    assert.match(stdout, /\[#{20}\] 4\/4 paths/);
    assert.match(stdout, /pushed 4 \(64\.\d MiB in /);
  });

  it("use --write sets up nix.conf and netrc so that Nix substitutes from a private cache", {
    timeout: 90_000,
  }, async () => {
    const res = await fetch(`${cache.server.url}/api/v1/caches`, {
      method: "POST",
      headers: { authorization: `Bearer ${cache.server.adminToken}` },
      body: JSON.stringify({ name: "private", public: false }),
    });
    assert.equal(res.status, 201, await res.text());
    const pullToken = await createToken(cache.server, ["private"], ["pull"]);
    const builder = nixEnv();
    const closure = await buildClosure(builder);
    const pushed = await cli(["push", ...connect(), "--cache", "private", closure.top]);
    assert.equal(pushed.code, 0, pushed.stderr);

    const client = nixEnv();
    const conf = join(client.dir, "conf");
    const target = `${cache.server.url}/private`;
    const args = [
      "use",
      target,
      "--token",
      pullToken,
      "--nix-conf",
      join(conf, "nix.conf"),
      "--netrc",
      join(conf, "netrc"),
    ];

    const printed = await cli(args);
    assert.equal(printed.code, 0, printed.stderr);
    assert.match(printed.stdout, new RegExp(`extra-substituters = ${target}`));
    assert.match(printed.stdout, /extra-trusted-public-keys = private-1:/);
    assert.match(printed.stdout, new RegExp(`machine 127.0.0.1 password ${pullToken}`));
    assert.match(printed.stdout, new RegExp(`post-build-hook = ${HOOK}`));
    assert.ok(!existsSync(join(conf, "netrc")), "printing writes nothing");

    const written = await cli([...args, "--write"]);
    assert.equal(written.code, 0, written.stderr);
    const nixConf = readFileSync(join(conf, "nix.conf"), "utf8");
    assert.match(nixConf, /^sandbox = false$/m, "existing settings kept");
    assert.match(nixConf, new RegExp(`^substituters = ${target}$`, "m"), "appended to the existing line");
    assert.match(nixConf, /^extra-trusted-public-keys = private-1:\S+$/m);
    assert.match(nixConf, new RegExp(`^netrc-file = ${join(conf, "netrc")}$`, "m"));
    assert.match(nixConf, new RegExp(`^post-build-hook = ${HOOK}$`, "m"));
    assert.equal(readFileSync(join(conf, "netrc"), "utf8"), `machine 127.0.0.1 password ${pullToken}\n`);
    assert.equal(statSync(join(conf, "netrc")).mode & 0o777, 0o600);
    assert.equal(
      readdirSync(conf).filter((f) => f.includes("nixstash-backup")).length,
      1,
      "nix.conf backed up",
    );

    const twice = await cli([...args, "--write"]);
    assert.equal(twice.code, 0, twice.stderr);
    assert.match(twice.stdout, /already configured/);
    assert.match(twice.stdout, /already has the token/);
    assert.equal(readFileSync(join(conf, "nix.conf"), "utf8"), nixConf);

    // Nix itself, with nothing but the written files: substitutes the closure, verified by the cache's key.
    const store = mkdtempSync(join(testTmp(), "use-store-"));
    const ok = await nix(client, "nix-store", ["--store", store, "--realise", closure.top]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(
      readFileSync(join(store, closure.dep, "bin/hello"), "utf8"),
      "#!/bin/sh\necho hello from dep\n",
    );

    // Without the netrc entry the private cache stays shut.
    writeFileSync(join(conf, "netrc"), "");
    const denied = await nix(client, "nix-store", [
      "--store",
      mkdtempSync(join(testTmp(), "use-store-")),
      "--realise",
      closure.top,
    ]);
    assert.notEqual(denied.code, 0);
  });
});
