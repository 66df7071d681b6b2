// The one conformance suite every storage driver must pass (the unstorage `test/drivers/utils.ts` pattern):
// a driver's test file calls storageConformance() with a factory for a fresh, empty store, and gets the whole
// contract of server/storage/storage.ts checked on the real backend: round trips from empty to multi-MiB,
// overwrite, stat, absence, idempotent delete, ranges, prefix listing, atomicity when a body fails, is aborted
// or has the wrong size, key validation, bounded memory for a ~300 MiB body of unknown size, concurrency and
// presigned URLs. The test data is random (or pseudo-random, generated on the fly) and compared by sha256.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { INLINE_MAX } from "../../server/storage/inline.ts";
import { type Storage, StorageError, type StoredObject } from "../../server/storage/storage.ts";

export interface StorageUnderTest {
  storage: Storage;
  cleanup(): Promise<void>;
  /**
   * What failed uploads may have left outside the key space (temp files, incomplete multipart uploads),
   * as descriptions; must be empty after every failed put.
   */
  debris?(): Promise<string[]>;
  /**
   * presignGet answers null ("serve it from here") for an object not read yet: its first whole read goes
   * through the driver, which keeps a copy (server/storage/disk-cache.ts).
   */
  readsThroughFirst?: boolean;
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** A body made of these chunks, with back-pressure (one chunk per read). */
function bodyOf(bytes: Buffer, chunkSize = 64 * KiB): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= bytes.length) {
        this.push(null);
        return;
      }
      this.push(bytes.subarray(offset, offset + chunkSize));
      offset += chunkSize;
    },
  });
}

/** A body that sends `good` bytes and then fails with an error, as a dropped upload connection would. */
function failingBody(good: number, chunkSize = 64 * KiB): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= good) {
        setImmediate(() => this.destroy(new Error("connection reset by the test")));
        return;
      }
      const n = Math.min(chunkSize, good - sent);
      sent += n;
      this.push(randomBytes(n));
    },
  });
}

/** A body that never ends (until destroyed): data, then silence. */
function stallingBody(first: number): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (!sent) {
        sent = true;
        this.push(randomBytes(first));
      }
    },
  });
}

/**
 * `total` pseudo-random bytes generated on the fly (64 KiB slices of one random MiB at pseudo-random offsets,
 * so the content is not periodic), hashed as they are produced: cheap, and the memory they cost is ours to see.
 */
function generatedBody(total: number): { body: Readable; sha256: () => string } {
  const block = randomBytes(MiB);
  const chunk = 64 * KiB;
  const hash = createHash("sha256");
  let produced = 0;
  let state = 0x9e3779b9;
  const body = new Readable({
    read() {
      if (produced >= total) {
        this.push(null);
        return;
      }
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      const offset = (state >>> 0) % (block.length - chunk);
      const n = Math.min(chunk, total - produced);
      const bytes = block.subarray(offset, offset + n);
      hash.update(bytes);
      produced += n;
      this.push(bytes);
    },
  });
  return { body, sha256: () => hash.digest("hex") };
}

async function readAll(stream: Readable | null): Promise<Buffer> {
  assert.ok(stream, "expected an object, got null");
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

async function hashOf(stream: Readable | null): Promise<{ sha256: string; size: number }> {
  assert.ok(stream, "expected an object, got null");
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Uint8Array);
    size += (chunk as Uint8Array).length;
  }
  return { sha256: hash.digest("hex"), size };
}

const sha256 = (bytes: Buffer): string => createHash("sha256").update(bytes).digest("hex");

async function collect(objects: AsyncIterable<StoredObject>): Promise<StoredObject[]> {
  const all: StoredObject[] = [];
  for await (const object of objects) all.push(object);
  return all.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

async function keysOf(storage: Storage, prefix: string): Promise<string[]> {
  return (await collect(storage.list(prefix))).map((o) => o.key);
}

/** Samples this process's RSS every few milliseconds while `work` runs; returns the growth over the start. */
async function rssGrowth<T>(work: () => Promise<T>): Promise<{ result: T; growth: number; start: number }> {
  const start = process.memoryUsage().rss;
  let peak = start;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 10);
  try {
    const result = await work();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { result, growth: peak - start, start };
  } finally {
    clearInterval(timer);
  }
}

