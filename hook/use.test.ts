// `nixstash use`: parsing the cache URL, merging nix.conf and netrc without losing what is there, and
// writing the files safely (backup, atomic replace, netrc mode 0600). The end-to-end proof that Nix
// accepts the result is in test/hook/push.test.ts.
import assert from "node:assert/strict";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { defaultConfPaths, mergeNetrc, mergeNixConf, parseTarget, writeConfigFile } from "./use.ts";

const KEY = "main-1:3zE7mgS1YKqBIJ7CMu/49kXyozvJWAYzEM8bgqwB0Lk=";
const HOOK = "/opt/nixstash/hook/post-build-hook.sh";
const wanted = {
  substituter: "https://cache.example.org/main",
  publicKeys: [KEY],
  netrcFile: "/etc/nix/netrc",
  postBuildHook: HOOK,
};

describe("parseTarget", () => {
  it("splits server and cache", () => {
    assert.deepEqual(parseTarget("https://cache.example.org/main"), {
      server: "https://cache.example.org",
      cache: "main",
      url: "https://cache.example.org/main",
      host: "cache.example.org",
    });
    assert.deepEqual(parseTarget("http://127.0.0.1:8080/team/"), {
      server: "http://127.0.0.1:8080",
      cache: "team",
      url: "http://127.0.0.1:8080/team",
      host: "127.0.0.1",
    });
    assert.equal(parseTarget("https://example.org/nix/cache/main").server, "https://example.org/nix/cache");
  });
  it("refuses what is not a cache URL", () => {
    assert.throws(() => parseTarget("cache.example.org/main"), /not a URL/);
    assert.throws(() => parseTarget("https://cache.example.org"), /must end in the cache name/);
    assert.throws(() => parseTarget("s3://bucket/main"), /http/);
    assert.throws(() => parseTarget("https://u:p@cache.example.org/main"), /credentials/);
  });
});

describe("mergeNixConf", () => {
  it("adds extra- lines to an empty file, so Nix's defaults stay", () => {
    const merged = mergeNixConf("", wanted);
    assert.equal(
      merged.text,
      [
        "# nixstash: https://cache.example.org/main",
        "extra-substituters = https://cache.example.org/main",
        `extra-trusted-public-keys = ${KEY}`,
        "netrc-file = /etc/nix/netrc",
        `post-build-hook = ${HOOK}`,
        "",
      ].join("\n"),
    );
    assert.equal(merged.changed, true);
    assert.equal(merged.netrcFile, "/etc/nix/netrc");
  });

  it("appends to existing settings, keeps everything else, and is idempotent", () => {
    const before = [
      "# my settings",
      "max-jobs = 8",
      "substituters = https://cache.nixos.org # the default",
      "trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
      "experimental-features = nix-command flakes",
      "",
    ].join("\n");
    const once = mergeNixConf(before, wanted);
    const lines = once.text.split("\n");
    assert.equal(lines[0], "# my settings");
    assert.equal(lines[1], "max-jobs = 8");
    assert.equal(
      lines[2],
      "substituters = https://cache.nixos.org https://cache.example.org/main # the default",
    );
    assert.equal(
      lines[3],
      `trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= ${KEY}`,
    );
    assert.equal(lines[4], "experimental-features = nix-command flakes");
    assert.ok(!once.text.includes("extra-substituters"));
    assert.match(once.text, /\nnetrc-file = \/etc\/nix\/netrc\n/);
    assert.match(once.text, /\npost-build-hook = \/opt\/nixstash\/hook\/post-build-hook.sh\n$/);

    const twice = mergeNixConf(once.text, wanted);
    assert.equal(twice.changed, false);
    assert.equal(twice.text, once.text);
  });

  it("appends to the last line that sets a list, extra- or not", () => {
    const before = "substituters = https://a\nextra-substituters = https://b\n";
    const merged = mergeNixConf(before, { substituter: "https://c/main", publicKeys: [] });
    assert.equal(merged.text, "substituters = https://a\nextra-substituters = https://b https://c/main\n");
    assert.equal(mergeNixConf(merged.text, { substituter: "https://c/main", publicKeys: [] }).changed, false);
  });

  it("uses an existing netrc-file instead of replacing it", () => {
    const merged = mergeNixConf("netrc-file = /root/.netrc\n", wanted);
    assert.equal(merged.netrcFile, "/root/.netrc");
    assert.ok(!merged.text.includes("/etc/nix/netrc"));
    assert.match(merged.notes.join("\n"), /already sets netrc-file/);
  });

  it("keeps someone else's post-build-hook unless told to replace it", () => {
    const before = "post-build-hook = /etc/nix/upload-to-s3.sh\n";
    const kept = mergeNixConf(before, wanted);
    assert.match(kept.text, /^post-build-hook = \/etc\/nix\/upload-to-s3.sh$/m);
    assert.ok(!kept.text.includes(HOOK));
    assert.match(kept.notes.join("\n"), /kept it/);
    const replaced = mergeNixConf(before, { ...wanted, replaceHook: true });
    assert.match(replaced.text, /^post-build-hook = \/opt\/nixstash\/hook\/post-build-hook.sh$/m);
    assert.ok(!replaced.text.includes("upload-to-s3"));
  });

  it("leaves out netrc and hook lines when not wanted", () => {
    const merged = mergeNixConf("", { substituter: "https://c/main", publicKeys: [KEY] });
    assert.ok(!merged.text.includes("netrc-file"));
    assert.ok(!merged.text.includes("post-build-hook"));
  });
});

