// The local-directory driver: the conformance suite on a fresh temporary directory, plus what only a
// directory has (temp files under .tmp/, keys that collide with directories, an unusable root).
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
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

describe("local storage specifics", () => {
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
