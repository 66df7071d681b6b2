// A worker thread that decodes zstd upload bodies for the main thread (decode-pool.ts). zstd-napi decodes
// synchronously on the thread that calls it; on the main thread that was a third of the CPU an ingest costs
// (with the NAR's sha256 and parsing the rest), so a 2-core machine used one core. Here the decoding runs
// beside the main thread, which keeps hashing, parsing and storing.
//
// Protocol, one upload at a time (messages in order both ways):
//   main → worker  start | data {buffer, length} | end | credit {buffer} | reset
//   worker → main  ready | ack {buffer} | out {buffer, length} | end | error {message, code, name} | reset
// Bytes travel in a few buffers that move back and forth and are reused for every upload, never allocated
// per chunk: `data` brings an input buffer, `ack` returns it once decoded; `out` brings a decoded block,
// `credit` returns its buffer once the main thread has verified it. So memory stays about a MiB in each
// direction however fast either side is, and neither isolate makes garbage (a buffer a chunk, and a
// decoder context an upload, made each collect hundreds of MiB at its own pace).
//
// The loop is zstd-napi's DecompressStream._transform on the same binding, and an input that ends inside a
// frame fails with DecompressStream's message, so errors read as they do when the main thread decodes.
import { parentPort } from "node:worker_threads";
import { zstdBinding as binding } from "./zstd-binding.ts";

export type ToWorker =
  | { t: "start" }
  | { t: "data"; buffer: ArrayBuffer; length: number }
  | { t: "end" }
  | { t: "credit"; buffer: ArrayBuffer }
  | { t: "reset" };

export type FromWorker =
  | { t: "ready" }
  | { t: "ack"; buffer: ArrayBuffer }
  | { t: "out"; buffer: ArrayBuffer; length: number }
  | { t: "end" }
  | { t: "error"; message: string; code: unknown; name: string }
  | { t: "reset" };

/**
 * Output blocks of 4 times zstd's recommended size (ZSTD_DStreamOutSize, 128 KiB), this many of them with
 * the main thread at a time. Each block is two messages (out, credit); at 128 KiB those cost a push of
 * the benchmark closure 0.6 s of main-thread CPU in postMessage alone.
 */
const OUTPUT_BUFFERS = 4;
const BLOCK_FACTOR = 4;

const port = parentPort;
if (port) {
  const post = (message: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(message, transfer);
  const dctx = new binding.DCtx();
  const blockSize = BLOCK_FACTOR * binding.dStreamOutSize();
  const free: ArrayBuffer[] = Array.from({ length: OUTPUT_BUFFERS }, () => new ArrayBuffer(blockSize));
  /** Input buffers received and not yet fully decoded, oldest first; the first is `rest` of it. */
  const queue: { buffer: ArrayBuffer; length: number }[] = [];
  let rest: Uint8Array | undefined;
  let active = false;
  let ending = false;
  let inFrame = false;

  const fail = (error: Error & { code?: unknown }) => {
    active = false;
    post({ t: "error", message: error.message, code: error.code, name: error.name });
  };

  // Decodes queued input while there is an output buffer to decode into.
  const pump = () => {
    try {
      while (active) {
        const head = queue[0];
        if (!head) break;
        rest ??= new Uint8Array(head.buffer, 0, head.length);
        for (;;) {
          const out = free.pop();
          if (!out) return; // every output block is with the main thread: continue on credit
          const [ret, produced, consumed] = dctx.decompressStream(new Uint8Array(out), rest);
          rest = rest.subarray(consumed);
          if (produced > 0) post({ t: "out", buffer: out, length: produced }, [out]);
          else free.push(out);
          if (rest.length === 0 && (produced < blockSize || ret === 0)) {
            inFrame = ret !== 0;
            break;
          }
        }
        queue.shift();
        rest = undefined;
        post({ t: "ack", buffer: head.buffer }, [head.buffer]);
      }
      if (active && ending && queue.length === 0) {
        active = false;
        if (inFrame) fail(new Error("Stream ended in middle of compressed data frame"));
        else post({ t: "end" });
      }
    } catch (error) {
      fail(error as Error);
    }
  };

  port.on("message", (message: ToWorker) => {
    switch (message.t) {
      case "start":
        dctx.reset(binding.ResetDirective.sessionOnly);
        active = true;
        ending = false;
        inFrame = false;
        break;
      case "data":
        queue.push({ buffer: message.buffer, length: message.length });
        pump();
        break;
      case "end":
        ending = true;
        pump();
        break;
      case "credit":
        free.push(message.buffer);
        pump();
        break;
      case "reset":
        // Input not decoded goes home before `reset` says the worker is free again.
        for (const { buffer } of queue.splice(0)) post({ t: "ack", buffer }, [buffer]);
        rest = undefined;
        active = false;
        post({ t: "reset" });
        break;
    }
  });
  post({ t: "ready" });
}