describe("mergeNetrc", () => {
  it("adds an entry, keeping the others", () => {
    const before = "machine github.com\nlogin me\npassword ghp_x\n";
    const merged = mergeNetrc(before, "cache.example.org", "nxs_new");
    assert.equal(merged.text, `${before}machine cache.example.org password nxs_new\n`);
    assert.equal(mergeNetrc("", "h", "t").text, "machine h password t\n");
    assert.equal(
      mergeNetrc("machine a password b", "h", "t").text,
      "machine a password b\nmachine h password t\n",
    );
  });

  it("replaces the password of our host (token rotated), is idempotent", () => {
    const before =
      "machine a.org password x\nmachine cache.example.org login ci password nxs_old\nmachine z password y\n";
    const merged = mergeNetrc(before, "cache.example.org", "nxs_new");
    assert.equal(
      merged.text,
      "machine a.org password x\nmachine cache.example.org login ci password nxs_new\nmachine z password y\n",
    );
    assert.equal(mergeNetrc(merged.text, "cache.example.org", "nxs_new").changed, false);
    const multiline = "machine cache.example.org\n  password nxs_old\n";
    assert.equal(
      mergeNetrc(multiline, "cache.example.org", "nxs_new").text,
      "machine cache.example.org password nxs_new\n",
    );
  });
});

describe("writeConfigFile", () => {
  it("backs up, replaces atomically, keeps or sets the mode", () => {
    const dir = mkdtempSync(join(tmpdir(), "nixstash-use-"));
    const conf = join(dir, "nix", "nix.conf");
    const first = writeConfigFile(conf, "a = 1\n");
    assert.deepEqual(first, { path: conf, changed: true, backup: undefined });
    assert.equal(statSync(conf).mode & 0o777, 0o644);

    const same = writeConfigFile(conf, "a = 1\n");
    assert.equal(same.changed, false);
    assert.equal(readdirSync(join(dir, "nix")).length, 1, "no backup when nothing changes");

    const second = writeConfigFile(conf, "a = 1\nb = 2\n", { now: new Date("2025-01-02T03:04:05Z") });
    assert.equal(second.backup, `${conf}.nixstash-backup-2025-01-02T03-04-05-000Z`);
    assert.equal(readFileSync(second.backup!, "utf8"), "a = 1\n");
    assert.equal(readFileSync(conf, "utf8"), "a = 1\nb = 2\n");
    assert.deepEqual(readdirSync(join(dir, "nix")).sort(), [
      "nix.conf",
      "nix.conf.nixstash-backup-2025-01-02T03-04-05-000Z",
    ]);

    const netrc = join(dir, "nix", "netrc");
    writeFileSync(netrc, "machine a password b\n", { mode: 0o644 });
    writeConfigFile(netrc, "machine a password c\n", { mode: 0o600 });
    assert.equal(statSync(netrc).mode & 0o777, 0o600);
  });

  it("refuses to replace a symbolic link (a file NixOS or home-manager manages)", () => {
    const dir = mkdtempSync(join(tmpdir(), "nixstash-use-"));
    writeFileSync(join(dir, "target"), "x\n");
    symlinkSync(join(dir, "target"), join(dir, "nix.conf"));
    assert.throws(() => writeConfigFile(join(dir, "nix.conf"), "y\n"), /symbolic link/);
    assert.equal(readFileSync(join(dir, "target"), "utf8"), "x\n");
    assert.ok(!existsSync(join(dir, "nix.conf.nixstash-backup")));
  });
});

describe("defaultConfPaths", () => {
  it("is the system config for root and the user config otherwise", () => {
    assert.deepEqual(defaultConfPaths({}, 0), { nixConf: "/etc/nix/nix.conf", netrc: "/etc/nix/netrc" });
    assert.deepEqual(defaultConfPaths({ HOME: "/home/u" }, 1000), {
      nixConf: "/home/u/.config/nix/nix.conf",
      netrc: "/home/u/.config/nix/netrc",
    });
    assert.equal(
      defaultConfPaths({ HOME: "/home/u", XDG_CONFIG_HOME: "/x" }, 1000).nixConf,
      "/x/nix/nix.conf",
    );
  });
});
