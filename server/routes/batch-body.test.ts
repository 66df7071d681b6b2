// The framing of a batch upload's body: entries read back whatever the chunks' boundaries, and every way a
// body can be broken refused with the entry it is in.
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { AppError } from "../errors.ts";
import { type BatchLimits, readBatchBody } from "./batch-body.ts";

const entry = (header: Record<string, unknown>, body: Buffer) =>
  Buffer.concat([Buffer.from(`${JSON.stringify({ ...header, bodySize: body.length })}\n`), body]);

/** The body cut into pieces of `size` bytes (1: every byte its own chunk). */
const chunked = (bytes: Buffer, size: number) =>
  Readable.from(
    Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) =>
      bytes.subarray(i * size, (i + 1) * size),
    ),
  );

async function readAll(body: Readable, limits?: BatchLimits) {
  const out: { header: Record<string, unknown>; body: string }[] = [];
  for await (const e of readBatchBody(body, limits))
    out.push({ header: e.header, body: e.body.toString("hex") });
  return out;
}

async function refusal(body: Buffer, limits?: BatchLimits): Promise<AppError> {
  try {
    await readAll(chunked(body, 7), limits);
  } catch (error) {
    assert.ok(error instanceof AppError, String(error));
    return error;
  }
  assert.fail("the body was accepted");
}

describe("batch body framing", () => {
  const bodies = [Buffer.from("first\nwith a newline inside\n"), Buffer.alloc(0), Buffer.alloc(70_000, 0x0a)];
  const bytes = Buffer.concat(bodies.map((b, i) => entry({ n: i, storePath: `p${i}` }, b)));
  const expected = bodies.map((b, i) => ({
    header: { n: i, storePath: `p${i}`, bodySize: b.length },
    body: b.toString("hex"),
  }));

  it("reads entries back whatever the chunks (bodies full of newlines, an empty one)", async () => {
    for (const size of [1, 3, 64, 65_536, bytes.length])
      assert.deepEqual(await readAll(chunked(bytes, size)), expected, `chunks of ${size}`);
  });

  it("refuses what it cannot frame, naming the entry", async () => {
    const one = entry({ storePath: "a" }, Buffer.from("abc"));
    const cases: [string, Buffer, string, RegExp][] = [
      ["empty", Buffer.alloc(0), "bad_request", /empty batch/],
      [
        "not JSON",
        Buffer.concat([one, Buffer.from("nope\n")]),
        "bad_request",
        /entry 2: the line is not valid JSON/,
      ],
      ["not an object", Buffer.from("[1]\n"), "bad_request", /entry 1: the line is not a JSON object/],
      ["no bodySize", Buffer.from('{"storePath":"a"}\n'), "bad_request", /entry 1: bodySize must be/],
      ["negative bodySize", Buffer.from('{"bodySize":-1}\n'), "bad_request", /entry 1: bodySize must be/],
      ["body cut short", one.subarray(0, -1), "bad_request", /entry 1: the body ends after 2 of its 3 bytes/],
      [
        "line cut short",
        Buffer.concat([one, Buffer.from('{"a":')]),
        "bad_request",
        /entry 2: .*inside its JSON line/,
      ],
    ];
    for (const [name, body, code, message] of cases) {
      const error = await refusal(body);
      assert.equal(error.code, code, name);
      assert.match(error.message, message, name);
    }
  });

  it("keeps to its limits: entries, JSON line, bodies together", async () => {
    const limits = { entries: 2, headerBytes: 100, bodyBytes: 10 };
    const small = entry({}, Buffer.from("12345"));
    assert.equal((await readAll(chunked(Buffer.concat([small, small]), 4), limits)).length, 2);
    const cases: [Buffer, RegExp][] = [
      [Buffer.concat([small, small, small]), /more than 2 entries/],
      [entry({ pad: "x".repeat(200) }, Buffer.alloc(1)), /entry 1: JSON line longer than 100 bytes/],
      [Buffer.concat([small, entry({}, Buffer.alloc(6))]), /entry 2: .*at most 10 bytes/],
    ];
    for (const [body, message] of cases) {
      const error = await refusal(body, limits);
      assert.equal(error.code, "payload_too_large");
      assert.match(error.message, message);
    }
  });
});
