// The local-directory driver: the conformance suite on a fresh temporary directory, plus what only a
// directory has (temp files under .tmp/, keys that collide with directories, an unusable root).
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { describe, it } from "node:test";
import { createLocalStorage } from "../../server/storage/local.ts";
import { StorageError } from "../../server/storage/storage.ts";
import { testTmp } from "../support/services.ts";
import { storageConformance } from "./conformance.ts";

async function tempRoot(): Promise<string> {
  return mkdtemp(join(testTmp(), "storage-local-"));
}

async function readBytes(stream: Readable | null): Promise<Buffer> {
  assert.ok(stream, "expected the object to be there");
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function tmpFiles(root: string): Promise<string[]> {
  return readdir(join(root, ".tmp")).catch(() => []);
}

storageConformance("local", async () => {
  const root = await tempRoot();
  return {
    storage: createLocalStorage({ root: join(root, "objects") }),
    cleanup: () => rm(root, { recursive: true, force: true }),
    debris: async () => (await tmpFiles(join(root, "objects"))).map((f) => `.tmp/${f}`),
  };
});

/** Changes a file's bytes behind the driver's back (as nothing in nixstash does: keys are never rewritten). */
async function scribble(file: string, bytes: Buffer): Promise<void> {
  assert.equal(bytes.length, (await stat(file)).size);
  await writeFile(file, bytes);
}

describe("local storage specifics", () => {
  it("answers a small object it has read from memory, get and peek alike, until its own put or delete", async () => {
    const dir = await tempRoot();
    const storage = createLocalStorage({ root: dir });
    const first = Buffer.alloc(1000, 1);
    await storage.put("k", Readable.from([first]));
    assert.equal(storage.keepsUpTo, 64 * 1024);
    assert.equal(storage.peek("k"), undefined, "kept by a read, not by the put");
    assert.deepEqual(await readBytes(await storage.get("k")), first);
    assert.deepEqual(storage.peek("k"), first);
    // Trusted without looking at the file (which is how this test can see where the bytes came from).
    await scribble(join(dir, "k"), Buffer.alloc(1000, 2));
    assert.deepEqual(await readBytes(await storage.get("k")), first);
    assert.deepEqual(await readBytes(await storage.get("k", { start: 998 })), first.subarray(998));
    // Its own put and delete forget the key.
    const second = Buffer.alloc(1000, 3);
    await storage.put("k", Readable.from([second]));
    assert.equal(storage.peek("k"), undefined);
    assert.deepEqual(await readBytes(await storage.get("k")), second);
    await storage.delete("k");
    assert.equal(storage.peek("k"), undefined);
    assert.equal(await storage.get("k"), null);
    // Objects over 64 KiB are never kept: each read opens the file.
    const big = Buffer.alloc(65 * 1024, 5);
    await storage.put("big", Readable.from([big]));
    assert.deepEqual(await readBytes(await storage.get("big")), big);
    assert.equal(storage.peek("big"), undefined);
    await scribble(join(dir, "big"), Buffer.alloc(65 * 1024, 6));
    assert.deepEqual(await readBytes(await storage.get("big")), Buffer.alloc(65 * 1024, 6));
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the small objects read most recently within its memory limit", async () => {
    const dir = await tempRoot();
    // Room for three 1000-byte objects with what each entry costs besides its bytes.
    const storage = createLocalStorage({ root: dir, recentBytes: 3 * 1300 });
    const bytesOf = (i: number) => Buffer.alloc(1000, i);
    for (const i of [1, 2, 3, 4]) await storage.put(`k${i}`, Readable.from([bytesOf(i)]));
    for (const i of [1, 2, 3]) await readBytes(await storage.get(`k${i}`));
    await readBytes(await storage.get("k1")); // k1 is the newest now, k2 the oldest
    await readBytes(await storage.get("k4")); // one too many: k2 goes
    for (const i of [1, 2, 3, 4]) await scribble(join(dir, `k${i}`), bytesOf(10 + i));
    // The kept ones first: reading k2 again keeps it, and makes room for it.
    for (const i of [1, 3, 4])
      assert.deepEqual(await readBytes(await storage.get(`k${i}`)), bytesOf(i), `k${i}`);
    assert.deepEqual(await readBytes(await storage.get("k2")), bytesOf(12));
    // None at all with a limit of 0.
    const none = createLocalStorage({ root: dir, recentBytes: 0 });
    assert.equal(none.keepsUpTo, 0);
    await readBytes(await none.get("k1"));
    assert.equal(none.peek("k1"), undefined);
    await scribble(join(dir, "k1"), bytesOf(21));
    assert.deepEqual(await readBytes(await none.get("k1")), bytesOf(21));
    await rm(dir, { recursive: true, force: true });
  });

  it("creates the root on check() and keeps temp files out of list()", async () => {
    const dir = await tempRoot();
    const root = join(dir, "not", "yet");
    const storage = createLocalStorage({ root });
    await storage.check();
    await storage.put("nar/a", Readable.from([Buffer.from("a")]));
    await writeFile(join(root, ".tmp", "left-by-a-crash.part"), "debris");
    const keys: string[] = [];
    for await (const o of storage.list("")) keys.push(o.key);
    assert.deepEqual(keys, ["nar/a"]);
    await rm(dir, { recursive: true, force: true });
  });

  it("makes its directories again when they were removed behind its back", async () => {
    const dir = await tempRoot();
    const storage = createLocalStorage({ root: dir });
    await storage.put("nar/a", Readable.from([Buffer.from("a")]));
    await rm(join(dir, ".tmp"), { recursive: true });
    await rm(join(dir, "nar"), { recursive: true });
    await storage.put("nar/b", Readable.from([Buffer.from("bb")]));
    await storage.put("deep/er/c", Readable.from([Buffer.from("ccc")]));
    assert.equal((await storage.stat("nar/b"))?.size, 2);
    assert.equal((await storage.stat("deep/er/c"))?.size, 3);
    assert.equal(await storage.stat("nar/a"), null);
    assert.deepEqual(await tmpFiles(dir), []);
    await rm(dir, { recursive: true, force: true });
  });

  it("fails cleanly when a key needs a path that another key occupies", async () => {
    const dir = await tempRoot();
    const storage = createLocalStorage({ root: dir });
    await storage.put("a/b", Readable.from([Buffer.from("file")]));
    await assert.rejects(storage.put("a/b/c", Readable.from([Buffer.from("under a file")])), StorageError);
    await assert.rejects(storage.put("a", Readable.from([Buffer.from("over a directory")])), StorageError);
    assert.deepEqual(await tmpFiles(dir), []);
    assert.equal((await storage.stat("a/b"))?.size, 4);
    await rm(dir, { recursive: true, force: true });
  });

  it("destroys the caller's body when a put fails, its size hint short or not", async () => {
    const dir = await tempRoot();
    await writeFile(join(dir, ".tmp"), "a file where the temp directory belongs");
    const storage = createLocalStorage({ root: dir });
    for (const sizeHint of [undefined, 1000]) {
      const body = new PassThrough();
      body.write(Buffer.alloc(300 * 1024));
      body.write(Buffer.alloc(10));
      await assert.rejects(
        storage.put("nar/a", body, sizeHint === undefined ? {} : { sizeHint }),
        StorageError,
      );
      await new Promise((resolve) => setImmediate(resolve));
      assert.ok(body.destroyed, `hint ${sizeHint}`);
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("check() fails when the root is not a usable directory", async () => {
    const dir = await tempRoot();
    await writeFile(join(dir, "file"), "x");
    await assert.rejects(createLocalStorage({ root: join(dir, "file") }).check(), StorageError);
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps a stream that is being read intact across an overwrite and a delete", async () => {
    const dir = await tempRoot();
    const storage = createLocalStorage({ root: dir });
    const first = Buffer.alloc(4 * 1024 * 1024, 1);
    await storage.put("k", Readable.from([first]));
    const reading = await storage.get("k");
    await storage.put("k", Readable.from([Buffer.from("new")]));
    await storage.delete("k");
    const chunks: Buffer[] = [];
    for await (const chunk of reading!) chunks.push(chunk as Buffer);
    assert.ok(Buffer.concat(chunks).equals(first));
    await rm(dir, { recursive: true, force: true });
  });
});
