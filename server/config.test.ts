import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError, parseConfig } from "./config.ts";

describe("configuration", () => {
  it("defaults to the embedded stack: SQLite and a storage directory in the data dir", () => {
    const config = parseConfig({ NIXSTASH_DATA_DIR: "/srv/nixstash" });
    assert.deepEqual(config.listen, { host: "127.0.0.1", port: 8080 });
    assert.equal(config.databaseUrl, "sqlite:/srv/nixstash/nixstash.db");
    assert.deepEqual(config.storage, { kind: "local", root: "/srv/nixstash/storage" });
    assert.equal(config.defaultCache, "main");
    assert.equal(config.publicUrl, undefined);
  });

  it("reads PostgreSQL and S3 settings", () => {
    const config = parseConfig({
      NIXSTASH_LISTEN: "0.0.0.0:9000",
      NIXSTASH_PUBLIC_URL: "https://cache.example.org/",
      NIXSTASH_DATABASE_URL: "postgres://u:p@db/nixstash",
      NIXSTASH_STORAGE: "s3://nix-cache/prod",
      NIXSTASH_S3_ENDPOINT: "http://127.0.0.1:7480",
      NIXSTASH_S3_ACCESS_KEY: "a",
      NIXSTASH_S3_SECRET_KEY: "s",
      NIXSTASH_S3_REDIRECT: "false",
      NIXSTASH_S3_MEMORY_MB: "0.5",
      NIXSTASH_S3_INLINE_KB: "16",
      NIXSTASH_S3_DISK_CACHE: "/var/cache/nixstash",
      NIXSTASH_S3_DISK_CACHE_GB: "2.5",
    });
    assert.deepEqual(config.listen, { host: "0.0.0.0", port: 9000 });
    assert.equal(config.publicUrl, "https://cache.example.org");
    assert.equal(config.databaseUrl, "postgres://u:p@db/nixstash");
    assert.deepEqual(config.storage, {
      kind: "s3",
      bucket: "nix-cache",
      prefix: "prod",
      endPoint: "http://127.0.0.1:7480",
      region: "us-east-1",
      accessKey: "a",
      secretKey: "s",
      pathStyle: true,
      redirect: false,
      memoryBytes: 512 * 1024,
      inlineBytes: 16 * 1024,
      diskCache: { root: "/var/cache/nixstash", limitBytes: 2.5 * 1024 ** 3 },
    });
    const plain = parseConfig({
      NIXSTASH_STORAGE: "s3://nix-cache",
      NIXSTASH_S3_ACCESS_KEY: "a",
      NIXSTASH_S3_SECRET_KEY: "s",
    });
    assert.equal(
      plain.storage.kind === "s3" && plain.storage.diskCache,
      undefined,
      "no disk cache unless asked",
    );
    assert.equal(
      plain.storage.kind === "s3" && plain.storage.inlineBytes,
      64 * 1024,
      "64 KiB inline by default",
    );
  });

  it("treats empty values as unset", () => {
    assert.equal(
      parseConfig({ NIXSTASH_DATABASE_URL: "", NIXSTASH_DATA_DIR: "/d" }).databaseUrl,
      "sqlite:/d/nixstash.db",
    );
  });

  const bad: [Record<string, string>, RegExp][] = [
    [{ NIXSTASH_LISTEN: "8080" }, /NIXSTASH_LISTEN="8080": expected host:port/],
    [{ NIXSTASH_LISTEN: "127.0.0.1:99999" }, /NIXSTASH_LISTEN/],
    [{ NIXSTASH_DATABASE_URL: "mysql://x" }, /NIXSTASH_DATABASE_URL="mysql:\/\/x"/],
    [{ NIXSTASH_STORAGE: "gs://bucket" }, /NIXSTASH_STORAGE/],
    [{ NIXSTASH_STORAGE: "s3://b" }, /NIXSTASH_STORAGE=.*bad bucket name|NIXSTASH_S3_ACCESS_KEY/],
    [{ NIXSTASH_STORAGE: "s3://bucket" }, /NIXSTASH_S3_ACCESS_KEY: required/],
    [{ NIXSTASH_S3_REDIRECT: "maybe" }, /NIXSTASH_S3_REDIRECT="maybe": expected true or false/],
    [{ NIXSTASH_ZSTD_LEVEL: "40" }, /NIXSTASH_ZSTD_LEVEL/],
    [{ NIXSTASH_S3_MEMORY_MB: "-1" }, /NIXSTASH_S3_MEMORY_MB/],
    [{ NIXSTASH_S3_MEMORY_MB: "lots" }, /NIXSTASH_S3_MEMORY_MB/],
    [{ NIXSTASH_S3_DISK_CACHE_GB: "0" }, /NIXSTASH_S3_DISK_CACHE_GB/],
    [{ NIXSTASH_S3_INLINE_KB: "2048" }, /NIXSTASH_S3_INLINE_KB/],
    [{ NIXSTASH_S3_INLINE_KB: "1.5" }, /NIXSTASH_S3_INLINE_KB/],
    [{ NIXSTASH_S3_DISK_CACHE: "/c" }, /NIXSTASH_S3_DISK_CACHE="\/c": only with NIXSTASH_STORAGE=s3/],
    [{ NIXSTASH_SECRET: "short" }, /NIXSTASH_SECRET.*at least 32/],
    [{ NIXSTASH_DEFAULT_CACHE: "Bad Name" }, /NIXSTASH_DEFAULT_CACHE/],
    [{ NIXSTASH_LOG_LEVEL: "loud" }, /NIXSTASH_LOG_LEVEL/],
  ];
  for (const [env, message] of bad) {
    it(`refuses ${JSON.stringify(env)} naming the variable`, () => {
      assert.throws(
        () => parseConfig(env),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
      );
    });
  }
});
