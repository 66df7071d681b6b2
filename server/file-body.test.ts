import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { fstatSync, mkdtempSync, openSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { FileBody } from "./file-body.ts";

const dir = mkdtempSync(join(tmpdir(), "file-body-"));
function fileOf(bytes: Buffer): string {
  const file = join(dir, randomBytes(6).toString("hex"));
  writeFileSync(file, bytes);
  return file;
}

/**
 * A slow destination: each write is acknowledged a little later, and only then is what it was given copied.
 * A sender that refilled a buffer before its write was acknowledged would show up as corrupted output.
 */
class SlowSink extends Writable {
  readonly parts: Buffer[] = [];
  inFlight = 0;
  maxInFlight = 0;
  constructor(readonly delayMs = 1) {
    super({ highWaterMark: 1 });
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    setTimeout(() => {
      this.parts.push(Buffer.from(chunk));
      this.inFlight--;
      done();
    }, this.delayMs);
  }
  get bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const ended = (w: Writable) =>
  new Promise<void>((resolve, reject) => {
    w.once("finish", resolve);
    w.once("error", reject);
  });

describe("FileBody", () => {
  const content = randomBytes(3 * 1024 * 1024 + 12345);

  it("reads a whole file, or a range of it, as a plain stream", async () => {
    const file = fileOf(content);
    const whole: Buffer[] = [];
    for await (const chunk of new FileBody(openSync(file, "r"), 0, content.length))
      whole.push(chunk as Buffer);
    assert.deepEqual(Buffer.concat(whole), content);
    const part: Buffer[] = [];
    for await (const chunk of new FileBody(openSync(file, "r"), 1000, 300_000)) part.push(chunk as Buffer);
    assert.deepEqual(Buffer.concat(part), content.subarray(1000, 301_000));
  });

  it("sends through reused buffers without touching one the destination still holds", async () => {
    const other = randomBytes(2 * 1024 * 1024 + 7);
    const a = new SlowSink();
    const b = new SlowSink(2);
    // Two at once, sharing the buffer pool; the second a range.
    await Promise.all([
      new FileBody(openSync(fileOf(content), "r"), 0, content.length).sendTo(a),
      new FileBody(openSync(fileOf(other), "r"), 77, other.length - 77).sendTo(b),
      ended(a),
      ended(b),
    ]);
    assert.deepEqual(a.bytes, content);
    assert.deepEqual(b.bytes, other.subarray(77));
    assert.ok(a.maxInFlight <= 2, `${a.maxInFlight} writes in flight`);
    // Again, now that the pool holds buffers another download used.
    const c = new SlowSink();
    await Promise.all([new FileBody(openSync(fileOf(other), "r"), 0, other.length).sendTo(c), ended(c)]);
    assert.deepEqual(c.bytes, other);
  });

  it("stops reading and closes the file when the destination goes away", async () => {
    const fd = openSync(fileOf(content), "r");
    const sink = new SlowSink(5);
    const sending = new FileBody(fd, 0, content.length).sendTo(sink);
    await sleep(8);
    sink.destroy();
    await sending;
    assert.ok(sink.bytes.length < content.length, "stopped early");
    await sleep(10);
    assert.throws(() => fstatSync(fd), { code: "EBADF" });
  });

  it("cuts the response when the file is shorter than promised", async () => {
    const fd = openSync(fileOf(content.subarray(0, 100_000)), "r");
    const sink = new SlowSink();
    const failed = new Promise<Error>((resolve) => sink.once("error", resolve));
    await new FileBody(fd, 0, 500_000).sendTo(sink);
    assert.match((await failed).message, /ended 400000 bytes early/);
    assert.ok(sink.destroyed);
    assert.ok(sink.bytes.length <= 100_000);
  });
});
