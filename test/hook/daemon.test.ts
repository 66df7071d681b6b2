// The post-build hook and `nixstash daemon` end to end: a real Nix 2.8 client whose nix.conf runs our hook,
// the real daemon process, the real server process (SQLite + local directory).
//   1. server up: every built output and its closure reach the cache, and substitute into a fresh store;
//   2. server down during several builds: builds succeed, the hook stays fast, the daemon uploads all later;
//   3. daemon SIGKILLed in the middle of a big upload, then restarted: every path arrives exactly once;
//   4. a path the server refuses is reported failed with the server's reason and blocks nothing else.
import assert from "node:assert/strict";
import {
  chmodSync,
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { nix } from "../support/nix-client.ts";
import { testTmp } from "../support/services.ts";
import {
  buildHooked,
  type Cache,
  cli,
  closurePaths,
  type DaemonProcess,
  daemonDirs,
  freePort,
  hookedNix,
  narinfoStatus,
  queueStatus,
  startCache,
  startDaemon,
  timedHook,
  waitFor,
} from "./hook-harness.ts";

async function allPresent(url: string, paths: readonly string[]): Promise<boolean> {
  for (const path of paths) if ((await narinfoStatus(url, path)) !== 200) return false;
  return true;
}

async function substitute(cache: Cache, path: string) {
  const store = mkdtempSync(join(testTmp(), "hook-store-"));
  const env = hookedNix(join(store, "unused-spool"));
  const result = await nix(env, "nix-store", [
    "--store",
    store,
    "--realise",
    path,
    "--option",
    "substituters",
    `${cache.server.url}/main`,
    "--option",
    "trusted-public-keys",
    cache.server.publicKey,
  ]);
  assert.equal(result.code, 0, result.stderr);
  return store;
}

describe("post-build hook + daemon, server up", () => {
  let cache: Cache;
  let daemon: DaemonProcess | undefined;
  after(async () => {
    await daemon?.stop();
    await cache?.server.stop();
  });

  it("uploads every built output and its closure; it substitutes into a fresh store", {
    timeout: 120_000,
  }, async () => {
    cache = await startCache();
    const { stateDir, spool } = daemonDirs();
    daemon = startDaemon({ server: cache.server.url, token: cache.pushToken, stateDir, spool });
    await daemon.waitForEvent("start", (e) => e.msg === "daemon started");

    const env = hookedNix(spool);
    const built = await buildHooked(env);
    const paths = closurePaths(built);
    await waitFor("the closure in the cache", () => allPresent(cache.server.url, paths), 60_000);

    // The hook recorded the two built derivations (Nix 2.8.0 gave it an empty OUT_PATHS), the daemon asked
    // the store for their outputs, and found the input, which no build produced, through the closure.
    // A path is in the cache a moment before the daemon hears back and logs it: wait for the log too.
    const running = daemon;
    const pushedPaths = () => running.events.filter((e) => e.msg === "pushed").map((e) => e.path);
    await waitFor("the daemon to report every push", async () =>
      paths.every((p) => pushedPaths().includes(p)) ? true : undefined,
    );
    assert.deepEqual([...pushedPaths()].sort(), [...paths].sort());
    const queued = daemon.events.filter((e) => e.msg === "queued from the spool");
    assert.equal(
      queued.reduce((n, e) => n + (e.paths as number), 0),
      2,
    );
    await waitFor("the queue to settle", async () => {
      const q = await queueStatus(stateDir);
      return q.counts.waiting === 0 && q.counts.uploading === 0 ? q : undefined;
    });
    const status = await queueStatus(stateDir);
    assert.equal(status.counts.failed, 0);
    assert.equal(status.counts.done, paths.length);
    assert.deepEqual(readdirSync(spool), [], "the spool is drained");

    const store = await substitute(cache, built.top);
    assert.equal(readFileSync(join(store, built.top, "refs"), "utf8").trim(), `${built.dep} ${built.input}`);
    assert.deepEqual(readFileSync(join(store, built.dep, "random")), readFileSync(join(built.dep, "random")));
    assert.equal(
      readFileSync(join(store, built.input), "utf8"),
      "an input, added to the store by evaluation\n",
    );
  });
});

describe("post-build hook + daemon, server down during the builds", () => {
  let cache: Cache | undefined;
  let daemon: DaemonProcess | undefined;
  after(async () => {
    await daemon?.stop();
    await cache?.server.stop();
  });

  it("builds succeed with a fast hook; the daemon uploads everything once the server is back", {
    timeout: 180_000,
  }, async () => {
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    cache = await startCache({ listen });
    const { url } = cache.server;
    const { dataDir, pushToken } = cache;
    await cache.server.stop();

    const { stateDir, spool } = daemonDirs();
    daemon = startDaemon({ server: url, token: pushToken, stateDir, spool });
    const { hook, timings } = timedHook(stateDir);
    const env = hookedNix(spool, hook);
    const builds = [];
    for (let i = 0; i < 4; i++) builds.push(await buildHooked(env));

    // Every hook run ended with 0 and quickly, inside real builds, with the server unreachable.
    const runs = readFileSync(timings, "utf8")
      .trim()
      .split("\n")
      .map((line) => line.split(" ").map(Number) as [number, number]);
    assert.equal(runs.length, 8, "two derivations built per nix-build");
    for (const [ns, rc] of runs) {
      assert.equal(rc, 0);
      assert.ok(ns < 500e6, `hook took ${ns / 1e6} ms`);
    }
    const ms = runs.map(([ns]) => ns / 1e6).sort((a, b) => a - b);
    process.stderr.write(
      `hook inside nix-build, server down (Nix 2.8.0, empty OUT_PATHS; includes 2 date forks of the timer): ` +
        `median ${ms[ms.length >> 1]!.toFixed(1)} ms, max ${ms.at(-1)!.toFixed(1)} ms\n`,
    );

    // The daemon is retrying, not losing: all eight outputs wait, with the reason.
    const waiting = await waitFor("the daemon to report the outage", async () => {
      const q = await queueStatus(stateDir);
      return q.counts.waiting === 8 && q.waiting.every((w) => w.attempts > 0) ? q : undefined;
    });
    assert.match(waiting.waiting[0]!.reason ?? "", /cannot reach/);
    assert.ok(daemon.events.some((e) => e.msg === "waiting to retry"));
    const all = builds.flatMap(closurePaths);
    assert.equal(all.length, 12);

    cache = { ...(await startCache({ dataDir, listen })), pushToken };
    assert.equal(cache.server.url, url);
    await waitFor("every closure in the cache", () => allPresent(url, all), 60_000);
    await waitFor("the queue to drain", async () => {
      const q = await queueStatus(stateDir);
      return q.counts.waiting === 0 && q.counts.uploading === 0 && q.counts.failed === 0 ? q : undefined;
    });
    const store = await substitute(cache, builds[3]!.top);
    assert.ok(statSync(join(store, builds[3]!.dep, "random")).size === 65536);
  });
});

describe("daemon killed with SIGKILL in the middle of an upload", () => {
  let cache: Cache;
  let daemon: DaemonProcess | undefined;
  after(async () => {
    await daemon?.stop();
    await cache?.server.stop();
  });

  it("resumes after a restart: every path arrives exactly once, nothing stays stuck", {
    timeout: 240_000,
  }, async () => {
    cache = await startCache();
    const { stateDir, spool } = daemonDirs();
    const env = hookedNix(spool);
    // Built while no daemon runs: the hook queues into the spool regardless.
    const built = await buildHooked(env, { bigMiB: 200 });
    const paths = closurePaths(built);
    const big = built.big!;

    const first = startDaemon({
      server: cache.server.url,
      token: cache.pushToken,
      stateDir,
      spool,
      args: ["--jobs", "2"],
    });
    daemon = first;
    await first.waitForEvent("big upload started", (e) => e.msg === "uploading" && e.path === big);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(await narinfoStatus(cache.server.url, big), 404, "the kill must land mid-upload");
    await first.kill();

    const stuck = await queueStatus(stateDir);
    assert.ok(
      stuck.uploading.some((u) => u.path === big),
      "the queue recorded the cut upload as in flight",
    );
    const firstPushed = first.events.filter((e) => e.msg === "pushed").map((e) => e.path!);
    assert.ok(!firstPushed.includes(big));

    const second = startDaemon({ server: cache.server.url, token: cache.pushToken, stateDir, spool });
    daemon = second;
    await second.waitForEvent(
      "resume",
      (e) => e.msg === "resuming uploads cut short by the last stop or crash",
    );
    await waitFor("the closure in the cache", () => allPresent(cache.server.url, paths), 120_000);
    await waitFor("the queue to settle", async () => {
      const q = await queueStatus(stateDir);
      return q.counts.waiting === 0 && q.counts.uploading === 0 ? q : undefined;
    });

    // Exactly once: no path was pushed by both runs (the second did not send again what the first had
    // finished), and the cut upload was sent again. A path is reported by neither run only if the kill
    // caught its upload after the server had stored it but before the daemon heard back: it was in flight,
    // and the second run found it present. (The NAR count below shows the server stored each path once.)
    const secondPushed = second.events.filter((e) => e.msg === "pushed").map((e) => e.path!);
    const reported = [...firstPushed, ...secondPushed];
    assert.equal(new Set(reported).size, reported.length, `pushed twice: ${reported.sort().join(" ")}`);
    assert.ok(secondPushed.includes(big));
    const inFlight = new Set(stuck.uploading.map((u) => u.path));
    for (const path of paths)
      assert.ok(reported.includes(path) || inFlight.has(path), `${path}: neither pushed nor in flight`);
    for (const e of [...first.events, ...second.events].filter((e) => e.msg === "pushed"))
      assert.equal(e.status, "stored", `${e.path}`);
    const status = await queueStatus(stateDir);
    assert.equal(status.counts.failed, 0);

    // The server kept one NAR per path and discarded the cut upload.
    const nars = readdirSync(join(cache.dataDir, "storage", "nar"));
    assert.equal(nars.length, paths.length, nars.join(" "));
    const db = await openDatabase(`sqlite:${join(cache.dataDir, "nixstash.db")}`);
    try {
      await waitFor(
        "the cut upload to be cleaned up",
        async () => (await createRepo(db).pendingUploadsOlderThan(Date.now() + 60_000)).length === 0,
      );
    } finally {
      await db.close();
    }

    const store = await substitute(cache, built.top);
    assert.equal(statSync(join(store, big, "blob")).size, 200 * 1024 * 1024);
  });
});

describe("a path the server refuses", () => {
  let cache: Cache;
  let daemon: DaemonProcess | undefined;
  const cleanup: string[] = [];
  after(async () => {
    await daemon?.stop();
    await cache?.server.stop();
    // The corrupted path and what refers to it: out of the local store again.
    if (cleanup.length) await nix(hookedNix("/nonexistent"), "nix-store", ["--delete", ...cleanup]);
  });

  it("is failed with the server's reason and blocks only what refers to it", {
    timeout: 120_000,
  }, async () => {
    cache = await startCache();
    const { stateDir, spool } = daemonDirs();
    const env = hookedNix(spool);
    const bad = await buildHooked(env);
    const good = await buildHooked(env);
    cleanup.push(bad.top, bad.dep);

    // Corrupt bad.dep in the local store after the build: same size, other bytes. Its registered NarHash
    // no longer matches its content, which the server checks (a real fault: disk corruption, a tampered store).
    const file = join(bad.dep, "random");
    chmodSync(bad.dep, 0o755);
    chmodSync(file, 0o644);
    const fd = openSync(file, "r+");
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, 100);
    writeSync(fd, Buffer.from([byte[0]! ^ 0xff]), 0, 1, 100);
    closeSync(fd);
    chmodSync(file, 0o444);
    chmodSync(bad.dep, 0o555);

    daemon = startDaemon({ server: cache.server.url, token: cache.pushToken, stateDir, spool });
    const refused = await daemon.waitForEvent("the refusal", (e) => e.msg === "refused");
    assert.equal(refused.path, bad.dep);
    assert.match(String(refused.reason), /NarHash mismatch/);

    await waitFor("the good closure in the cache", () => allPresent(cache.server.url, closurePaths(good)));
    const status = await waitFor("the queue to settle", async () => {
      const q = await queueStatus(stateDir);
      return q.counts.waiting === 0 && q.counts.uploading === 0 ? q : undefined;
    });
    const failed = new Map(status.failed.map((f) => [f.path, f]));
    assert.equal(failed.get(bad.dep)?.outcome, "hash_mismatch");
    assert.match(failed.get(bad.dep)!.reason, new RegExp(`NarHash mismatch for ${bad.dep}`));
    assert.equal(failed.get(bad.top)?.outcome, "reference_failed");
    assert.match(failed.get(bad.top)!.reason, /NarHash mismatch/);
    assert.equal(failed.size, 2);
    assert.equal(await narinfoStatus(cache.server.url, bad.dep), 404);
    assert.equal(await narinfoStatus(cache.server.url, bad.top), 404);
    assert.equal(await narinfoStatus(cache.server.url, bad.input), 200, "its healthy input went up");

    // `nixstash queue` tells the user, and later builds keep flowing.
    const text = await cli(["queue", "--state-dir", stateDir]);
    assert.match(text.stdout, /failed 2/);
    assert.match(text.stdout, /hash_mismatch: NarHash mismatch/);
    const later = await buildHooked(env);
    await waitFor("a later build in the cache", () => allPresent(cache.server.url, closurePaths(later)));
  });
});
