// Pooled zstd contexts: one frame per stream, contexts reused only after a complete frame. `compress` makes
// the frame straight from a synchronous source: same bytes as the NAR dump, bounded read-ahead for a slow
// consumer, the source's errors and a destroy mid-frame end the stream and drop the context.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { after, describe, it } from "node:test";
import { setImmediate as tick } from "node:timers/promises";
import { decompress } from "zstd-napi";
import { narSource } from "./nar-dump.ts";
import { createCompressorPool, type PieceSource, SCRATCH_SIZE } from "./zstd-compress.ts";

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Compressible data with some entropy: repeated text, zeros and random runs. */
function sample(bytes: number, seed: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; total < bytes; i++) {
    const part =
      i % 3 === 0
        ? Buffer.from(`line ${seed}-${i} of some text that repeats\n`.repeat(200))
        : i % 3 === 1
          ? Buffer.alloc(50_000)
          : randomBytes(20_000);
    parts.push(part);
    total += part.length;
  }
  return Buffer.concat(parts).subarray(0, bytes);
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

describe("zstd compression on pooled contexts", () => {
  for (const threads of [0, 2]) {
    it(`round-trips one frame per stream and reuses the context (threads ${threads})`, async () => {
      const pool = createCompressorPool();
      const settings = { level: 3, threads, jobSize: 1 << 20 };
      for (let round = 0; round < 3; round++) {
        const data = sample(3_000_000 + round * 100_001, round);
        // Fed in odd-sized chunks, as files and sockets deliver them.
        const chunks: Buffer[] = [];
        for (let at = 0; at < data.length; at += 65_537) chunks.push(data.subarray(at, at + 65_537));
        const compressed = await collect(Readable.from(chunks).pipe(pool.stream(settings)));
        assert.ok(compressed.length < data.length / 2, "it compresses");
        assert.equal(sha(decompress(compressed)), sha(data), `round ${round} decodes to its input`);
        assert.equal(pool.idle, 1, "the one context is back in the pool after each stream");
      }
    });
  }

  it("compresses an empty input to a valid empty frame", async () => {
    const pool = createCompressorPool();
    const compressed = await collect(Readable.from([]).pipe(pool.stream({ level: 3, threads: 0 })));
    assert.ok(compressed.length > 0);
    assert.equal(decompress(compressed).length, 0);
  });

  it("keeps contexts apart by settings, and drops one whose stream was cut off", async () => {
    const pool = createCompressorPool();
    const a = pool.stream({ level: 3, threads: 0 });
    const b = pool.stream({ level: 1, threads: 0 });
    a.end(sample(100_000, 1));
    b.end(sample(100_000, 2));
    const [ca, cb] = await Promise.all([collect(a), collect(b)]);
    assert.equal(pool.idle, 2);
    assert.equal(decompress(ca).length, 100_000);
    assert.equal(decompress(cb).length, 100_000);

    const cut = pool.stream({ level: 3, threads: 0 });
    assert.equal(pool.idle, 1, "the level-3 context went to the new stream");
    cut.write(sample(200_000, 3));
    cut.on("error", () => {});
    cut.destroy(new Error("client gone"));
    await new Promise((resolve) => cut.once("close", resolve));
    assert.equal(pool.idle, 1, "a context left mid-frame is not reused");
    // A fresh stream with the same settings gets a new, clean context.
    const again = await collect(
      Readable.from([sample(50_000, 4)]).pipe(pool.stream({ level: 3, threads: 0 })),
    );
    assert.equal(sha(decompress(again)), sha(sample(50_000, 4)));
  });
});

/**
 * A source of `count` pieces, each filling the scratch with `fill(i)`, that records how far it was read,
 * whether it was let go of, and can fail at a given piece.
 */
