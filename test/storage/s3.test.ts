// The S3 driver against a real S3 server (Ceph RGW, started by test/run.sh): the conformance suite in a
// fresh bucket per run, with the driver's defaults (16 MiB parts), plus what only S3 has: a key prefix,
// small parts with more concurrency, refused credentials, a missing bucket. Incomplete multipart uploads
// count as debris: a failed put must abort its upload.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { access, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { Client } from "minio";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { withDiskCache } from "../../server/storage/disk-cache.ts";
import { withInlineObjects } from "../../server/storage/inline.ts";
import { createS3Storage, type S3StorageOptions } from "../../server/storage/s3.ts";
import { type Storage, StorageError } from "../../server/storage/storage.ts";
import { freshPostgres } from "../support/harness.ts";
import { s3Service, testTmp } from "../support/services.ts";
import { storageConformance } from "./conformance.ts";

const service = s3Service();
const MiB = 1024 * 1024;

function rawClient(endpoint: string, accessKey: string, secretKey: string, region: string): Client {
  const url = new URL(endpoint);
  return new Client({
    endPoint: url.hostname,
    port: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
    useSSL: url.protocol === "https:",
    accessKey,
    secretKey,
    region,
    pathStyle: true,
  });
}

function freshBucketName(): string {
  return `nixstash-test-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
}

async function incompleteUploads(client: Client, bucket: string): Promise<string[]> {
  const found: string[] = [];
  for await (const upload of client.listIncompleteUploads(bucket, "", true)) {
    found.push(`incomplete multipart upload of ${upload.key} (${upload.uploadId})`);
  }
  return found;
}

/** Empties and removes a bucket, incomplete uploads included. */
async function dropBucket(client: Client, bucket: string): Promise<void> {
  if (!(await client.bucketExists(bucket))) return;
  for await (const upload of client.listIncompleteUploads(bucket, "", true)) {
    await client.abortMultipartUpload(bucket, upload.key, upload.uploadId);
  }
  const names: string[] = [];
  for await (const item of client.listObjectsV2(bucket, "", true)) {
    if (item.name) names.push(item.name);
  }
  for (let i = 0; i < names.length; i += 500) await client.removeObjects(bucket, names.slice(i, i + 500));
  await client.removeBucket(bucket);
}

if (!service) {
  describe("s3 storage (Ceph RGW)", () => {
    it("needs NIXSTASH_TEST_S3_ENDPOINT: run through test/run.sh", { skip: "no S3 service" }, () => {});
  });
} else {
  const { endpoint, accessKey, secretKey, region } = service;
  const client = rawClient(endpoint, accessKey, secretKey, region);
  const options = (bucket: string): S3StorageOptions => ({
    endPoint: endpoint,
    accessKey,
    secretKey,
    region,
    bucket,
    pathStyle: true,
    createBucket: true,
  });

  storageConformance("s3", async () => {
    const bucket = freshBucketName();
    const storage = await createS3Storage(options(bucket));
    return {
      storage,
      cleanup: () => dropBucket(client, bucket),
      debris: () => incompleteUploads(client, bucket),
    };
  });

  // What the server runs on S3: small objects in PostgreSQL rows, the rest in the bucket.
  storageConformance("inline rows (PostgreSQL) over s3", async () => {
    const bucket = freshBucketName();
    const postgres = await freshPostgres();
    if (!postgres) throw new Error("needs PostgreSQL (NIXSTASH_TEST_PG_URL): run through test/run.sh");
    const database = await openDatabase(postgres.url);
    const storage = withInlineObjects(await createS3Storage(options(bucket)), {
      rows: createRepo(database).inlineObjects,
      maxBytes: 64 * 1024,
      recentBytes: 16 * MiB,
    });
    return {
      storage,
      cleanup: async () => {
        await database.close();
        await postgres.drop();
        await dropBucket(client, bucket);
      },
      debris: () => incompleteUploads(client, bucket),
    };
  });

  describe("s3 storage specifics", () => {
    const bucket = freshBucketName();
    before(async () => {
      await client.makeBucket(bucket, region);
    });
    after(async () => {
      await dropBucket(client, bucket);
    });

    it("stores keys under the configured prefix and lists them without it", async () => {
      const storage = await createS3Storage({ ...options(bucket), prefix: "cache-one" });
      const other = await createS3Storage({ ...options(bucket), prefix: "cache-two/" });
      await storage.put("nar/a.nar", Readable.from([Buffer.from("one")]));
      await other.put("nar/a.nar", Readable.from([Buffer.from("two")]));
      const names: string[] = [];
      for await (const item of client.listObjectsV2(bucket, "", true)) if (item.name) names.push(item.name);
      assert.deepEqual(names.sort(), ["cache-one/nar/a.nar", "cache-two/nar/a.nar"]);
      const keys: string[] = [];
      for await (const o of storage.list("")) keys.push(o.key);
      assert.deepEqual(keys, ["nar/a.nar"]);
      const stream = await storage.get("nar/a.nar");
      assert.ok(stream);
      assert.equal((await Readable.from(stream).toArray()).join(""), "one");
      const url = await other.presignGet("nar/a.nar", 60);
      assert.ok(url, "presigned");
      assert.ok(url.includes("/cache-two/nar/a.nar"), url);
      assert.equal(await (await fetch(url)).text(), "two");
    });

    it("reuses a presigned URL only while it is still valid for the whole expiry asked", async () => {
      const storage = await createS3Storage(options(bucket));
      await storage.put("nar/reused.nar", Readable.from([Buffer.from("reused")]));
      const first = await storage.presignGet("nar/reused.nar", 3600);
      assert.ok(first);
      // Signed for the expiry plus a reuse window of a tenth (at most 5 minutes).
      assert.equal(new URL(first).searchParams.get("X-Amz-Expires"), "3900");
      assert.equal(await storage.presignGet("nar/reused.nar", 3600), first, "reused within the window");
      assert.equal(await (await fetch(first)).text(), "reused");
      const shorter = await storage.presignGet("nar/reused.nar", 60);
      assert.notEqual(shorter, first, "another expiry is signed on its own");
      assert.equal(new URL(shorter!).searchParams.get("X-Amz-Expires"), "66");
      const other = await storage.presignGet("nar/other.nar", 3600);
      assert.notEqual(other, first);
      // At the longest expiry S3 allows there is no room for a window: signed afresh every time.
      const longest = 7 * 24 * 3600;
      const a = await storage.presignGet("nar/reused.nar", longest);
      assert.equal(new URL(a!).searchParams.get("X-Amz-Expires"), String(longest));
    });

    it("keeps the small objects it wrote or read whole in memory, and answers get and peek from there", async () => {
      const storage = await createS3Storage(options(bucket));
      const text = async (key: string) => {
        const body = await storage.get(key);
        return body ? Buffer.concat(await Readable.from(body).toArray()).toString() : null;
      };
      // Written by this driver, then removed behind its back: still answered (no request to the bucket).
      await storage.put("nar/held.nar", Readable.from([Buffer.from("held "), Buffer.from("bytes")]));
      await client.removeObject(bucket, "nar/held.nar");
      assert.equal(storage.peek("nar/held.nar")?.toString(), "held bytes");
      assert.equal(await text("nar/held.nar"), "held bytes");
      const ranged = await storage.get("nar/held.nar", { start: 5, end: 7 });
      assert.equal(Buffer.concat(await Readable.from(ranged!).toArray()).toString(), "byt");
      // Its own delete forgets it.
      await storage.delete("nar/held.nar");
      assert.equal(storage.peek("nar/held.nar"), undefined);
      assert.equal(await text("nar/held.nar"), null);

      // Written by someone else: kept after the first whole read, not before.
      await client.putObject(bucket, "nar/read.nar", Buffer.from("read once"));
      assert.equal(storage.peek("nar/read.nar"), undefined);
      assert.equal(await text("nar/read.nar"), "read once");
      await client.removeObject(bucket, "nar/read.nar");
      assert.equal(storage.peek("nar/read.nar")?.toString(), "read once");

      // A whole read that a put overtakes keeps nothing: what it read may be older than what the put left.
      await client.putObject(bucket, "nar/raced.nar", Buffer.from("old bytes"));
      const reading = storage.get("nar/raced.nar");
      const writing = storage.put("nar/raced.nar", Readable.from([Buffer.from("new bytes")]));
      await Promise.all([reading.then((b) => b && Readable.from(b).toArray()), writing]);
      assert.equal(storage.peek("nar/raced.nar")?.toString() ?? "new bytes", "new bytes");
      assert.equal(await text("nar/raced.nar"), "new bytes");

      // Past 64 KiB, and with no memory at all: nothing is kept.
      const large = randomBytes(64 * 1024 + 1);
      await storage.put("nar/large.nar", Readable.from([large]));
      assert.equal(storage.peek("nar/large.nar"), undefined);
      const none = await createS3Storage({ ...options(bucket), recentBytes: 0 });
      await none.put("nar/none.nar", Readable.from([Buffer.from("none")]));
      assert.equal(none.peek("nar/none.nar"), undefined);
      assert.equal(
        await none
          .get("nar/none.nar")
          .then((b) => b && Readable.from(b).toArray())
          .then((c) => c && Buffer.concat(c).toString()),
        "none",
      );
      assert.equal(none.peek("nar/none.nar"), undefined, "not kept after a read either");
    });

    it("keeps its memory of small objects within its limit, the least recently used going first", async () => {
      const storage = await createS3Storage({ ...options(bucket), recentBytes: 3 * (1024 + 256) });
      for (const name of ["a", "b", "c"])
        await storage.put(`lru/${name}`, Readable.from([randomBytes(1024)]));
      assert.ok(storage.peek("lru/a"), "a used: now the most recent");
      await storage.put("lru/d", Readable.from([randomBytes(1024)]));
      assert.deepEqual(
        ["a", "b", "c", "d"].map((n) => storage.peek(`lru/${n}`) !== undefined),
        [true, false, true, true],
      );
    });

    it("uploads with small parts and more concurrency, and keeps the content type", async () => {
      const storage = await createS3Storage({ ...options(bucket), partSize: 5 * MiB, concurrency: 4 });
      const bytes = randomBytes(33 * MiB + 7);
      await storage.put("parts/key", Readable.from([bytes.subarray(0, 10 * MiB), bytes.subarray(10 * MiB)]), {
        contentType: "application/x-nix-nar",
      });
      const stat = await client.statObject(bucket, "parts/key");
      assert.equal(stat.size, bytes.length);
      assert.equal(stat.metaData["content-type"], "application/x-nix-nar");
      const back = await Readable.from((await storage.get("parts/key"))!).toArray();
      const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
      assert.equal(hash(Buffer.concat(back)), hash(bytes));
    });

    it("keeps part buffers between puts without mixing up their bytes", async () => {
      const storage = await createS3Storage({ ...options(bucket), partSize: 5 * MiB, concurrency: 2 });
      const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
      // Multipart, whole-in-one-part past SMALL_BODY, and small bodies; three at once, then one after another,
      // so that buffers a put gave back are taken by the next ones.
      const bodies = [13 * MiB + 5, 2 * MiB + 1, 11 * MiB, 3 * MiB, 100, 7 * MiB + 9].map((n) =>
        randomBytes(n),
      );
      const chunked = (b: Buffer) => {
        const chunks: Buffer[] = [];
        for (let at = 0; at < b.length; at += 64 * 1024) chunks.push(b.subarray(at, at + 64 * 1024));
        return Readable.from(chunks);
      };
      await Promise.all(bodies.slice(0, 3).map((b, i) => storage.put(`spare/${i}`, chunked(b))));
      for (let i = 3; i < bodies.length; i++) await storage.put(`spare/${i}`, chunked(bodies[i]!));
      for (const [i, b] of bodies.entries()) {
        const back = await Readable.from((await storage.get(`spare/${i}`))!).toArray();
        assert.equal(hash(Buffer.concat(back)), hash(b), `object ${i}`);
      }
    });

    it("takes a size hint for its part size without holding the body to it", async () => {
      const storage = await createS3Storage({ ...options(bucket), partSize: 5 * MiB });
      const bytes = randomBytes(12 * MiB + 3);
      const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
      // A hint of 60 GiB picks 7 MiB parts (10,000 of them hold it); one of 1 MiB keeps 5 MiB parts. Neither
      // is the body's length, and neither makes the put fail.
      for (const sizeHint of [60 * 1024 * MiB, MiB]) {
        await storage.put("hinted/key", Readable.from([bytes]), { sizeHint });
        const back = await Readable.from((await storage.get("hinted/key"))!).toArray();
        assert.equal(hash(Buffer.concat(back)), hash(bytes), `hint ${sizeHint}`);
      }
    });

    it("refuses part sizes S3 would refuse", async () => {
      await assert.rejects(createS3Storage({ ...options(bucket), partSize: 4 * MiB }), StorageError);
      await assert.rejects(createS3Storage({ ...options(bucket), endPoint: "127.0.0.1:7480" }), StorageError);
    });

    it("reports wrong credentials and a missing bucket as StorageError", async () => {
      const wrong = await createS3Storage({
        ...options(bucket),
        secretKey: "not-the-secret",
        createBucket: false,
      });
      await assert.rejects(wrong.put("k", Readable.from([Buffer.from("x")])), StorageError);
      await assert.rejects(wrong.stat("k"), StorageError);
      const missing = await createS3Storage({ ...options(freshBucketName()), createBucket: false });
      await assert.rejects(missing.check(), /does not exist/);
      await assert.rejects(missing.put("k", Readable.from([Buffer.from("x")])), StorageError);
    });

    it("reports an unreachable endpoint from check()", async () => {
      const down = await createS3Storage({
        ...options(bucket),
        endPoint: "http://127.0.0.1:9",
        createBucket: false,
      });
      await assert.rejects(down.check(), StorageError);
    });

    it("creating the bucket is idempotent", async () => {
      const storage = await createS3Storage(options(bucket));
      await storage.check();
    });
  });

  /**
   * The S3 driver with a disk cache in a fresh directory; `dir` may be given to reopen one. `gets()` counts
   * the reads the cache asked of the S3 driver (each one a GET of the bucket).
   */
  const cached = async (bucket: string, limitBytes: number, dir?: string) => {
    const root = dir ?? (await mkdtemp(join(testTmp(), "disk-cache-")));
    const remote = await createS3Storage(options(bucket));
    let gets = 0;
    const counted: Storage = {
      ...remote,
      get: (key, range) => {
        gets++;
        return remote.get(key, range);
      },
    };
    const storage = await withDiskCache(counted, { root, limitBytes });
    return { storage, root, gets: () => gets };
  };
  const readAll = async (body: Readable | null): Promise<Buffer | null> => {
    if (!body) return null;
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };

  storageConformance("s3 with a disk cache", async () => {
    const bucket = freshBucketName();
    // 64 MiB: the multi-MiB objects are copied (a read after a read comes from disk), the 300 MiB one not.
    const { storage, root } = await cached(bucket, 64 * MiB);
    return {
      storage,
      cleanup: async () => {
        await storage.settled();
        await dropBucket(client, bucket);
        await rm(root, { recursive: true, force: true });
      },
      debris: () => incompleteUploads(client, bucket),
      readsThroughFirst: true,
    };
  });

  describe("s3 with a disk cache", () => {
    const bucket = freshBucketName();
    before(async () => {
      await client.makeBucket(bucket, region);
    });
    after(async () => {
      await dropBucket(client, bucket);
    });
    const bytesOf = (n: number, fill: number) => Buffer.alloc(n, fill);

    it("serves a first read itself from the one GET that makes the copy, then answers from the copy (after a restart too)", async () => {
      const { storage, root, gets } = await cached(bucket, 10 * MiB);
      const big = randomBytes(3 * MiB);
      await storage.put("nar/big", Readable.from([big]));
      assert.equal(await storage.presignGet("nar/big", 60), null, "not read yet: served from here");
      assert.deepEqual(await readAll(await storage.get("nar/big")), big);
      await storage.settled();
      assert.equal(gets(), 1, "one GET served the read and made the copy");
      assert.equal(storage.stats().bytes, big.length);
      assert.equal(storage.stats().made, 1);
      assert.equal(await storage.presignGet("nar/big", 60), null, "a copy: served from here");
      // Gone from the bucket behind the driver's back: the copy still answers (which shows where bytes come from).
      await client.removeObject(bucket, "nar/big");
      assert.deepEqual(await readAll(await storage.get("nar/big")), big);
      assert.deepEqual(
        await readAll(await storage.get("nar/big", { start: 10, end: 19 })),
        big.subarray(10, 20),
      );
      const again = await cached(bucket, 10 * MiB, root);
      assert.equal(again.storage.stats().bytes, big.length, "copies found at start");
      assert.deepEqual(await readAll(await again.storage.get("nar/big")), big);
      await rm(root, { recursive: true, force: true });
    });

    it("drops a key's copy on its put and delete, a copy being made meanwhile included", async () => {
      const { storage, root } = await cached(bucket, 10 * MiB);
      await storage.put("k", Readable.from([bytesOf(1000, 1)]));
      assert.deepEqual(await readAll(await storage.get("k")), bytesOf(1000, 1));
      await storage.settled();
      assert.equal(await storage.presignGet("k", 60), null, "copied");
      await storage.put("k", Readable.from([bytesOf(1000, 2)]));
      assert.equal(storage.stats().copies, 0, "its put dropped the copy");
      await storage.settled();
      assert.deepEqual(await readAll(await storage.get("k")), bytesOf(1000, 2));
      await storage.delete("k");
      assert.equal(await storage.get("k"), null);
      assert.equal(storage.stats().bytes, 0);
      // A copy being made when a put of its key begins: the bytes it read may be the older ones.
      await storage.put("r", Readable.from([bytesOf(2 * MiB, 3)]));
      const reading = await storage.get("r"); // a first read: its copy goes at this reader's pace
      await storage.put("r", Readable.from([bytesOf(2 * MiB, 4)]));
      assert.equal((await readAll(reading))?.length, 2 * MiB);
      await storage.settled();
      const files = await readdir(root, { recursive: true, withFileTypes: true });
      assert.deepEqual(
        files.filter((f) => f.isFile()).map((f) => f.name),
        [],
        "the copy made meanwhile is not kept, on disk either",
      );
      assert.deepEqual(await readAll(await storage.get("r")), bytesOf(2 * MiB, 4));
      await storage.settled();
      assert.deepEqual(
        await readAll(await storage.get("r")),
        bytesOf(2 * MiB, 4),
        "from the copy made after",
      );
      await rm(root, { recursive: true, force: true });
    });

    it("redirects to the bucket while a copy is made, and reads a byte range from the bucket", async () => {
      const { storage, root, gets } = await cached(bucket, 10 * MiB);
      const big = randomBytes(2 * MiB);
      await storage.put("nar/slow", Readable.from([big]));
      const first = await storage.get("nar/slow"); // not read yet: the copy waits for this reader
      assert.ok(first);
      assert.ok(await storage.presignGet("nar/slow", 60), "a copy on its way: a redirect");
      assert.deepEqual(
        await readAll(await storage.get("nar/slow", { start: 5, end: 9 })),
        big.subarray(5, 10),
        "a range from the bucket",
      );
      assert.deepEqual(await readAll(first), big);
      await storage.settled();
      assert.equal(gets(), 2, "the first read and the range");
      assert.equal(storage.stats().made, 1);
      // A range of an object not read yet is read from the bucket, and asks for a copy made in the background.
      await storage.put("nar/ranged", Readable.from([big]));
      assert.deepEqual(
        await readAll(await storage.get("nar/ranged", { start: 0, end: 3 })),
        big.subarray(0, 4),
      );
      await storage.settled();
      assert.equal(await storage.presignGet("nar/ranged", 60), null, "copied in the background");
      await rm(root, { recursive: true, force: true });
    });

    it("finishes the copy of a first read whose reader went away, and serves a reader whose copy failed", async () => {
      const { storage, root } = await cached(bucket, 10 * MiB);
      const big = randomBytes(3 * MiB);
      await storage.put("nar/left", Readable.from([big]));
      const body = (await storage.get("nar/left"))!;
      await new Promise<void>((resolve) => body.once("data", () => resolve()));
      body.destroy(); // the client hung up after the first bytes
      await storage.settled();
      assert.equal(storage.stats().made, 1, "copied all the same");
      await client.removeObject(bucket, "nar/left");
      assert.deepEqual(await readAll(await storage.get("nar/left")), big, "whole, from the copy");
      // The copy's directory cannot be written (a file where a directory must be): the reader is served.
      await storage.put("nar/deep", Readable.from([big]));
      await rm(join(root, ".tmp"), { recursive: true, force: true });
      await writeFile(join(root, ".tmp"), "not a directory");
      assert.deepEqual(await readAll(await storage.get("nar/deep")), big);
      await storage.settled();
      assert.equal(storage.stats().failed, 1);
      assert.ok((await storage.presignGet("nar/deep", 60)) === null, "no copy: read through again next time");
      await rm(root, { recursive: true, force: true });
    });

    it("keeps the copies read most recently within its limit, and none larger than half of it", async () => {
      const { storage, root } = await cached(bucket, 4000);
      for (const i of [1, 2, 3, 4, 5]) await storage.put(`e${i}`, Readable.from([bytesOf(1000, i)]));
      for (const i of [1, 2, 3, 4]) {
        await readAll(await storage.get(`e${i}`));
        await storage.settled();
      }
      await readAll(await storage.get("e1")); // e1 the most recent now, e2 the oldest
      await readAll(await storage.get("e5")); // one too many: e2 goes
      await storage.settled();
      const copied = async (key: string) =>
        access(join(root, key)).then(
          () => true,
          () => false,
        );
      for (const i of [1, 3, 4, 5]) assert.ok(await copied(`e${i}`), `e${i} kept`);
      assert.equal(await copied("e2"), false, "e2 went first");
      assert.equal(storage.stats().bytes, 4000);
      // A copy whose file vanished behind its back: read from the bucket, and no longer taken for a copy.
      await storage.settled();
      await rm(join(root, "e5"));
      const again = await storage.get("e5");
      assert.equal(storage.stats().bytes, 3000, "the vanished copy forgotten");
      assert.deepEqual(await readAll(again), bytesOf(1000, 5));
      await storage.settled();
      assert.equal(storage.stats().bytes, 4000, "and read through into a new copy");
      await storage.put("large", Readable.from([bytesOf(2001, 9)]));
      assert.deepEqual(await readAll(await storage.get("large")), bytesOf(2001, 9), "served whole");
      await storage.settled();
      assert.equal(await copied("large"), false, "over half the limit: never copied");
      assert.ok(await storage.presignGet("large", 60), "and redirected to the bucket from then on");
      assert.deepEqual(await readAll(await storage.get("large")), bytesOf(2001, 9));
      assert.equal(storage.stats().bytes, 4000);
      await rm(root, { recursive: true, force: true });
    });
  });
}