const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

export function storageConformance(name: string, make: () => Promise<StorageUnderTest>): void {
  describe(`storage conformance: ${name}`, () => {
    let under: StorageUnderTest;
    let storage: Storage;
    let counter = 0;
    /** A key prefix no other test uses, so tests sharing one store never see each other's objects. */
    const space = (label: string): string => `t${++counter}-${label}/`;

    async function assertNothingAt(key: string, prefix: string): Promise<void> {
      assert.equal(await storage.stat(key), null, `stat(${key}) after a failed put`);
      assert.equal(await storage.get(key), null, `get(${key}) after a failed put`);
      assert.deepEqual(await keysOf(storage, prefix), [], `list(${prefix}) after a failed put`);
      if (under.debris) assert.deepEqual(await under.debris(), [], "debris of the failed put");
    }

    before(async () => {
      under = await make();
      storage = under.storage;
    });
    after(async () => {
      await under?.cleanup();
    });

    it("answers check() when the backend is reachable", async () => {
      await storage.check();
    });

    // First after check(), while this process is small, so that growth shows in its RSS.
    it("streams a ~300 MiB object of unknown size in and out in bounded memory", async () => {
      const key = `${space("big")}key`;
      const total = 300 * MiB + 4321;
      const generated = generatedBody(total);
      const up = await rssGrowth(() => storage.put(key, generated.body));
      assert.equal(up.result.size, total);
      const down = await rssGrowth(async () => hashOf(await storage.get(key)));
      assert.deepEqual(down.result, { sha256: generated.sha256(), size: total });
      process.stderr.write(
        `# ${name}: 300 MiB unknown-size put: RSS +${mib(up.growth)} over ${mib(up.start)}; get: +${mib(down.growth)}\n`,
      );
      assert.ok(up.growth < 150 * MiB, `put grew RSS by ${mib(up.growth)}`);
      assert.ok(down.growth < 150 * MiB, `get grew RSS by ${mib(down.growth)}`);
      await storage.delete(key);
    });

    it("round-trips an empty object", async () => {
      const key = `${space("empty")}empty`;
      assert.deepEqual(await storage.put(key, bodyOf(Buffer.alloc(0))), { size: 0 });
      assert.equal((await readAll(await storage.get(key))).length, 0);
      assert.equal((await storage.stat(key))?.size, 0);
      // and declared as empty
      const declared = `${space("empty")}declared`;
      assert.deepEqual(await storage.put(declared, bodyOf(Buffer.alloc(0)), { size: 0 }), { size: 0 });
      assert.equal((await storage.stat(declared))?.size, 0);
    });

    it("round-trips a small object, with and without a declared size", async () => {
      const prefix = space("small");
      const bytes = Buffer.from("StorePath: /nix/store/abc-hello\n");
      assert.deepEqual(await storage.put(`${prefix}a`, bodyOf(bytes)), { size: bytes.length });
      assert.deepEqual(
        await storage.put(`${prefix}b`, bodyOf(bytes, 3), {
          size: bytes.length,
          contentType: "text/x-nix-narinfo",
        }),
        { size: bytes.length },
      );
      assert.deepEqual(await readAll(await storage.get(`${prefix}a`)), bytes);
      assert.deepEqual(await readAll(await storage.get(`${prefix}b`)), bytes);
    });

    it("round-trips multi-MiB random objects (declared and unknown size)", async () => {
      const prefix = space("multi");
      for (const [label, size, declare] of [
        ["unknown-7MiB", 7 * MiB + 123, false],
        ["declared-7MiB", 7 * MiB + 123, true],
        ["unknown-37MiB", 37 * MiB + 5, false],
        ["declared-37MiB", 37 * MiB + 5, true],
        ["exactly-32MiB", 32 * MiB, false],
      ] as const) {
        const bytes = randomBytes(size);
        const key = `${prefix}${label}`;
        const stored = await storage.put(key, bodyOf(bytes), declare ? { size } : {});
        assert.equal(stored.size, size, label);
        assert.equal((await storage.stat(key))?.size, size, label);
        const back = await hashOf(await storage.get(key));
        assert.deepEqual(back, { sha256: sha256(bytes), size }, label);
      }
    });

    it("accepts a body of string chunks", async () => {
      const key = `${space("strings")}text`;
      await storage.put(key, Readable.from(["Nar", "Info", "🙂"]));
      assert.equal((await readAll(await storage.get(key))).toString(), "NarInfo🙂");
    });

    it("overwrites", async () => {
      const key = `${space("overwrite")}key`;
      await storage.put(key, bodyOf(randomBytes(3 * MiB)));
      const second = Buffer.from("second, shorter");
      await storage.put(key, bodyOf(second));
      assert.deepEqual(await readAll(await storage.get(key)), second);
      assert.equal((await storage.stat(key))?.size, second.length);
      assert.deepEqual(await keysOf(storage, key), [key]);
    });

    it("reads what the last put or delete left, after reads of the object before them", async () => {
      const key = `${space("reread")}key`;
      // What a driver holds in memory, if anything, is the object's bytes as they are now.
      const peekIs = (expected: Buffer | undefined) => {
        const held = storage.peek(key);
        assert.ok(
          held === undefined || (expected !== undefined && held.equals(expected)),
          "peek: stale bytes",
        );
      };
      const first = randomBytes(3000);
      await storage.put(key, bodyOf(first), { size: first.length });
      peekIs(first);
      for (let i = 0; i < 2; i++) assert.deepEqual(await readAll(await storage.get(key)), first);
      peekIs(first);
      // Small and declared, as most NARs are put.
      const second = randomBytes(3000);
      await storage.put(key, bodyOf(second), { size: second.length });
      peekIs(second);
      assert.deepEqual(await readAll(await storage.get(key)), second);
      assert.deepEqual(
        await readAll(await storage.get(key, { start: 10, end: 19 })),
        second.subarray(10, 20),
      );
      // Streamed, its length unknown beforehand.
      const third = randomBytes(500);
      await storage.put(key, bodyOf(third));
      peekIs(third);
      assert.deepEqual(await readAll(await storage.get(key)), third);
      assert.deepEqual(await readAll(await storage.get(key, { start: 490 })), third.subarray(490));
      assert.deepEqual(await readAll(await storage.get(key, { start: 500 })), Buffer.alloc(0));
      await storage.delete(key);
      peekIs(undefined);
      assert.equal(await storage.get(key), null);
      assert.equal(await storage.stat(key), null);
    });

    it("stats size and modification time", async () => {
      const key = `${space("stat")}key`;
      const before = Date.now();
      await storage.put(key, bodyOf(randomBytes(1000)));
      const info = await storage.stat(key);
      assert.ok(info);
      assert.equal(info.size, 1000);
      assert.ok(info.modified instanceof Date);
      // S3 times have a resolution of a second; allow for clocks of different machines.
      assert.ok(
        Math.abs(info.modified.getTime() - before) < 5 * 60_000,
        `modified ${info.modified.toISOString()}`,
      );
    });

    it("has nothing at an absent key", async () => {
      const prefix = space("absent");
      assert.equal(await storage.get(`${prefix}nothing`), null);
      assert.equal(await storage.get(`${prefix}nothing`, { start: 0, end: 9 }), null);
      assert.equal(await storage.stat(`${prefix}nothing`), null);
      assert.deepEqual(await keysOf(storage, prefix), []);
      // a "directory" of other keys is not an object either
      await storage.put(`${prefix}dir/file`, bodyOf(Buffer.from("x")));
      assert.equal(await storage.get(`${prefix}dir`), null);
      assert.equal(await storage.stat(`${prefix}dir`), null);
    });

    it("deletes idempotently", async () => {
      const prefix = space("delete");
      const key = `${prefix}key`;
      await storage.delete(key); // never existed
      await storage.put(key, bodyOf(Buffer.from("bye")));
      await storage.put(`${prefix}keep`, bodyOf(Buffer.from("stay")));
      await storage.delete(key);
      await storage.delete(key);
      assert.equal(await storage.get(key), null);
      assert.equal(await storage.stat(key), null);
      assert.deepEqual(await keysOf(storage, prefix), [`${prefix}keep`]);
      await storage.delete(`${prefix}dir-that-is-not/there`);
    });

    it("serves byte ranges", async () => {
      const key = `${space("range")}key`;
      const bytes = randomBytes(1000);
      await storage.put(key, bodyOf(bytes, 100));
      const range = async (start: number, end?: number) =>
        readAll(await storage.get(key, end === undefined ? { start } : { start, end }));
      assert.deepEqual(await range(0), bytes, "start 0");
      assert.deepEqual(await range(10), bytes.subarray(10), "start only");
      assert.deepEqual(await range(10, 19), bytes.subarray(10, 20), "start and end");
      assert.deepEqual(await range(0, 0), bytes.subarray(0, 1), "first byte");
      assert.deepEqual(await range(999, 999), bytes.subarray(999), "last byte");
      assert.deepEqual(await range(999), bytes.subarray(999), "last byte, open end");
      assert.deepEqual(await range(990, 5000), bytes.subarray(990), "end past the object is clamped");
      assert.equal((await range(1000)).length, 0, "start at the end: empty");
      assert.equal((await range(4000, 5000)).length, 0, "start past the end: empty");
      for (const bad of [{ start: -1 }, { start: 5, end: 4 }, { start: 1.5 }, { start: Number.NaN }]) {
        await assert.rejects(storage.get(key, bad), StorageError, JSON.stringify(bad));
      }
    });

    it("serves ranges of a multi-part object", async () => {
      const key = `${space("range-big")}key`;
      const bytes = randomBytes(40 * MiB);
      await storage.put(key, bodyOf(bytes));
      const start = 16 * MiB - 10;
      const end = 32 * MiB + 10;
      const back = await readAll(await storage.get(key, { start, end }));
      assert.equal(sha256(back), sha256(bytes.subarray(start, end + 1)));
    });

    it("lists by prefix, nested keys included, only that prefix", async () => {
      const p = space("list");
      const keys = [`${p}a/1`, `${p}a/2`, `${p}a/b/3`, `${p}a/b/c/4`, `${p}ab`, `${p}b/5`, `${p}a-z`];
      for (const [i, key] of keys.entries()) await storage.put(key, bodyOf(Buffer.alloc(i + 1, i)));
      await storage.put(`${space("list-other")}a/1`, bodyOf(Buffer.from("other")));

      const all = await collect(storage.list(p));
      assert.deepEqual(
        all.map((o) => o.key),
        [...keys].sort(),
      );
      for (const object of all) {
        assert.equal(object.size, keys.indexOf(object.key) + 1, object.key);
        assert.ok(object.modified instanceof Date && !Number.isNaN(object.modified.getTime()), object.key);
      }
      assert.deepEqual(await keysOf(storage, `${p}a/`), [`${p}a/1`, `${p}a/2`, `${p}a/b/3`, `${p}a/b/c/4`]);
      assert.deepEqual(await keysOf(storage, `${p}a/b/`), [`${p}a/b/3`, `${p}a/b/c/4`]);
      assert.deepEqual(await keysOf(storage, `${p}a`), [
        `${p}a-z`,
        `${p}a/1`,
        `${p}a/2`,
        `${p}a/b/3`,
        `${p}a/b/c/4`,
        `${p}ab`,
      ]);
      assert.deepEqual(await keysOf(storage, `${p}a/b/c/4`), [`${p}a/b/c/4`]);
      assert.deepEqual(await keysOf(storage, `${p}b/`), [`${p}b/5`]);
      assert.deepEqual(await keysOf(storage, `${p}nothing/`), []);
      assert.deepEqual(await keysOf(storage, `${p}a/x`), []);
      const everything = await keysOf(storage, "");
      for (const key of keys) assert.ok(everything.includes(key), `list("") has ${key}`);
      await assert.rejects(collect(storage.list("../")), StorageError);
      await assert.rejects(collect(storage.list("/abs")), StorageError);
    });

    it("stores nothing when the body fails midway (small and multi-part)", async () => {
      for (const good of [100 * KiB, 40 * MiB]) {
        const prefix = space(`failing-${good}`);
        const key = `${prefix}key`;
        await assert.rejects(storage.put(key, failingBody(good)), StorageError, `after ${good} bytes`);
        await assertNothingAt(key, prefix);
      }
    });

    it("takes a size hint as a hint: any length stores intact, a failure or abort stores nothing", async () => {
      // A driver may choose its way of writing by the hint (local storage writes small bodies in one go);
      // a hint that proves short or long changes nothing in what is stored.
      for (const [label, hint, actual] of [
        ["small-as-hinted", 4 * KiB, 3 * KiB],
        ["hinted-small-but-long", 4 * KiB, 3 * MiB + 17],
        ["hinted-small-in-many-chunks", 300 * KiB, 200 * KiB],
        ["hinted-large-but-small", 64 * MiB, 10],
      ] as const) {
        const key = `${space(`hint-${label}`)}key`;
        const bytes = randomBytes(actual);
        const chunks = Array.from({ length: Math.ceil(actual / (7 * KiB)) }, (_, i) =>
          bytes.subarray(i * 7 * KiB, (i + 1) * 7 * KiB),
        );
        assert.deepEqual(
          await storage.put(key, Readable.from(chunks), { sizeHint: hint }),
          { size: actual },
          label,
        );
        assert.equal((await hashOf(await storage.get(key))).sha256, sha256(bytes), label);
      }
      const failing = space("hint-failing");
      await assert.rejects(
        storage.put(`${failing}key`, failingBody(10 * KiB), { sizeHint: 20 * KiB }),
        StorageError,
      );
      await assertNothingAt(`${failing}key`, failing);
      const aborted = space("hint-aborted");
      const controller = new AbortController();
      const pending = storage.put(`${aborted}key`, stallingBody(100 * KiB), {
        sizeHint: 200 * KiB,
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(new Error("client went away")), 200);
      await assert.rejects(pending, StorageError);
      await assertNothingAt(`${aborted}key`, aborted);
    });

    it("keeps the previous object when an overwrite fails", async () => {
      const prefix = space("failing-overwrite");
      const key = `${prefix}key`;
      const original = randomBytes(2000);
      await storage.put(key, bodyOf(original));
      await assert.rejects(storage.put(key, failingBody(20 * MiB)), StorageError);
      assert.deepEqual(await readAll(await storage.get(key)), original);
      if (under.debris) assert.deepEqual(await under.debris(), []);
    });

    it("stores nothing when the declared size does not match the body", async () => {
      const cases: Array<[string, number, number]> = [
        ["short-small", 1000, 900],
        ["long-small", 1000, 1100],
        ["short-multipart", 40 * MiB, 40 * MiB - 1],
        ["long-multipart", 20 * MiB, 40 * MiB],
        ["declared-empty", 0, 10],
      ];
      for (const [label, declared, actual] of cases) {
        const prefix = space(`size-${label}`);
        const key = `${prefix}key`;
        await assert.rejects(
          storage.put(key, bodyOf(randomBytes(actual)), { size: declared }),
          (err: unknown) => err instanceof StorageError && /size/.test(err.message),
          label,
        );
        await assertNothingAt(key, prefix);
      }
      await assert.rejects(
        storage.put(`${space("size-bad")}key`, bodyOf(Buffer.alloc(1)), { size: -1 }),
        StorageError,
      );
    });

    it("stores nothing when the caller aborts", async () => {
      const prefix = space("abort");
      const key = `${prefix}key`;
      const controller = new AbortController();
      const pending = storage.put(key, stallingBody(20 * MiB), { signal: controller.signal });
      setTimeout(() => controller.abort(new Error("client went away")), 300);
      await assert.rejects(pending, StorageError);
      await assertNothingAt(key, prefix);
      // an already aborted signal fails at once
      await assert.rejects(
        storage.put(key, bodyOf(Buffer.from("x")), { signal: AbortSignal.abort() }),
        StorageError,
      );
      await assertNothingAt(key, prefix);
    });

    it("rejects bad keys on every operation", async () => {
      const bad = [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "..",
        "../up",
        "a/../b",
        "a/./b",
        ".",
        "back\\slash",
        "nul\u0000byte",
        "new\nline",
        ".tmp/x",
        "x".repeat(1025),
      ];
      for (const key of bad) {
        const label = JSON.stringify(key.slice(0, 20));
        await assert.rejects(storage.put(key, bodyOf(Buffer.from("x"))), StorageError, `put ${label}`);
        await assert.rejects(storage.get(key), StorageError, `get ${label}`);
        await assert.rejects(storage.stat(key), StorageError, `stat ${label}`);
        await assert.rejects(storage.delete(key), StorageError, `delete ${label}`);
        await assert.rejects(storage.presignGet(key, 60), StorageError, `presignGet ${label}`);
      }
      // and the error names the operation and the key
      await assert.rejects(storage.get("a//b"), /get "a\/\/b".*empty segment/);
      // keys that look odd but are fine
      const prefix = space("odd");
      for (const key of [`${prefix}.hidden`, `${prefix}a..b`, `${prefix}sp ace+plus=eq%pc`, `${prefix}ünï`]) {
        await storage.put(key, bodyOf(Buffer.from(key)));
        assert.equal((await readAll(await storage.get(key))).toString(), key);
      }
      assert.equal((await keysOf(storage, prefix)).length, 4);
    });

    it("handles concurrent puts to different keys", async () => {
      const prefix = space("concurrent");
      const objects = Array.from({ length: 8 }, (_, i) => ({
        key: `${prefix}k${i}`,
        bytes: randomBytes(i % 2 === 0 ? 1000 * (i + 1) : (i + 1) * MiB + i),
      }));
      const results = await Promise.all(objects.map((o) => storage.put(o.key, bodyOf(o.bytes))));
      assert.deepEqual(
        results.map((r) => r.size),
        objects.map((o) => o.bytes.length),
      );
      for (const o of objects)
        assert.equal(sha256(await readAll(await storage.get(o.key))), sha256(o.bytes), o.key);
      assert.equal((await keysOf(storage, prefix)).length, objects.length);
    });

    it("presigns GET URLs when it can redirect", async () => {
      const key = `${space("presign")}some key+odd`;
      // Past what any driver keeps in the database instead (server/storage/inline.ts: a row has no URL).
      const bytes = randomBytes(INLINE_MAX + 5000);
      await storage.put(key, bodyOf(bytes));
      const url = await storage.presignGet(key, 300);
      if (storage.kind === "local") {
        assert.equal(url, null);
        return;
      }
      if (under.readsThroughFirst) {
        assert.equal(url, null, "not read yet: served through the driver");
        assert.equal(sha256(await readAll(await storage.get(key))), sha256(bytes));
        return;
      }
      assert.ok(url, "an S3 driver presigns");
      const response = await fetch(url);
      assert.equal(response.status, 200);
      assert.deepEqual(Buffer.from(await response.arrayBuffer()), bytes);

      const ranged = await fetch(url, { headers: { Range: "bytes=10-19" } });
      assert.equal(ranged.status, 206);
      assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), bytes.subarray(10, 20));

      const tampered = new URL(url);
      const signature = tampered.searchParams.get("X-Amz-Signature") ?? "";
      assert.ok(signature.length > 0, "the URL carries a signature");
      tampered.searchParams.set(
        "X-Amz-Signature",
        `${signature.slice(0, -1)}${signature.endsWith("0") ? "1" : "0"}`,
      );
      assert.equal((await fetch(tampered)).status, 403, "tampered signature refused");
      const otherKey = new URL(url);
      otherKey.pathname = `${otherKey.pathname}x`;
      assert.equal((await fetch(otherKey)).status, 403, "signature for another key refused");
      const longer = new URL(url);
      longer.searchParams.set("X-Amz-Expires", "600");
      assert.equal((await fetch(longer)).status, 403, "extended expiry refused");
      await assert.rejects(storage.presignGet(key, 0), StorageError);
    });
  });
}