function counting(count: number, fill: (i: number, scratch: Buffer) => void, failAt?: number) {
  const seen = { pulled: 0, returned: false, scratches: new Set<Buffer>() };
  const source: PieceSource = function* (scratch) {
    seen.scratches.add(scratch);
    try {
      for (let i = 0; i < count; i++) {
        if (i === failAt) throw new Error("file 'x' shrank while being read");
        seen.pulled++;
        fill(i, scratch);
        yield scratch;
      }
    } finally {
      seen.returned = true;
    }
  };
  return { source, seen };
}
const randomFill = (_i: number, scratch: Buffer) => {
  randomBytes(scratch.length).copy(scratch);
};
/** What the pieces of a counting source with randomFill were cannot be known; this one is reproducible. */
const textFill = (i: number, scratch: Buffer) => {
  scratch.fill(`piece ${i} of a source with some repetition; `);
};

const hasNix = spawnSync("nix-store", ["--version"]).status === 0;
const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A small tree as store paths have them (a file over several scratches, small files, an empty one, a link), and its NAR by nix-store --dump. */
function treeWithNar(): { path: string; nar: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), "zstd-compress-"));
  made.push(dir);
  mkdirSync(join(dir, "out/lib"), { recursive: true });
  writeFileSync(join(dir, "out/lib/big"), sample(3 * SCRATCH_SIZE + 4321, 9));
  writeFileSync(join(dir, "out/empty"), "");
  for (let i = 0; i < 50; i++) writeFileSync(join(dir, `out/lib/f${i}`), sample(i * 1000, i));
  symlinkSync("lib/big", join(dir, "out/link"));
  const path = join(dir, "out");
  return { path, nar: execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 28 }) };
}

