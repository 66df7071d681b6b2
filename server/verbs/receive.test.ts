// receiveNar decodes zstd bodies on a worker thread when the context has a decoder pool, and in-thread
// otherwise: both must store the same bytes, report the same facts, and fail with the same errors.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createBrotliCompress, gzipSync, constants as zlib } from "node:zlib";
import { pino } from "pino";
import { compress } from "zstd-napi";
import { narOf } from "../../test/support/nar.ts";
import { testTmp } from "../../test/support/services.ts";
import type { Compression } from "../compression.ts";
import type { Context } from "../context.ts";
import { createDecoderPool, type DecoderPool, IN_THREAD_BELOW, ZstdNarDecoder } from "../decode-pool.ts";
import { createLocalStorage } from "../storage/local.ts";
import type { Storage } from "../storage/storage.ts";
import { type ReceivedNar, receiveNar } from "./receive.ts";

const settings = { zstdLevel: 3, redirectNars: false, presignSeconds: 600, publicUrl: "http://127.0.0.1:1" };

/**
 * The NAR of one 1 GiB file of zeros, cut around its contents: `head` up to the file's size field, `tail`
 * after the contents. Compressed, the zeros between them are a body of extreme ratio.
 */
function zerosNar(): { head: Buffer; tail: Buffer; size: number } {
  const str = (text: string) => {
    const bytes = Buffer.from(text);
    const out = Buffer.alloc(8 + Math.ceil(bytes.length / 8) * 8);
    out.writeBigUInt64LE(BigInt(bytes.length));
    bytes.copy(out, 8);
    return out;
  };
  const size = 1024 ** 3;
  const sizeField = Buffer.alloc(8);
  sizeField.writeBigUInt64LE(BigInt(size));
  const head = Buffer.concat([...["nix-archive-1", "(", "type", "regular", "contents"].map(str), sizeField]);
  return { head, tail: str(")"), size };
}

/** A body in slices as a socket delivers them: many chunks of uneven size. */
function socketChunks(body: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let at = 0; at < body.length; ) {
    const n = 1 + Math.floor(Math.random() * 100_000);
    chunks.push(body.subarray(at, at + n));
    at += n;
  }
  return chunks;
}

async function waitIdle(pool: DecoderPool, workers: number): Promise<void> {
  for (let i = 0; i < 200 && pool.idle < workers; i++) await new Promise((r) => setTimeout(r, 25));
  assert.equal(pool.idle, workers, "decoder workers idle");
}

