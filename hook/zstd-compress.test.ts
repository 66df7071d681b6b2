import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { decompress } from "zstd-napi";
import { createCompressorPool } from "./zstd-compress.ts";

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
