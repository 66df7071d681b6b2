import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { fstatSync, mkdtempSync, openSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { FileBody } from "./file-body.ts";
import { sendfileCounts, sendfileUnavailable } from "./sendfile.ts";

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

describe("FileBody through sendfile(2), to a real socket", () => {
  const content = randomBytes(8 * 1024 * 1024 + 4321);
  const file = fileOf(content);
  /** What the server was asked to send next: a descriptor and a range (or a length past the file's end). */
  let next: { fd: number; start: number; length: number } | undefined;
  const sends: Promise<void>[] = [];
  const server = http.createServer((_req, res) => {
    const job = next ?? { fd: openSync(file, "r"), start: 0, length: content.length };
    next = undefined;
    res.setHeader("content-length", job.length);
    sends.push(new FileBody(job.fd, job.start, job.length).sendTo(res));
  });
  let base = "";
  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  /** One GET on `agent`; reads slowly when asked (a pause before each chunk), or hangs up after `cutAfter` bytes. */
  function get(agent: http.Agent, opts: { pauseMs?: number; cutAfter?: number } = {}) {
    return new Promise<{ status: number; bytes: Buffer; complete: boolean }>((resolve, reject) => {
      http
        .get(base, { agent }, (res) => {
          const parts: Buffer[] = [];
          let got = 0;
          res.on("data", (chunk: Buffer) => {
            parts.push(chunk);
            got += chunk.length;
            if (opts.cutAfter !== undefined && got >= opts.cutAfter) {
              res.destroy();
              resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false });
            } else if (opts.pauseMs) {
              res.pause();
              setTimeout(() => res.resume(), opts.pauseMs);
            }
          });
          res.on("end", () =>
            resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: res.complete }),
          );
          res.on("error", () =>
            resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false }),
          );
        })
        .on("error", reject);
    });
  }

  it("is built and loaded (npm ci builds server/native)", () => {
    assert.equal(sendfileUnavailable, undefined, `the sendfile addon did not load: ${sendfileUnavailable}`);
  });

  it("sends whole files and ranges, many at once, on keep-alive connections the kernel wrote to", async () => {
    const before = sendfileCounts.started;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const wholes = await Promise.all(Array.from({ length: 8 }, () => get(agent)));
    for (const r of wholes) {
      assert.equal(r.status, 200);
      assert.ok(r.complete);
      assert.ok(r.bytes.equals(content), "every byte, in order");
    }
    next = { fd: openSync(file, "r"), start: 123_457, length: 5_000_000 };
    const range = await get(agent);
    assert.ok(range.bytes.equals(content.subarray(123_457, 5_123_457)));
    agent.destroy();
    await Promise.all(sends);
    assert.equal(sendfileCounts.started - before, 9, "every body went through sendfile");
  });

  it("waits for a client that reads slowly", async () => {
    const agent = new http.Agent({ keepAlive: false });
    const r = await get(agent, { pauseMs: 20 });
    assert.ok(r.complete);
    assert.ok(r.bytes.equals(content));
  });

  it("stops, closes the file and keeps serving when the client hangs up mid-body", async () => {
    const fd = openSync(file, "r");
    next = { fd, start: 0, length: content.length };
    const failedBefore = sendfileCounts.failed;
    const agent = new http.Agent({ keepAlive: false });
    const cut = await get(agent, { cutAfter: 1, pauseMs: 50 });
    assert.ok(!cut.complete && cut.bytes.length < content.length);
    await Promise.all(sends);
    assert.equal(sendfileCounts.failed - failedBefore, 1);
    await sleep(10); // the close itself is asynchronous
    assert.throws(() => fstatSync(fd), { code: "EBADF" });
    const after = await get(agent);
    assert.ok(after.bytes.equals(content), "the next download is whole");
  });

  it("cuts the response when the file is shorter than promised", async () => {
    const fd = openSync(fileOf(content.subarray(0, 100_000)), "r");
    next = { fd, start: 0, length: 500_000 };
    const r = await get(new http.Agent({ keepAlive: false }));
    assert.ok(!r.complete);
    assert.ok(r.bytes.length <= 100_000);
    await Promise.all(sends);
    await sleep(10); // the close itself is asynchronous
    assert.throws(() => fstatSync(fd), { code: "EBADF" });
  });
});