describe("zstd compression straight from a source", () => {
  for (const threads of [0, 2]) {
    it(`compresses a NAR to what nix-store --dump writes, reusing context and scratch (threads ${threads})`, {
      skip: hasNix ? false : "nix-store is not installed",
    }, async () => {
      const { path, nar: expected } = treeWithNar();
      const pool = createCompressorPool();
      const settings = { level: 3, threads, jobSize: 1 << 20 };
      for (let round = 0; round < 2; round++) {
        const compressed = await collect(pool.compress(narSource(path), settings));
        assert.ok(decompress(compressed).equals(expected), `round ${round}`);
        assert.equal(pool.idle, 1, "the context is back in the pool");
        assert.equal(pool.idleScratch, 1, "the scratch is back in the pool");
      }
    });
  }

  it("compresses an empty source to a valid empty frame", async () => {
    const pool = createCompressorPool();
    const compressed = await collect(pool.compress(counting(0, textFill).source, { level: 3, threads: 0 }));
    assert.equal(decompress(compressed).length, 0);
  });

  it("reads no further ahead than a slow consumer takes", async () => {
    const pool = createCompressorPool();
    const pieces = 48;
    // Incompressible, so that every piece gives a scratch-full of output.
    const { source, seen } = counting(pieces, randomFill);
    const body = pool.compress(source, { level: 3, threads: 0 });
    const received: Buffer[] = [];
    let release: (() => void) | undefined;
    const slow = new Writable({
      highWaterMark: 1,
      write(chunk: Buffer, _encoding, done) {
        received.push(chunk);
        release = done;
      },
    });
    body.pipe(slow);
    for (let i = 0; i < 20; i++) await tick();
    assert.ok(seen.pulled <= 2, `pulled ${seen.pulled} pieces for a consumer that took one chunk`);
    assert.ok(
      body.readableLength <= body.readableHighWaterMark + 2 * SCRATCH_SIZE,
      `${body.readableLength} bytes buffered`,
    );
    // Taken at the pace of the consumer, it all comes through.
    while (!body.readableEnded || release) {
      const done = release;
      release = undefined;
      done?.();
      await tick();
      assert.ok(seen.pulled <= received.length + 2, "never far ahead of the consumer");
    }
    assert.equal(seen.pulled, pieces);
    assert.equal(decompress(Buffer.concat(received)).length, pieces * SCRATCH_SIZE);
  });

  it("lets the event loop run while a consumer that always takes more reads it", async () => {
    const pool = createCompressorPool();
    const pieces = 64;
    const { source, seen } = counting(pieces, textFill);
    const body = pool.compress(source, { level: 1, threads: 0 });
    let pulledAtFirstTurn: number | undefined;
    setImmediate(() => {
      pulledAtFirstTurn = seen.pulled;
    });
    let bytes = 0;
    body.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
    });
    await new Promise((resolve) => body.once("end", resolve));
    assert.ok(bytes > 0);
    assert.ok(
      pulledAtFirstTurn !== undefined && pulledAtFirstTurn < pieces,
      `the event loop ran only after ${pulledAtFirstTurn} of ${pieces} pieces`,
    );
  });

  it("fails with the source's error, and drops the context", async () => {
    const pool = createCompressorPool();
    const { source, seen } = counting(10, textFill, 3);
    await assert.rejects(collect(pool.compress(source, { level: 3, threads: 0 })), /shrank while being read/);
    assert.equal(seen.pulled, 3);
    assert.equal(pool.idle, 0, "a context left mid-frame is not reused");
    assert.equal(pool.idleScratch, 1);
  });

  for (const threads of [0, 2]) {
    it(`drops the context and lets go of the source when destroyed mid-frame (threads ${threads})`, async () => {
      const pool = createCompressorPool();
      const settings = { level: 3, threads, jobSize: 1 << 20 };
      const { source, seen } = counting(1000, randomFill);
      const body = pool.compress(source, settings);
      body.on("error", () => {});
      await new Promise((resolve) =>
        body.once("data", () => {
          body.pause();
          resolve(undefined);
        }),
      );
      body.destroy(new Error("server gone"));
      await new Promise((resolve) => body.once("close", resolve));
      assert.ok(seen.returned, "the source was closed");
      assert.ok(seen.pulled < 1000);
      assert.equal(pool.idle, 0, "the context was dropped");
      assert.equal(pool.idleScratch, 1, "the scratch is reusable");
      // The next stream gets a fresh context and the same scratch, and makes a good frame.
      const next = counting(5, textFill);
      const compressed = await collect(pool.compress(next.source, settings));
      assert.deepEqual([...next.seen.scratches], [...seen.scratches]);
      const expected = Buffer.concat(
        Array.from({ length: 5 }, (_, i) => {
          const b = Buffer.alloc(SCRATCH_SIZE);
          textFill(i, b);
          return b;
        }),
      );
      assert.ok(decompress(compressed).equals(expected));
      assert.equal(pool.idle, 1);
    });
  }

  it("stops at once when a consumer destroys it from a data handler", async () => {
    const pool = createCompressorPool();
    const { source, seen } = counting(100, randomFill);
    const body = pool.compress(source, { level: 3, threads: 0 });
    const closed = new Promise((resolve) => body.once("close", resolve));
    body.on("data", () => body.destroy());
    await closed;
    assert.ok(seen.pulled <= 2, `pulled ${seen.pulled}`);
    assert.ok(seen.returned);
    assert.equal(pool.idle, 0);
  });
});

/**
 * A request-like Writable that keeps every chunk it is given until it calls the chunk's callback, some
 * writes later, as a socket does: a chunk changed before its callback would arrive changed.
 */
function slowSink(options: { closeAfter?: number } = {}) {
  const arrived: Buffer[] = [];
  let writes = 0;
  let ended = false;
  const sink = new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _encoding, done) {
      writes++;
      if (options.closeAfter !== undefined && writes > options.closeAfter) {
        sink.destroy();
        return;
      }
      const copy = Buffer.from(chunk);
      // The callback comes a few event-loop turns later; the chunk must still hold what it held.
      setTimeout(() => {
        assert.ok(chunk.equals(copy), "a chunk was changed before its write's callback");
        arrived.push(copy);
        done();
      }, 2);
    },
    final(done) {
      ended = true;
      done();
    },
  });
  return { sink, arrived, ended: () => ended };
}

