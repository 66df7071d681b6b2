// Settings of the builder-side commands: flags before variables before defaults, and every bad value refused
// with the flag, its variable, the value and what a good one is.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError, loadDaemonSettings, loadLogSettings, loadPushSettings } from "./config.ts";

const NEEDED = { server: "http://127.0.0.1:8080/", token: "t0k" };

describe("builder-side settings", () => {
  it("takes flags first, then NIXSTASH_* variables, then defaults", () => {
    const s = loadPushSettings(
      { ...NEEDED, jobs: "8" },
      {
        NIXSTASH_JOBS: "2",
        NIXSTASH_ZSTD_LEVEL: "9",
        NIXSTASH_CACHE: "team.cache-1",
        NIXSTASH_RETRY_MAX: "1.5",
      },
    );
    assert.equal(s.server, "http://127.0.0.1:8080", "trailing slashes dropped");
    assert.equal(s.cache, "team.cache-1");
    assert.equal(s.concurrency, 8);
    assert.equal(s.zstdLevel, 9);
    assert.equal(s.retryBaseMs, 2000);
    assert.equal(s.retryMaxMs, 1500);
    assert.equal(s.upstreamKeys, undefined);
    assert.deepEqual(loadPushSettings({ ...NEEDED, "upstream-keys": "none" }, {}).upstreamKeys, []);
    assert.deepEqual(loadPushSettings({ ...NEEDED, "upstream-keys": "a:1, b:2" }, {}).upstreamKeys, [
      "a:1",
      "b:2",
    ]);
    const d = loadDaemonSettings(NEEDED, { NIXSTASH_NICE: "0", NIXSTASH_POLL: "0.25" }, 1000);
    assert.equal(d.nice, 0);
    assert.equal(d.pollMs, 250);
    assert.deepEqual(loadLogSettings({}, { NIXSTASH_LOG_LEVEL: "warn" }), {
      logLevel: "warn",
      logFormat: "text",
    });
  });

  const refused: [string, Record<string, string>, RegExp][] = [
    [
      "a server that is not http(s)",
      { server: "ftp://x" },
      /^invalid --server \(NIXSTASH_SERVER\): "ftp:\/\/x": must be an http/,
    ],
    ["a server that is no URL", { server: "http://" }, /--server .*must be an http:\/\/ or https:\/\/ URL/],
    [
      "a cache name with capitals",
      { cache: "Main" },
      /^invalid --cache \(NIXSTASH_CACHE\): "Main": not a cache name/,
    ],
    [
      "no jobs",
      { jobs: "0" },
      /^invalid --jobs \(NIXSTASH_JOBS\): "0": must be a whole number from 1 to 64$/,
    ],
    ["a fraction of a job", { jobs: "1.5" }, /--jobs .*whole number/],
    ["jobs in hex", { jobs: "0x10" }, /--jobs .*whole number/],
    ["too many jobs", { jobs: "65" }, /--jobs .*from 1 to 64/],
    ["a zstd level past 19", { "zstd-level": "22" }, /--zstd-level \(NIXSTASH_ZSTD_LEVEL\).*from 1 to 19/],
    ["a retry time of zero", { "retry-base": "0" }, /--retry-base .*positive number of seconds/],
    ["a retry time that is no number", { "retry-max": "soon" }, /--retry-max .*positive number of seconds/],
    ["an infinite retry time", { "retry-max": "Infinity" }, /--retry-max .*positive number of seconds/],
  ];
  for (const [what, flags, message] of refused)
    it(`refuses ${what}`, () => {
      assert.throws(
        () => loadPushSettings({ ...NEEDED, ...flags }, {}),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError);
          assert.match(e.message, message);
          return true;
        },
      );
    });

  it("refuses bad values from variables as from flags, and bad log and daemon settings", () => {
    assert.throws(() => loadPushSettings(NEEDED, { NIXSTASH_JOBS: "-1" }), /--jobs \(NIXSTASH_JOBS\): "-1"/);
    assert.throws(() => loadDaemonSettings(NEEDED, { NIXSTASH_NICE: "20" }, 0), /--nice .*from 0 to 19/);
    assert.throws(() => loadDaemonSettings(NEEDED, { NIXSTASH_KEEP_DONE: "-3" }, 0), /--keep-done/);
    assert.throws(
      () => loadLogSettings({ "log-level": "loud" }, {}),
      /invalid --log-level \(NIXSTASH_LOG_LEVEL\): "loud": must be one of fatal, error, warn, info, debug, trace, silent$/,
    );
    assert.throws(() => loadLogSettings({}, { NIXSTASH_LOG_FORMAT: "xml" }), /must be one of text, json/);
  });

  it("says what is missing when there is no server or token", () => {
    assert.throws(() => loadPushSettings({ token: "t" }, {}), /no server: give --server \(NIXSTASH_SERVER\)/);
    assert.throws(() => loadPushSettings({ server: "http://h" }, {}), /no token: give --token/);
  });
});
