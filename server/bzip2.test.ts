// The in-house bzip2 decoder against the real `bzip2` command (1.0.x): every block size, multi-block and
// concatenated streams, any chunking of the input; corrupt, truncated and trailing input must end in an
// error (never in silently wrong output, never in a hang); and a body of extreme ratio read slowly must not
// make the decoder run ahead of its consumer.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { before, describe, it } from "node:test";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { bunzip2 } from "./bzip2.ts";
import { decompressor } from "./compression.ts";

const run = promisify(execFile);

/** Compresses with the real bzip2 command at block size `level` (1..9, in 100 kB). */
async function bzip2(data: Buffer, level = 9): Promise<Buffer> {
  const child = execFile("bzip2", [`-${level}`, "-c"], { encoding: "buffer", maxBuffer: 1 << 30 });
  const out = new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    child.stdout?.on("data", (part: Buffer) => parts.push(part));
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolve(Buffer.concat(parts)) : reject(new Error(`bzip2 exited ${code}`)),
    );
  });
  child.stdin?.end(data);
  return out;
}

/** How many blocks the real bzip2 finds in a body (`bzip2 -tvv` prints one `[n: …]` line per block). */
async function blocksOf(body: Buffer): Promise<number> {
  const child = spawn("bzip2", ["-tvv"], { stdio: ["pipe", "ignore", "pipe"] });
  let log = "";
  child.stderr.on("data", (part: Buffer) => {
    log += part.toString();
  });
  const done = new Promise<number | null>((resolve) => child.on("close", resolve));
  child.stdin.end(body);
  assert.equal(await done, 0, `bzip2 -tvv accepts the body: ${log}`);
  return log.match(/\[\d+: huff\+mtf/g)?.length ?? 0;
}

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** Fails with a message instead of waiting forever: a decoder that stalls must fail its test, not hang. */
async function within<T>(promise: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Decoded {
  sha256: string;
  size: number;
}

/** Feeds `chunks` one by one through a fresh decoder and hashes everything it hands on. */
async function decode(chunks: Iterable<Buffer>, decoder = bunzip2()): Promise<Decoded> {
  const hash = createHash("sha256");
  let size = 0;
  await within(
    pipeline(Readable.from(chunks), decoder, async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) {
        hash.update(chunk);
        size += chunk.length;
      }
    }),
    "decoding",
  );
  return { sha256: hash.digest("hex"), size };
}

const whole = (data: Buffer): Decoded => ({ sha256: sha256(data), size: data.length });

/** `body` in slices of the sizes `sizeAt(i)` gives, as a socket might deliver it. */
function* slices(body: Buffer, sizeAt: (i: number) => number): Generator<Buffer> {
  for (let at = 0, i = 0; at < body.length; i++) {
    const n = sizeAt(i);
    yield body.subarray(at, at + n);
    at += n;
  }
}

/** A deterministic xorshift PRNG: reproducible "random" bytes and chunk sizes. */
function prng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function noise(size: number, seed: number): Buffer {
  const next = prng(seed);
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) out.writeUInt32LE(next(), i);
  return out;
}

/** Real text: this project's own sources. */
function sourceText(): Buffer {
  const parts: Buffer[] = [];
  for (const dir of ["server", "nix", "hook"]) {
    for (const name of readdirSync(dir).sort()) {
      if (name.endsWith(".ts")) parts.push(readFileSync(join(dir, name)));
    }
  }
  return Buffer.concat(parts);
}

/**
 * A few MB of mixed data: real executables, real text, incompressible noise, long runs of zeros, and runs of
 * every length 1..300 (bzip2's first run-length stage codes 4..259 equal bytes; its edges are where a
 * decoder goes wrong).
 */
function mixedData(): Buffer {
  const parts: Buffer[] = [];
  let binaries = 0;
  for (const name of readdirSync("/usr/bin").sort()) {
    if (binaries >= 1_000_000) break;
    const path = join("/usr/bin", name);
    try {
      const stat = statSync(path);
      if (!stat.isFile() || stat.size < 10_000) continue;
      const bytes = readFileSync(path).subarray(0, 200_000);
      parts.push(bytes);
      binaries += bytes.length;
    } catch {
      // unreadable or vanished: skip it
    }
  }
  assert.ok(binaries >= 900_000, `/usr/bin gave ${binaries} bytes of executables`);
  parts.push(sourceText());
  parts.push(Buffer.alloc(1_000_000));
  parts.push(noise(200_000, 7));
  for (let length = 1; length <= 300; length++) parts.push(Buffer.alloc(length, (length * 37) & 0xff));
  for (const length of [4, 5, 255, 258, 259, 260, 261, 1000, 100_000]) parts.push(Buffer.alloc(length, 0xff));
  parts.push(Buffer.from("the end\n"));
  return Buffer.concat(parts);
}

