// The post-build hook script on its own: how long Nix waits for it (p50/p99 over hundreds of runs, as Nix
// runs it: fork + exec, environment in, exit status out), that every run leaves exactly one complete record
// even when runs overlap, where it puts the spool, and that it exits 0 when it cannot write at all.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parseRecord } from "../../hook/spool.ts";
import { testTmp } from "../support/services.ts";
import { HOOK } from "./hook-harness.ts";

const OUT = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12";
const OUT2 = "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-hello-2.12-man";
const DRV = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.drv";

const baseEnv = { PATH: process.env.PATH ?? "/usr/bin:/bin" };

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function runs(env: Record<string, string>, n: number): number[] {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = process.hrtime.bigint();
    const result = spawnSync(HOOK, [], { env: { ...baseEnv, ...env }, stdio: "ignore" });
    ms.push(Number(process.hrtime.bigint() - start) / 1e6);
    assert.equal(result.status, 0);
  }
  return ms.sort((a, b) => a - b);
}

describe("post-build hook script", () => {
  it("returns in a few milliseconds and leaves one record per run", () => {
    const spool = join(mkdtempSync(join(testTmp(), "hook-bench-")), "spool");
    const n = 300;
    // Nix >= 2.8.1: OUT_PATHS given. Nix 2.8.0: empty OUT_PATHS, only DRV_PATH.
    const withOutputs = runs({ NIXSTASH_SPOOL: spool, DRV_PATH: DRV, OUT_PATHS: `${OUT} ${OUT2}` }, n);
    const withDrvOnly = runs({ NIXSTASH_SPOOL: spool, DRV_PATH: DRV, OUT_PATHS: "" }, n);
    for (const [name, ms] of [
      ["OUT_PATHS set (Nix >= 2.8.1)", withOutputs],
      ["OUT_PATHS empty (Nix 2.8.0)", withDrvOnly],
    ] as const) {
      const p50 = percentile(ms, 50);
      const p99 = percentile(ms, 99);
      process.stderr.write(
        `post-build hook, ${name}, ${n} runs: p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, ` +
          `max ${ms.at(-1)!.toFixed(2)} ms\n`,
      );
      assert.ok(p50 < 15, `p50 ${p50} ms`);
      assert.ok(p99 < 100, `p99 ${p99} ms`);
    }

    const files = readdirSync(spool);
    assert.equal(files.length, 2 * n, "one record per run, none overwritten");
    assert.ok(files.every((f) => /^\d+-\d+\.paths$/.test(f)));
    let outputs = 0;
    let drvs = 0;
    for (const file of files) {
      const record = parseRecord(readFileSync(join(spool, file), "utf8"));
      assert.deepEqual(record.invalid, []);
      assert.ok(record.complete, `${file} ends with its end line`);
      if (record.paths.length) {
        assert.deepEqual(record.paths, [OUT, OUT2]);
        outputs++;
      } else {
        assert.deepEqual(record.derivations, [DRV]);
        drvs++;
      }
    }
    assert.deepEqual([outputs, drvs], [n, n]);
  });

  it("keeps every record when many builds finish at once", async () => {
    const spool = join(mkdtempSync(join(testTmp(), "hook-par-")), "spool");
    const n = 64;
    await Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          new Promise<void>((resolve, reject) => {
            const out = `/nix/store/${String(i).padStart(32, "0")}-p${i}`;
            const child = spawn(HOOK, [], {
              env: { ...baseEnv, NIXSTASH_SPOOL: spool, OUT_PATHS: out, DRV_PATH: DRV },
              stdio: "ignore",
            });
            child.once("error", reject);
            child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`exit ${code}`))));
          }),
      ),
    );
    const seen = new Set<string>();
    for (const file of readdirSync(spool))
      for (const p of parseRecord(readFileSync(join(spool, file), "utf8")).paths) seen.add(p);
    assert.equal(seen.size, n);
    assert.ok(!readdirSync(spool).some((f) => f.startsWith(".")), "no temporary files left");
  });

  it("exits 0 and says why on the build log when it cannot write", () => {
    const dir = mkdtempSync(join(testTmp(), "hook-fail-"));
    writeFileSync(join(dir, "file"), "");
    const result = spawnSync(HOOK, [], {
      env: { ...baseEnv, NIXSTASH_SPOOL: join(dir, "file", "spool"), OUT_PATHS: OUT, DRV_PATH: DRV },
      encoding: "utf8",
    });
    assert.equal(result.status, 0);
    assert.match(result.stderr, /cannot write to spool .*hello-2.12 will not be pushed/);
    const nothing = spawnSync(HOOK, [], { env: baseEnv, encoding: "utf8" });
    assert.equal(nothing.status, 0);
    assert.match(nothing.stderr, /nothing recorded/);
  });

  it("finds the spool through NIXSTASH_STATE_DIR, and per user without it", (t) => {
    const dir = mkdtempSync(join(testTmp(), "hook-where-"));
    spawnSync(HOOK, [], { env: { ...baseEnv, NIXSTASH_STATE_DIR: dir, OUT_PATHS: OUT }, stdio: "ignore" });
    assert.equal(readdirSync(join(dir, "spool")).length, 1);

    // As an ordinary user (nobody), with neither variable: under XDG_STATE_HOME.
    const setpriv = spawnSync("setpriv", ["--version"]);
    if (setpriv.status !== 0 || process.getuid?.() !== 0) return;
    // (the test run's scratch dir is private to root: use one that nobody can reach)
    const userDir = mkdtempSync(join(tmpdir(), "nixstash-hook-user-"));
    t.after(() => rmSync(userDir, { recursive: true, force: true }));
    chmodSync(userDir, 0o755);
    const home = join(userDir, "home");
    spawnSync("mkdir", ["-p", home]);
    chmodSync(home, 0o777);
    const result = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", HOOK], {
      env: { ...baseEnv, HOME: home, XDG_STATE_HOME: join(home, "state"), OUT_PATHS: OUT },
      encoding: "utf8",
    });
    assert.equal(result.status, 0, result.stderr);
    const spool = join(home, "state", "nixstash", "spool");
    assert.equal(readdirSync(spool).length, 1);
    assert.deepEqual(parseRecord(readFileSync(join(spool, readdirSync(spool)[0]!), "utf8")).paths, [OUT]);
    rmSync(userDir, { recursive: true, force: true });
  });
});
