// A worker thread that decodes zstd upload bodies and checks the decoded NAR (nar-check.ts: count, parse,
// hash) for the main thread (decode-pool.ts). zstd-napi decodes synchronously on the thread that calls it,
// and the NAR's sha256 and parsing are the rest of what an ingest costs: here they run beside the main
// thread, which keeps receiving, hashing what it stores and storing it. Decoded bytes never leave this
// thread; the main thread gets the verdict (NarHash, NarSize, listing) or the error.
//
// Protocol, one upload at a time (messages in order both ways):
//   main → worker  start {limit} | data {buffer, length} | end | reset
//   worker → main  ready | ack {buffer} | end {nar} | error {message, code, name} | reset
// Input travels in a few buffers that move back and forth and are reused for every upload, never allocated
// per chunk: `data` brings an input buffer, `ack` returns it once decoded. Decoding goes into one block
// reused for every upload, so this isolate makes no garbage per byte either.
//
// The loop is zstd-napi's DecompressStream._transform on the same binding, and an input that ends inside a
// frame fails with DecompressStream's message, so errors read as they do when the main thread decodes.
import { parentPort } from "node:worker_threads";
import { NarCheck, type VerifiedNar } from "./nar-check.ts";
import { zstdBinding as binding } from "./zstd-binding.ts";

export type ToWorker =
  | { t: "start"; limit: number | undefined }
  | { t: "data"; buffer: ArrayBuffer; length: number }
  | { t: "end" }
  | { t: "reset" };

export type FromWorker =
  | { t: "ready" }
  | { t: "ack"; buffer: ArrayBuffer }
  | { t: "end"; nar: VerifiedNar }
  | { t: "error"; message: string; code: unknown; name: string }
  | { t: "reset" };

/** The decoded block: 4 times zstd's recommended size (ZSTD_DStreamOutSize, 128 KiB), for fewer calls. */
const BLOCK_FACTOR = 4;
/**
 * Decoded bytes per turn of this thread's event loop: a body of extreme ratio (zeros compress ~30,000:1)
 * still lets a `reset` for an abandoned upload through between turns.
 */
const DECODE_TURN = 8 * 1024 * 1024;

const port = parentPort;
if (port) {
  const post = (message: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(message, transfer);
  const dctx = new binding.DCtx();
  const block = new Uint8Array(BLOCK_FACTOR * binding.dStreamOutSize());
  /** Input buffers received and not yet fully decoded, oldest first; the first is `rest` of it. */
  const queue: { buffer: ArrayBuffer; length: number }[] = [];
  let rest: Uint8Array | undefined;
  let check: NarCheck | undefined;
  let ending = false;
  let inFrame = false;
  let resumeScheduled = false;

  const fail = (error: Error & { code?: unknown }) => {
    check = undefined;
    post({ t: "error", message: error.message, code: error.code, name: error.name });
  };

  // Decodes queued input into the check, DECODE_TURN bytes at a time.
  const pump = () => {
    try {
      let made = 0;
      while (check) {
        const head = queue[0];
        if (!head) break;
        rest ??= new Uint8Array(head.buffer, 0, head.length);
        for (;;) {
          const [ret, produced, consumed] = dctx.decompressStream(block, rest);
          rest = rest.subarray(consumed);
          if (produced > 0) check.update(block.subarray(0, produced));
          made += produced;
          if (rest.length === 0 && (produced < block.length || ret === 0)) {
            inFrame = ret !== 0;
            break;
          }
          if (made >= DECODE_TURN) {
            if (!resumeScheduled) {
              resumeScheduled = true;
              setImmediate(() => {
                resumeScheduled = false;
                pump();
              });
            }
            return;
          }
        }
        queue.shift();
        rest = undefined;
        post({ t: "ack", buffer: head.buffer }, [head.buffer]);
      }
      if (check && ending && queue.length === 0) {
        const done = check;
        check = undefined;
        if (inFrame) fail(new Error("Stream ended in middle of compressed data frame"));
        else post({ t: "end", nar: done.finish() });
      }
    } catch (error) {
      fail(error as Error);
    }
  };

  port.on("message", (message: ToWorker) => {
    switch (message.t) {
      case "start":
        dctx.reset(binding.ResetDirective.sessionOnly);
        check = new NarCheck(message.limit);
        ending = false;
        inFrame = false;
        break;
      case "data":
        queue.push({ buffer: message.buffer, length: message.length });
        if (!resumeScheduled) pump();
        break;
      case "end":
        ending = true;
        if (!resumeScheduled) pump();
        break;
      case "reset":
        // Input not decoded goes home before `reset` says the worker is free again.
        for (const { buffer } of queue.splice(0)) post({ t: "ack", buffer }, [buffer]);
        rest = undefined;
        check = undefined;
        post({ t: "reset" });
        break;
    }
  });
  post({ t: "ready" });
}