/** The decoder's error for `chunks`, asserting it has one and that it is bzip2's. */
async function decodeError(chunks: Iterable<Buffer>, what: string, original?: Buffer): Promise<Error> {
  let decoded: Decoded | undefined;
  try {
    decoded = await decode(chunks);
  } catch (error) {
    assert.ok(error instanceof Error, `${what}: fails with an Error`);
    assert.doesNotMatch(error.message, /timed out/, `${what}: fails rather than hangs`);
    assert.equal((error as { code?: string }).code, "BZIP2_ERROR", `${what}: ${error.message}`);
    return error;
  }
  const same = original !== undefined && decoded.sha256 === sha256(original);
  assert.fail(`${what}: decoded without an error to ${decoded.size} bytes${same ? " (the original)" : ""}`);
}

describe("bunzip2 against the real bzip2", () => {
  let data: Buffer;
  /** bzip2 of `data` at each block size level 1..9. */
  const byLevel = new Map<number, Buffer>();

  before(async () => {
    data = mixedData();
    const levels = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    const bodies = await Promise.all(levels.map((level) => bzip2(data, level)));
    for (const [i, level] of levels.entries()) byLevel.set(level, bodies[i]!);
  });

  const body = (level: number) => {
    const found = byLevel.get(level);
    assert.ok(found, `a body at level ${level}`);
    return found;
  };

  for (const level of [1, 2, 3, 4, 5, 6, 7, 8, 9]) {
    it(`decodes mixed data compressed at -${level} byte for byte`, async () => {
      assert.deepEqual(await decode([body(level)]), whole(data));
    });
  }

  it("decodes multi-block streams (more than one block at -9, many at -1)", async () => {
    assert.ok(data.length > 2 * 900_000, `${data.length} bytes of data`);
    // Fewer blocks than 100 kB steps: runs of equal bytes are shortened before the block fills.
    const blocks9 = await blocksOf(body(9));
    const blocks1 = await blocksOf(body(1));
    assert.ok(blocks9 >= 2, `${blocks9} blocks at -9`);
    assert.ok(blocks1 >= 15, `${blocks1} blocks at -1`);
    // Also through the decompressor() the server uses.
    assert.deepEqual(await decode([body(9)], decompressor("bzip2")), whole(data));
    assert.deepEqual(await decode([body(1)], decompressor("bzip2")), whole(data));
  });

  it("decodes concatenated streams to the concatenation, whatever their block sizes", async () => {
    const small = Buffer.from("a short second stream\n");
    const smallBody = await bzip2(small, 1);
    const empty = await bzip2(Buffer.alloc(0), 5);
    const cases: [string, Buffer[], Buffer][] = [
      ["-9 then -1", [body(9), body(1)], Buffer.concat([data, data])],
      ["-1 then -9", [body(1), body(9)], Buffer.concat([data, data])],
      ["-9, a small -1, an empty -5", [body(9), smallBody, empty], Buffer.concat([data, small])],
      ["an empty one first", [empty, smallBody, smallBody], Buffer.concat([small, small])],
    ];
    for (const [what, bodies, expected] of cases) {
      const joined = Buffer.concat(bodies);
      assert.deepEqual(await decode([joined]), whole(expected), what);
      if (what === "-1 then -9") continue; // the same bytes again, split as the case before
      // Split across the stream boundary too.
      const cut = bodies[0]!.length - 3;
      assert.deepEqual(
        await decode([joined.subarray(0, cut), joined.subarray(cut)]),
        whole(expected),
        `${what}, split at ${cut}`,
      );
    }
  });

  it("decodes bzip2 of zero bytes to zero bytes", async () => {
    const empty = await bzip2(Buffer.alloc(0));
    assert.equal(empty.length, 14, "BZh9, the end marker and a zero CRC");
    assert.deepEqual(await decode([empty]), { sha256: sha256(Buffer.alloc(0)), size: 0 });
    assert.deepEqual(await decode(slices(empty, () => 1)), { sha256: sha256(Buffer.alloc(0)), size: 0 });
  });

  it("decodes the same whatever the input's chunking", async () => {
    // Tiny chunks of a two-block -1 body of text (1-byte chunks of the whole data would only be slow).
    const part = sourceText().subarray(0, 130_000);
    assert.equal(part.length, 130_000);
    const partBody = await bzip2(part, 1);
    assert.equal(await blocksOf(partBody), 2);
    for (const size of [1, 7]) {
      assert.deepEqual(await decode(slices(partBody, () => size)), whole(part), `${size}-byte chunks`);
    }
    const next = prng(42);
    const chunkings: [number, string, (i: number) => number][] = [
      [9, "odd-sized (1..50)", () => 1 + (next() % 50)],
      [9, "4093-byte", () => 4093],
      [1, "odd-sized (1..100,000)", () => 1 + (next() % 100_000)],
    ];
    for (const [level, what, sizeAt] of chunkings) {
      assert.deepEqual(await decode(slices(body(level), sizeAt)), whole(data), `-${level}, ${what} chunks`);
    }
  });

  it("fails on a stream cut short, wherever it is cut", async () => {
    const full = body(9);
    const cuts = [0, 1, 2, 3, 4, 5, 9, 10, 14, 17, 30, 1000, Math.floor(full.length / 2)];
    cuts.push(full.length - 1000, full.length - 6, full.length - 5, full.length - 2, full.length - 1);
    for (const cut of cuts) {
      const error = await decodeError([full.subarray(0, cut)], `cut at ${cut} of ${full.length}`, data);
      if (cut > 4) assert.match(error.message, /ends before the end of its stream/, `cut at ${cut}`);
    }
    // In tiny chunks as well, where every read runs out of input.
    const small = await bzip2(data.subarray(0, 20_000), 1);
    for (const cut of [3, 4, 20, Math.floor(small.length / 2), small.length - 1]) {
      await decodeError(
        slices(small.subarray(0, cut), () => 3),
        `cut at ${cut}, 3-byte chunks`,
      );
    }
  });

  it("reports a block CRC mismatch when a block decodes to other bytes", async () => {
    // The block's stored CRC (bytes 10..13, after BZh9 and the block magic).
    const storedCrc = Buffer.from(body(9));
    storedCrc[11]! ^= 0x10;
    const crcError = await decodeError([storedCrc], "stored block CRC flipped", data);
    assert.match(crcError.message, /^bzip2 block CRC mismatch$/);
    // The low bit of the block's origin pointer (bit 136, the top bit of byte 17): the block's bytes come
    // out in a rotated order, well-formed but wrong, and only the CRC can tell.
    const origin = Buffer.from(body(9));
    origin[17]! ^= 0x80;
    const originError = await decodeError([origin], "origin pointer flipped", data);
    assert.match(originError.message, /^bzip2 block CRC mismatch$/);
  });

  it("reports a stream CRC mismatch", async () => {
    // The last 32 bits before the padding are the stream's combined CRC; byte length-2 lies wholly in it.
    const flipped = Buffer.from(body(9));
    flipped[flipped.length - 2]! ^= 0x01;
    const error = await decodeError([flipped], "stream CRC flipped", data);
    assert.match(error.message, /^bzip2 stream CRC mismatch$/);
  });

  it("fails on any flipped bit in the block data, never decoding to wrong bytes", async () => {
    const part = data.subarray(1_000_000, 1_150_000);
    const partBody = await bzip2(part, 1);
    const messages = new Set<string>();
    const next = prng(99);
    for (let i = 0; i < 60; i++) {
      const flipped = Buffer.from(partBody);
      // Anywhere after the first block's header, before the stream end.
      const at = 20 + (next() % (partBody.length - 30));
      const bit = next() % 8;
      flipped[at]! ^= 1 << bit;
      const error = await decodeError([flipped], `bit ${bit} of byte ${at} flipped`, part);
      messages.add(error.message);
    }
    assert.ok(messages.has("bzip2 block CRC mismatch"), `some flips end in a CRC mismatch: ${[...messages]}`);
  });

  it("fails on input that is not bzip2", async () => {
    const cases: [string, Buffer][] = [
      ["noise", noise(4096, 3)],
      ["text", Buffer.from("hello, world\n".repeat(100))],
      ["gzip", gzipSync(data.subarray(0, 10_000))],
      ["a zero byte", Buffer.alloc(1)],
      ["BZh0", Buffer.concat([Buffer.from("BZh0"), body(9).subarray(4)])],
      ["BZhx", Buffer.concat([Buffer.from("BZhx"), body(9).subarray(4)])],
      ["BZh9 then noise", Buffer.concat([Buffer.from("BZh9"), noise(100_000, 5)])],
      ["BZh9, then a block magic and noise", Buffer.concat([body(9).subarray(0, 10), noise(100_000, 6)])],
      ["nothing at all", Buffer.alloc(0)],
    ];
    for (const [what, input] of cases) {
      const error = await decodeError([input], what);
      assert.match(error.message, /bzip2/, `${what}: the message names bzip2`);
    }
  });

  it("fails on trailing garbage after a valid stream", async () => {
    const small = data.subarray(0, 50_000);
    const smallBody = await bzip2(small, 9);
    const trailers: [string, Buffer][] = [
      ["a zero byte", Buffer.alloc(1)],
      ["a newline", Buffer.from("\n")],
      ["BZ", Buffer.from("BZ")],
      ["BZh9", Buffer.from("BZh9")],
      ["text", Buffer.from("trailing garbage that is long enough to be read as a header\n")],
      ["noise", noise(10_000, 11)],
      ["a truncated second stream", smallBody.subarray(0, smallBody.length - 1)],
    ];
    for (const [what, trailer] of trailers) {
      await decodeError([smallBody, trailer], `trailing ${what}`, small);
      await decodeError([Buffer.concat([smallBody, trailer])], `trailing ${what}, one chunk`, small);
    }
  });
});

