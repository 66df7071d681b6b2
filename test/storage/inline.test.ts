// Small objects kept in the database (server/storage/inline.ts): the conformance suite over a local directory
// with SQLite rows (the S3 with PostgreSQL rows run is in s3.test.ts), and where each object goes: up to
// maxBytes a row and nothing underneath, past it underneath and no row, through overwrites both ways.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { withInlineObjects } from "../../server/storage/inline.ts";
import { createLocalStorage } from "../../server/storage/local.ts";
import { type Storage, StorageError } from "../../server/storage/storage.ts";
import { testTmp } from "../support/services.ts";
import { storageConformance } from "./conformance.ts";

async function readBytes(stream: Readable | null): Promise<Buffer> {
  assert.ok(stream, "expected the object to be there");
  return Buffer.concat((await stream.toArray()) as Buffer[]);
}

async function keys(storage: Storage, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const object of storage.list(prefix)) found.push(object.key);
  return found.sort();
}

async function inlineOverLocal(maxBytes: number) {
  const root = await mkdtemp(join(testTmp(), "storage-inline-"));
  const database = await openDatabase(`sqlite:${join(root, "db.sqlite")}`);
  const repo = createRepo(database);
  const under = createLocalStorage({ root: join(root, "objects"), recentBytes: 0 });
  const storage = withInlineObjects(under, { rows: repo.inlineObjects, maxBytes, recentBytes: 1024 * 1024 });
  return {
    root,
    database,
    rows: repo.inlineObjects,
    under,
    storage,
    cleanup: async () => {
      await database.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

storageConformance("inline rows (SQLite) over local", async () => {
  const made = await inlineOverLocal(64 * 1024);
  return {
    storage: made.storage,
    cleanup: made.cleanup,
    debris: async () =>
      (await readdir(join(made.root, "objects", ".tmp")).catch(() => [])).map((f) => `.tmp/${f}`),
  };
});

describe("inline objects: where each object goes", () => {
  const MAX = 1000;
  let made: Awaited<ReturnType<typeof inlineOverLocal>>;
  before(async () => {
    made = await inlineOverLocal(MAX);
  });
  after(async () => {
    await made?.cleanup();
  });

  it("keeps a body of up to maxBytes as a row, and a longer one underneath", async () => {
    const small = randomBytes(MAX);
    const big = randomBytes(MAX + 1);
    assert.deepEqual(
      await made.storage.put("nar/small", Readable.from([small.subarray(0, 10), small.subarray(10)])),
      {
        size: MAX,
      },
    );
    assert.deepEqual(await made.storage.put("nar/big", Readable.from([big])), { size: MAX + 1 });
    assert.deepEqual((await made.rows.get("nar/small"))?.bytes, small, "the small one is a row");
    assert.equal(await made.under.stat("nar/small"), null, "and nothing underneath");
    assert.equal(await made.rows.get("nar/big"), undefined, "the big one is no row");
    assert.equal((await made.under.stat("nar/big"))?.size, MAX + 1, "but underneath");
    assert.deepEqual(await readBytes(await made.storage.get("nar/small")), small);
    assert.deepEqual(await readBytes(await made.storage.get("nar/big")), big);
    assert.deepEqual(
      await readBytes(await made.storage.get("nar/small", { start: 990 })),
      small.subarray(990),
    );
    assert.deepEqual(await keys(made.storage, "nar/"), ["nar/big", "nar/small"]);
    assert.equal((await made.storage.stat("nar/small"))?.size, MAX);
    assert.equal(await made.storage.presignGet("nar/small", 60), null, "a row has no URL");
    // A declared size past maxBytes goes underneath at once.
    await made.storage.put("nar/declared", Readable.from([big]), { size: big.length });
    assert.equal(await made.rows.get("nar/declared"), undefined);
    assert.equal((await made.under.stat("nar/declared"))?.size, big.length);
  });

  it("overwrites both ways: the newer object is the only one read, listed and left after a delete", async () => {
    const big = randomBytes(5 * MAX);
    const small = Buffer.from("small now");
    await made.storage.put("log/over", Readable.from([big]));
    await made.storage.put("log/over", Readable.from([small]));
    assert.deepEqual(await readBytes(await made.storage.get("log/over")), small);
    assert.equal((await made.storage.stat("log/over"))?.size, small.length);
    assert.deepEqual(
      await keys(made.storage, "log/"),
      ["log/over"],
      "the older one underneath is not listed",
    );
    const bigAgain = randomBytes(3 * MAX);
    await made.storage.put("log/over", Readable.from([bigAgain]));
    assert.equal(await made.rows.get("log/over"), undefined, "the row went once the big one was stored");
    assert.deepEqual(await readBytes(await made.storage.get("log/over")), bigAgain);
    await made.storage.put("log/over", Readable.from([small]));
    await made.storage.delete("log/over");
    assert.equal(await made.storage.get("log/over"), null);
    assert.equal(await made.under.stat("log/over"), null, "deleted underneath too");
    assert.deepEqual(await keys(made.storage, "log/"), []);
  });

  it("asks the database once about a key it found underneath, and again once the key is written", async () => {
    let asked = 0;
    const rows = made.rows;
    const counting = {
      ...rows,
      get: (key: string) => {
        asked++;
        return rows.get(key);
      },
      stat: (key: string) => {
        asked++;
        return rows.stat(key);
      },
    };
    const storage = withInlineObjects(made.under, {
      rows: counting,
      maxBytes: MAX,
      recentBytes: 1024 * 1024,
    });
    const big = randomBytes(4 * MAX);
    await storage.put("nar/asked", Readable.from([big]));
    for (let i = 0; i < 3; i++) assert.deepEqual(await readBytes(await storage.get("nar/asked")), big);
    await storage.presignGet("nar/asked", 60);
    assert.equal((await storage.stat("nar/asked"))?.size, big.length);
    assert.equal(asked, 1, "one question for three reads, a presign and a stat");
    const small = Buffer.from("now a row");
    await storage.put("nar/asked", Readable.from([small]));
    assert.deepEqual(await readBytes(await storage.get("nar/asked")), small, "the put forgot the key");
    await storage.delete("nar/asked");
    assert.equal(await storage.get("nar/asked"), null);
  });

  it("writes no row for a small body that fails, is aborted, or has another size than declared", async () => {
    const failing = new Readable({
      read() {
        this.push(Buffer.from("some bytes"));
        setImmediate(() => this.destroy(new Error("connection reset by the test")));
      },
    });
    await assert.rejects(made.storage.put("nar/failing", failing), StorageError);
    await assert.rejects(
      made.storage.put("nar/short", Readable.from([Buffer.from("abc")]), { size: 4 }),
      (err: unknown) => err instanceof StorageError && /size/.test(err.message),
    );
    await assert.rejects(
      made.storage.put("nar/aborted", Readable.from([Buffer.from("abc")]), { signal: AbortSignal.abort() }),
      StorageError,
    );
    for (const key of ["nar/failing", "nar/short", "nar/aborted"]) {
      assert.equal(await made.rows.get(key), undefined, key);
      assert.equal(await made.storage.stat(key), null, key);
    }
  });

  it("lists rows past a page, in key order, only under the prefix", async () => {
    const count = 1003;
    for (let i = 0; i < count; i++)
      await made.rows.put(`many/${String(i).padStart(4, "0")}`, Buffer.from([i % 256]));
    await made.rows.put("manyother", Buffer.from("x"));
    const listed = await keys(made.storage, "many/");
    assert.equal(listed.length, count);
    assert.equal(new Set(listed).size, count, "no key twice");
    assert.equal((await keys(made.storage, "many")).length, count + 1, "a prefix is a string prefix");
    const page = await made.rows.page("many/", "many/0999", 10);
    assert.deepEqual(
      page.map((o) => o.key),
      ["many/1000", "many/1001", "many/1002"],
    );
  });
});