describe("receiveNar: zstd decoded on a worker thread or in-thread", () => {
  let dir = "";
  let storage: Storage;
  let pool: DecoderPool;
  let acquired = 0;
  let inThread: Context;
  let onWorker: Context;
  let nar: Buffer;

  before(async () => {
    dir = mkdtempSync(join(testTmp(), "receive-"));
    storage = createLocalStorage({ root: join(dir, "storage") });
    // Input buffers of 256 KiB: the uploads below fill all of a worker's and wait for one back.
    pool = createDecoderPool({ size: 1, log: pino({ level: "silent" }), inputBufferSize: 256 * 1024 });
    const counted: DecoderPool = {
      acquire(options) {
        const decoder = pool.acquire(options);
        // Counts the uploads a worker took (small NARs, and any with every worker busy, decode in-thread).
        if (decoder && !(decoder instanceof ZstdNarDecoder)) acquired++;
        return decoder;
      },
      get idle() {
        return pool.idle;
      },
      close: () => pool.close(),
    };
    // receiveNar reads only storage, settings, metrics and decoders.
    inThread = { storage, settings, log: pino({ level: "silent" }) } as unknown as Context;
    onWorker = { ...inThread, decoders: counted };
    // Several MiB across many zstd blocks and input buffers: compressible and random content, a symlink.
    const text = Buffer.from("nixstash ".repeat(400_000));
    nar = narOf({
      dir: {
        bin: { dir: { tool: { executable: randomBytes(3 * 1024 * 1024) } } },
        "share.txt": text,
        link: { symlink: "bin/tool" },
      },
    });
    await waitIdle(pool, 1);
  });

  after(async () => {
    await pool.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const receive = async (ctx: Context, body: Buffer, narSizeLimit?: number) => {
    const storageKey = `t/${randomBytes(8).toString("hex")}`;
    const result = await receiveNar({
      ctx,
      input: {
        body: Readable.from(socketChunks(body)),
        compression: "zstd",
        storageKey,
        what: "/nix/store/x-test",
        ...(narSizeLimit === undefined ? {} : { narSizeLimit }),
      },
    });
    return { result, storageKey };
  };

  const stored = async (key: string) => {
    const parts: Buffer[] = [];
    const object = await storage.get(key);
    assert.ok(object);
    for await (const c of object as AsyncIterable<Buffer>) parts.push(c);
    return Buffer.concat(parts);
  };

  const failure = async (ctx: Context, body: Buffer, narSizeLimit?: number) => {
    const error = await receive(ctx, body, narSizeLimit).then(
      () => assert.fail("expected the upload to be refused"),
      (e: unknown) => e as Error & { code?: unknown; status?: unknown },
    );
    return { name: error.name, code: error.code, status: error.status, message: error.message };
  };

  /** Runs on both paths; the worker path must have used the worker and left it idle again. */
  const both = async <T>(run: (ctx: Context) => Promise<T>): Promise<{ here: T; there: T }> => {
    const here = await run(inThread);
    const before = acquired;
    const there = await run(onWorker);
    assert.equal(acquired, before + 1, "the worker decoded the upload");
    await waitIdle(pool, 1);
    return { here, there };
  };

  it("gives byte-identical results and stores the same bytes", async () => {
    const body = compress(nar, { compressionLevel: 3 });
    const { here, there } = await both((ctx) => receive(ctx, body));
    assert.deepEqual<ReceivedNar>(there.result, here.result);
    assert.equal(here.result.narSize, nar.length);
    assert.equal(here.result.received.fileSize, body.length);
    assert.deepEqual(await stored(there.storageKey), body);
    assert.deepEqual(await stored(here.storageKey), body);
  });

  it("decodes a body of several zstd frames", async () => {
    const half = Math.floor(nar.length / 2);
    const body = Buffer.concat([compress(nar.subarray(0, half)), compress(nar.subarray(half))]);
    const { here, there } = await both((ctx) => receive(ctx, body));
    assert.deepEqual(there.result, here.result);
  });

  it("rejects corrupt zstd with the same error", async () => {
    const body = Buffer.from(compress(nar, { compressionLevel: 3 }));
    for (let i = 4; i < 16; i++) body[i] = body[i]! ^ 0x5a; // the frame and first block headers
    const { here, there } = await both((ctx) => failure(ctx, body));
    assert.equal(here.status, 400);
    assert.match(here.message, /is not valid zstd/);
    assert.deepEqual(there, here);
  });

  it("rejects a body that is not zstd at all, and one cut off mid-frame, with the same errors", async () => {
    const garbage = Buffer.from("this is not a zstd frame, not at all".repeat(100));
    const a = await both((ctx) => failure(ctx, garbage));
    assert.equal(a.here.status, 400);
    assert.deepEqual(a.there, a.here);
    const full = compress(nar, { compressionLevel: 3 });
    const cut = full.subarray(0, full.length - 1000);
    const b = await both((ctx) => failure(ctx, cut));
    assert.equal(b.here.status, 400);
    assert.match(b.here.message, /is not valid zstd/);
    assert.deepEqual(b.there, b.here);
  });

  it("rejects an invalid NAR with the same error", async () => {
    const broken = Buffer.from(nar);
    broken.write("xix-archive-1", 8);
    const a = await both((ctx) => failure(ctx, compress(broken)));
    assert.equal(a.here.code, "invalid_nar");
    assert.deepEqual(a.there, a.here);
    const truncated = compress(nar.subarray(0, nar.length - 8));
    const b = await both((ctx) => failure(ctx, truncated));
    assert.equal(b.here.code, "invalid_nar");
    assert.deepEqual(b.there, b.here);
  });

  it("rejects a NAR larger than the claimed NarSize with the same error", async () => {
    const body = compress(nar);
    const { here, there } = await both((ctx) => failure(ctx, body, nar.length - 1));
    assert.equal(here.code, "size_mismatch");
    assert.deepEqual(there, here);
  });

  it("stops a body of extreme ratio at the NarSize limit on both paths, with bounded memory", async () => {
    // A NAR of one 1 GiB file of zeros, as concatenated zstd frames of a few KiB: decoded all at once it
    // would be a GiB in memory before the limit downstream saw a byte.
    const { head, tail } = zerosNar();
    const zeros = compress(Buffer.alloc(64 * 1024 * 1024));
    const body = Buffer.concat([compress(head), ...Array.from({ length: 16 }, () => zeros), compress(tail)]);
    assert.ok(body.length < 1024 * 1024, `${body.length} bytes of zstd`);
    const rss = process.memoryUsage().rss;
    const { here, there } = await both((ctx) => failure(ctx, body, 1024 * 1024));
    const grown = process.memoryUsage().rss - rss;
    assert.equal(here.code, "size_mismatch");
    assert.deepEqual(there, here);
    assert.ok(grown < 128 * 1024 * 1024, `RSS grew ${Math.round(grown / 2 ** 20)} MiB`);
  });

  it("decodes a small NAR in-thread with a worker idle, and checks it the same", async () => {
    const small = narOf(randomBytes(64 * 1024));
    const before = acquired;
    const { result } = await receive(onWorker, compress(small), small.length);
    assert.equal(acquired, before, "the worker was not asked");
    const here = await receive(inThread, compress(small), small.length);
    assert.deepEqual(result, here.result);
    const tooLong = await failure(onWorker, compress(small), small.length - 1);
    assert.equal(tooLong.code, "size_mismatch");
    assert.equal(acquired, before, "the worker was not asked");
    // At the threshold, the worker decodes.
    const big = narOf(randomBytes(IN_THREAD_BELOW));
    await receive(onWorker, compress(big), big.length);
    assert.equal(acquired, before + 1, "the worker decoded the NAR at the threshold");
    await waitIdle(pool, 1);
  });

  it("decodes in-thread when every worker is busy", async () => {
    const held = pool.acquire({});
    assert.ok(held);
    const before = acquired;
    const body = compress(nar);
    const { result } = await receive(onWorker, body);
    assert.equal(acquired, before, "no worker was free");
    assert.equal(result.narSize, nar.length);
    // And again, on the decoder context the first in-thread upload gave back to the pool.
    const again = await receive(onWorker, compress(nar, { compressionLevel: 9 }));
    assert.deepEqual(again.result.narHash, result.narHash);
    assert.equal(acquired, before, "no worker was free");
    held.destroy();
    await waitIdle(pool, 1);
  });
});

/** Compresses with the real tools: the xz and bzip2 commands, node:zlib for brotli and gzip. */
async function compressed(compression: Exclude<Compression, "none" | "zstd">, data: Buffer): Promise<Buffer> {
  switch (compression) {
    case "xz":
      return execFileSync("xz", ["-6", "-T1", "-c"], { input: data, maxBuffer: 1 << 30 });
    case "bzip2":
      return execFileSync("bzip2", ["-9", "-c"], { input: data, maxBuffer: 1 << 30 });
    case "gzip":
      return gzipSync(data, { level: 9 });
    case "br": {
      const encoder = createBrotliCompress({ params: { [zlib.BROTLI_PARAM_QUALITY]: 5 } });
      const parts: Buffer[] = [];
      encoder.on("data", (part: Buffer) => parts.push(part));
      const done = new Promise((resolve, reject) => encoder.on("end", resolve).on("error", reject));
      encoder.end(data);
      await done;
      return Buffer.concat(parts);
    }
  }
}

describe("receiveNar: xz, bzip2, br and gzip bodies", () => {
  let dir = "";
  let ctx: Context;
  let nar: Buffer;
  const others = ["xz", "bzip2", "br", "gzip"] as const;

  before(() => {
    dir = mkdtempSync(join(testTmp(), "receive-"));
    const storage = createLocalStorage({ root: join(dir, "storage") });
    ctx = { storage, settings, log: pino({ level: "silent" }) } as unknown as Context;
    nar = narOf({
      dir: {
        bin: { dir: { tool: { executable: randomBytes(1024 * 1024) } } },
        "share.txt": Buffer.from("nixstash ".repeat(200_000)),
      },
    });
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  const receive = (compression: Compression, body: Buffer | Readable, narSizeLimit?: number) =>
    receiveNar({
      ctx,
      input: {
        body: Buffer.isBuffer(body) ? Readable.from(socketChunks(body)) : body,
        compression,
        storageKey: `t/${randomBytes(8).toString("hex")}`,
        what: "/nix/store/x-test",
        ...(narSizeLimit === undefined ? {} : { narSizeLimit }),
      },
    });

  const failure = (compression: Compression, body: Buffer, narSizeLimit?: number) =>
    receive(compression, body, narSizeLimit).then(
      () => assert.fail("expected the upload to be refused"),
      (e: unknown) => e as Error & { code?: unknown; status?: unknown },
    );

  /**
   * A body of the NAR of 1 GiB of zeros, as concatenated streams (xz, bzip2, gzip members) of 64 MiB of
   * zeros each; brotli has no concatenation, so that one is a single stream of the whole NAR.
   */
  const bomb = async (compression: (typeof others)[number]): Promise<Buffer> => {
    const { head, tail, size } = zerosNar();
    const chunk = 64 * 1024 * 1024;
    if (compression === "br") {
      const encoder = createBrotliCompress({ params: { [zlib.BROTLI_PARAM_QUALITY]: 5 } });
      const parts: Buffer[] = [];
      encoder.on("data", (part: Buffer) => parts.push(part));
      const done = new Promise((resolve, reject) => encoder.on("end", resolve).on("error", reject));
      const zeros = Buffer.alloc(1024 * 1024);
      encoder.write(head);
      for (let at = 0; at < size; at += zeros.length) {
        if (!encoder.write(zeros)) await new Promise((resolve) => encoder.once("drain", resolve));
      }
      encoder.end(tail);
      await done;
      return Buffer.concat(parts);
    }
    const zeros = await compressed(compression, Buffer.alloc(chunk));
    const middle = Array.from({ length: size / chunk }, () => zeros);
    return Buffer.concat([
      await compressed(compression, head),
      ...middle,
      await compressed(compression, tail),
    ]);
  };

  for (const compression of others) {
    it(`decodes ${compression}`, async () => {
      const body = await compressed(compression, nar);
      const result = await receive(compression, body);
      assert.equal(result.narSize, nar.length);
      assert.equal(result.received.fileSize, body.length);
    });

    it(`rejects ${compression} cut off before its end, and corrupt ${compression}, with a clear error`, async () => {
      const body = await compressed(compression, nar);
      const cut = await failure(compression, body.subarray(0, body.length - 100));
      assert.equal(cut.status, 400, cut.message);
      assert.match(cut.message, new RegExp(`is not valid ${compression}`));
      const corrupt = Buffer.from(body);
      for (let i = 0; i < 64; i++) {
        // From the start: brotli stores incompressible data raw and unchecked, so corruption there is not
        // the decoder's to see (the NarHash check sees it).
        const at = 16 + i * 997;
        corrupt[at] = corrupt[at]! ^ 0x5a;
      }
      const bad = await failure(compression, corrupt);
      // Deflate and brotli carry no check before their end: corruption may first show as a broken NAR.
      assert.ok(
        (bad.status === 400 && /is not valid/.test(bad.message)) || bad.code === "invalid_nar",
        `${bad.status} ${bad.message}`,
      );
      const garbage = await failure(compression, Buffer.from("not compressed at all ".repeat(1000)));
      assert.equal(garbage.status, 400, garbage.message);
    });

    it(`stops a ${compression} body of extreme ratio at the NarSize limit, with bounded memory`, async (t) => {
      const body = await bomb(compression);
      assert.ok(body.length < 2 * 1024 * 1024, `${body.length} bytes of ${compression}`);
      const rss = process.memoryUsage().rss;
      let peak = rss;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().rss);
      }, 5);
      const error = await failure(compression, body, 1024 * 1024).finally(() => clearInterval(sampler));
      peak = Math.max(peak, process.memoryUsage().rss);
      assert.equal(error.code, "size_mismatch", error.message);
      const grown = peak - rss;
      t.diagnostic(
        `${body.length} bytes of ${compression}; RSS grew ${Math.round(grown / 2 ** 20)} MiB at most`,
      );
      assert.ok(grown < 128 * 1024 * 1024, `RSS grew ${Math.round(grown / 2 ** 20)} MiB`);
    });
  }
});