/**
 * 200 MiB of zeros is five -9 blocks and a body of a few hundred bytes. The real bzip2 takes seconds to make
 * it, so it starts now, beside the suite above.
 */
const zerosSize = 200 * 1024 * 1024;
const zerosBody = run("sh", ["-c", `head -c ${zerosSize} /dev/zero | bzip2 -9 -c`], {
  encoding: "buffer",
  maxBuffer: 1 << 20,
}).then(({ stdout }) => stdout);
zerosBody.catch(() => {}); // awaited, and so reported, in the suite's before()

describe("bunzip2 backpressure on a body of extreme ratio", () => {
  let zeros: Buffer;

  before(async () => {
    zeros = await zerosBody;
    assert.ok(zeros.length < 1000, `${zeros.length} bytes of body`);
  });

  it("makes output only as it is read", async () => {
    const decoder = bunzip2();
    decoder.end(zeros);
    const before = process.memoryUsage();
    const chunks = decoder[Symbol.asyncIterator]();
    let read = 0;
    for (let i = 0; i < 4; i++) {
      const { value, done } = await within(chunks.next(), "a chunk of zeros");
      assert.equal(done, false);
      read += (value as Buffer).length;
    }
    // Give a decoder that runs ahead time to do so.
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    const after = process.memoryUsage();
    const buffered = decoder.readableObjectMode
      ? decoder.readableLength * 128 * 1024
      : decoder.readableLength;
    assert.ok(read <= 4 * 1024 * 1024, `${read} bytes in 4 reads`);
    assert.ok(buffered <= 1024 * 1024, `${decoder.readableLength} chunks or bytes buffered, unread`);
    const arrayBuffers = after.arrayBuffers - before.arrayBuffers;
    const rss = after.rss - before.rss;
    // About 4.5 MB here: the block's 3.6 MB transform vector and the chunks read. A decoder that made all
    // its output at once measured 77 MB and more.
    assert.ok(arrayBuffers < 32 * 1024 * 1024, `buffers grew by ${arrayBuffers} bytes`);
    assert.ok(rss < 64 * 1024 * 1024, `RSS grew by ${rss} bytes`);
    decoder.destroy();
    assert.ok(decoder.destroyed);
  });

  it("decodes all of it to exactly 200 MiB of zeros, in bounded memory", async () => {
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const hash = createHash("sha256");
    let size = 0;
    let nonZero = false;
    const blank = Buffer.alloc(1024 * 1024);
    await within(
      pipeline(Readable.from([zeros]), bunzip2(), async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) {
          hash.update(chunk);
          size += chunk.length;
          if (chunk.length > blank.length || !chunk.equals(blank.subarray(0, chunk.length))) nonZero = true;
          if (size % (16 * 1024 * 1024) === 0) peak = Math.max(peak, process.memoryUsage().rss);
        }
      }),
      "200 MiB of zeros",
      60_000,
    );
    assert.equal(size, zerosSize);
    assert.equal(nonZero, false, "only zeros");
    const expected = createHash("sha256");
    const mib = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < zerosSize / mib.length; i++) expected.update(mib);
    assert.equal(hash.digest("hex"), expected.digest("hex"));
    assert.ok(peak - rssBefore < 128 * 1024 * 1024, `RSS grew by ${peak - rssBefore} bytes while draining`);
  });
});