describe("zstd compression of a whole source at once (compressWhole, batch uploads)", () => {
  it("makes one frame of the whole source, reusing context and scratch", () => {
    const pool = createCompressorPool();
    for (const count of [0, 1, 3]) {
      const { source, seen } = counting(count, textFill);
      const frame = pool.compressWhole(source, { level: 3, threads: 0 });
      const expected = Buffer.concat(
        Array.from({ length: count }, (_, i) => {
          const b = Buffer.alloc(SCRATCH_SIZE);
          textFill(i, b);
          return b;
        }),
      );
      assert.equal(sha(decompress(frame)), sha(expected), `${count} pieces`);
      assert.ok(seen.returned, "the source was let go of");
      assert.equal(pool.idle, 1, "the context is back in the pool");
      assert.equal(pool.idleScratch, 1, "the scratch is back in the pool");
    }
  });

  it("throws the source's error, and drops the context", () => {
    const pool = createCompressorPool();
    const { source, seen } = counting(10, textFill, 3);
    assert.throws(() => pool.compressWhole(source, { level: 3, threads: 0 }), /shrank while being read/);
    assert.equal(seen.pulled, 3);
    assert.equal(pool.idle, 0, "a context left mid-frame is not reused");
    assert.equal(pool.idleScratch, 1);
  });
});

describe("zstd compression sent straight to a request (sendTo)", () => {
  for (const threads of [0, 2]) {
    it(`sends the frame, reusing context, scratch and output buffers (threads ${threads})`, async () => {
      const pool = createCompressorPool();
      const settings = { level: 3, threads, jobSize: 1 << 20 };
      for (let round = 0; round < 2; round++) {
        // Random data: the output is as large as the input, many output buffers' worth.
        const { source } = counting(6, randomFill);
        const body = pool.compress(source, settings);
        const { sink, arrived, ended } = slowSink();
        await body.sendTo(sink);
        assert.ok(body.sent);
        await new Promise((resolve) => sink.once("finish", resolve));
        assert.ok(ended(), "the request was ended");
        assert.ok(arrived.length > 4, `${arrived.length} writes`);
        assert.equal(decompress(Buffer.concat(arrived)).length, 6 * SCRATCH_SIZE);
        assert.equal(pool.idle, 1, "the context is back in the pool");
        assert.equal(pool.idleScratch, 1, "the scratch is back in the pool");
      }
    });
  }

  it("sends what nix-store --dump writes", {
    skip: hasNix ? false : "nix-store is not installed",
  }, async () => {
    const { path, nar: expected } = treeWithNar();
    const pool = createCompressorPool();
    const { sink, arrived } = slowSink();
    await pool.compress(narSource(path), { level: 3, threads: 0 }).sendTo(sink);
    await new Promise((resolve) => sink.once("finish", resolve));
    assert.ok(decompress(Buffer.concat(arrived)).equals(expected));
  });

  it("stops when the request closes mid-frame: drops the context, closes the source", async () => {
    const pool = createCompressorPool();
    const { source, seen } = counting(1000, randomFill);
    const body = pool.compress(source, { level: 3, threads: 0 });
    const { sink } = slowSink({ closeAfter: 3 });
    sink.on("error", () => {});
    await body.sendTo(sink);
    assert.equal(body.sent, false);
    await new Promise((resolve) => (body.closed ? resolve(undefined) : body.once("close", resolve)));
    assert.ok(seen.returned, "the source was closed");
    assert.ok(seen.pulled < 20, `pulled ${seen.pulled}`);
    assert.equal(pool.idle, 0, "a context left mid-frame is not reused");
    assert.equal(pool.idleScratch, 1);
  });

  it("fails with the source's error, and drops the context", async () => {
    const pool = createCompressorPool();
    const { source, seen } = counting(10, textFill, 3);
    const body = pool.compress(source, { level: 3, threads: 0 });
    const errored = new Promise<Error>((resolve) => body.once("error", resolve));
    const { sink, ended } = slowSink();
    await assert.rejects(body.sendTo(sink), /shrank while being read/);
    assert.match((await errored).message, /shrank while being read/);
    assert.equal(seen.pulled, 3);
    assert.equal(ended(), false, "a failed body does not end the request");
    assert.equal(pool.idle, 0);
    assert.equal(pool.idleScratch, 1);
  });
});
