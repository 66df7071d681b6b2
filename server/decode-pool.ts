// A few long-lived worker threads (decode-worker.ts) that decode zstd upload bodies and check the decoded
// NAR, so a compressed ingest uses two cores: the main thread receives, hashes what it stores (FileHash) and
// stores it, while a worker decompresses, counts, parses and hashes the NAR (nar-check.ts). acquire() hands
// out a Writable that takes the body where receive.ts's TeeTap would write it into an in-thread decoder; it
// finishes once the worker has decoded and checked the whole body, and then `verified()` says what the NAR
// is. A decoder or check error comes back with its message, code and kind, so it maps to the same HTTP error
// as in-thread.
//
// Small NARs (a claimed NarSize under IN_THREAD_BELOW) and uploads that find every worker busy are decoded
// on this thread instead (ZstdNarDecoder), on a decoder context and block kept here for the next upload
// (each context holds zstd's window, a few MiB that the garbage collector would otherwise be asked to
// reclaim once per upload). For a small NAR the worker's round trips (start, data, ack, end, each waking a
// thread) cost more than decoding it here.
//
// The worker script is loaded beside this module: server/dist/decode-worker.mjs from the bundle (a second
// esbuild entry point, see package.json "build"), server/decode-worker.ts from the sources (`npm run dev`,
// tests), with tsx's loader registered in the worker first (startSourceWorker).
import { Writable } from "node:stream";
import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import { NixFormatError } from "../nix/index.ts";
import { type ReusableDecoding, ZstdSinkDecoder } from "./compression.ts";
import type { FromWorker, ToWorker } from "./decode-worker.ts";
import { NarCheck, NarTooLong, type VerifiedNar } from "./nar-check.ts";
import { STAGE_BUFFER } from "./streams.ts";
import { zstdBinding } from "./zstd-binding.ts";

/**
 * Encoded input goes to a worker in buffers of this size, at most INPUT_BUFFERS of them at a time. Each
 * buffer costs two messages (its data, its ack), each a structured clone and a wake-up of the other thread:
 * 1 MiB buffers instead of 256 KiB took a 1 GiB zstd ingest from ~3.8 to ~3.2 server CPU s (BENCHMARKS.md,
 * session 27), for 3 MiB more per worker.
 */
const INPUT_BUFFER_SIZE = 1024 * 1024;
const INPUT_BUFFERS = 4;
/** In-thread decoder contexts kept for reuse: about the uploads that run at once beside the workers. */
const KEEP_CONTEXTS = 8;
/** NARs claimed smaller than this are decoded on this thread (see the header). */
export const IN_THREAD_BELOW = 1024 * 1024;

/** A zstd decoder that checks the NAR it decodes; `verified()` once it has finished. */
export interface NarDecoder extends Writable {
  /** The checked NAR; only after the stream finished without error. */
  verified(): VerifiedNar;
}

/**
 * zstd decoded on this thread into a NarCheck: for small NARs, for uploads that find every worker busy, and
 * for servers without a pool. Fails with NarTooLong past `limit`, NixFormatError for a bad NAR.
 */
export class ZstdNarDecoder extends ZstdSinkDecoder implements NarDecoder {
  readonly #check: NarCheck;
  constructor(
    limit: number | undefined,
    reuse?: ReusableDecoding & { release(reused: ReusableDecoding): void },
  ) {
    const check = new NarCheck(limit);
    super((block) => check.update(block), reuse);
    this.#check = check;
  }
  verified(): VerifiedNar {
    return this.#check.finish();
  }
}

export interface DecoderPool {
  /**
   * A zstd decoder that checks the NAR it decodes against `narSizeLimit` (the claimed NarSize): on an idle
   * worker, or on this thread for a small NAR or when none is idle; undefined once the pool is closed.
   */
  acquire(options: { narSizeLimit?: number | undefined }): NarDecoder | undefined;
  /** Workers free for an upload now (not starting, busy, resetting or dead). */
  readonly idle: number;
  /** Stops the workers; uploads still decoding on them fail. */
  close(): Promise<void>;
}

type SlotState = "starting" | "idle" | "busy" | "resetting" | "dead";

interface Slot {
  worker: Worker;
  state: SlotState;
  job: RemoteDecoder | undefined;
  /** Input buffers on this side, reused by every upload on this worker. */
  inputs: ArrayBuffer[];
  allocated: number;
}

export function createDecoderPool({
  size,
  log,
  inputBufferSize = INPUT_BUFFER_SIZE,
}: {
  size: number;
  log: Logger;
  /** Bytes per input buffer (tests make them small, to have an upload wait for the worker's acks). */
  inputBufferSize?: number;
}): DecoderPool {
  const bundled = import.meta.url.endsWith(".mjs");
  const script = new URL(bundled ? "./decode-worker.mjs" : "./decode-worker.ts", import.meta.url);
  const slots: Slot[] = [];
  const contexts: ReusableDecoding[] = [];
  let closed = false;
  for (let i = 0; i < size; i++) {
    const worker = bundled ? new Worker(script) : startSourceWorker(script);
    // Idle workers must not keep a process alive that is otherwise done.
    worker.unref();
    const slot: Slot = { worker, state: "starting", job: undefined, inputs: [], allocated: 0 };
    worker.on("message", (message: FromWorker) => {
      switch (message.t) {
        case "ready":
        case "reset":
          if (slot.state === "starting" || slot.state === "resetting") slot.state = "idle";
          return;
        case "ack":
          slot.inputs.push(message.buffer);
          break;
      }
      slot.job?.receive(message);
    });
    const fail = (error: Error) => {
      if (slot.state !== "dead" && !closed) log.warn({ err: error }, "decoder worker stopped");
      slot.state = "dead";
      slot.job?.destroy(error);
      slot.job = undefined;
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`decoder worker exited (code ${code})`)));
    slots.push(slot);
  }

  return {
    acquire({ narSizeLimit }) {
      if (closed) return undefined;
      const small = narSizeLimit !== undefined && narSizeLimit < IN_THREAD_BELOW;
      const slot = small ? undefined : slots.find((s) => s.state === "idle");
      if (!slot) {
        const reused = contexts.pop() ?? {
          dctx: new zstdBinding.DCtx(),
          block: Buffer.allocUnsafeSlow(zstdBinding.dStreamOutSize()),
        };
        return new ZstdNarDecoder(narSizeLimit, {
          ...reused,
          release: (ended) => {
            ended.dctx.reset(zstdBinding.ResetDirective.sessionOnly);
            if (contexts.length < KEEP_CONTEXTS) contexts.push(ended);
          },
        });
      }
      slot.state = "busy";
      const post = (message: ToWorker, transfer?: ArrayBuffer[]) =>
        slot.worker.postMessage(message, transfer);
      const job = new RemoteDecoder({
        post,
        limit: narSizeLimit,
        input: () => {
          const buffer = slot.inputs.pop();
          if (buffer || slot.allocated >= INPUT_BUFFERS) return buffer;
          slot.allocated++;
          return new ArrayBuffer(inputBufferSize);
        },
        release: (unused, reset) => {
          if (unused) slot.inputs.push(unused);
          if (slot.job !== job) return;
          slot.job = undefined;
          if (slot.state !== "busy") return;
          if (reset) {
            slot.state = "resetting";
            post({ t: "reset" });
          } else {
            slot.state = "idle";
          }
        },
      });
      slot.job = job;
      post({ t: "start", limit: narSizeLimit });
      return job;
    },
    get idle() {
      return closed ? 0 : slots.filter((s) => s.state === "idle").length;
    },
    async close() {
      closed = true;
      await Promise.all(slots.map((slot) => slot.worker.terminate()));
    },
  };
}

/**
 * The worker from the TypeScript sources (`npm run dev`, tests). Node 20 does not carry tsx's loader
 * (registered by `--import tsx`) into worker threads, so the worker registers it before importing the script.
 */
function startSourceWorker(script: URL): Worker {
  const tsx = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsx)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(script.href)}); });`;
  return new Worker(bootstrap, { eval: true });
}

interface RemoteDecoderOptions {
  post: (message: ToWorker, transfer?: ArrayBuffer[]) => void;
  /** The claimed NarSize the worker checks against. */
  limit: number | undefined;
  /** A free input buffer, or undefined while all are with the worker (an `ack` brings one back). */
  input: () => ArrayBuffer | undefined;
  /** Gives the worker back (with the input buffer this side still held): reset unless it ended cleanly. */
  release: (unused: ArrayBuffer | undefined, reset: boolean) => void;
}

/** The main thread's end of one upload's decoding: writes go to the worker, its verdict comes back. */
class RemoteDecoder extends Writable implements NarDecoder {
  readonly #options: RemoteDecoderOptions;
  #released = false;
  #verified: VerifiedNar | undefined;
  #filling: Uint8Array | undefined;
  #filled = 0;
  #waitingWrite: (() => void) | undefined;
  #finalDone: ((error?: Error | null) => void) | undefined;

  constructor(options: RemoteDecoderOptions) {
    super({ highWaterMark: STAGE_BUFFER });
    this.#options = options;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    // Copied (the caller still stores the original) into a reusable buffer, sent to the worker when full.
    this.#copyIn(chunk, 0, done);
  }

  #copyIn(chunk: Buffer, from: number, done: (error?: Error | null) => void): void {
    let offset = from;
    while (offset < chunk.length) {
      if (!this.#filling) {
        const buffer = this.#options.input();
        if (!buffer) {
          // Every buffer is with the worker: continue when one comes back.
          this.#waitingWrite = () => this.#copyIn(chunk, offset, done);
          return;
        }
        this.#filling = new Uint8Array(buffer);
        this.#filled = 0;
      }
      const target = this.#filling;
      const n = Math.min(chunk.length - offset, target.length - this.#filled);
      target.set(chunk.subarray(offset, offset + n), this.#filled);
      this.#filled += n;
      offset += n;
      if (this.#filled === target.length) this.#send();
    }
    done();
  }

  #send(): void {
    const filling = this.#filling;
    if (!filling || this.#filled === 0) return;
    const buffer = filling.buffer as ArrayBuffer;
    this.#options.post({ t: "data", buffer, length: this.#filled }, [buffer]);
    this.#filling = undefined;
    this.#filled = 0;
  }

  override _final(done: (error?: Error | null) => void): void {
    // Finished once the worker has decoded and checked everything.
    this.#send();
    this.#finalDone = done;
    this.#options.post({ t: "end" });
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    this.#finish(true);
    done(error);
  }

  /** A message from the worker about this upload. */
  receive(message: FromWorker): void {
    switch (message.t) {
      case "ack": {
        const waiting = this.#waitingWrite;
        this.#waitingWrite = undefined;
        waiting?.();
        break;
      }
      case "end": {
        this.#verified = message.nar;
        this.#finish(false);
        const done = this.#finalDone;
        this.#finalDone = undefined;
        done?.();
        break;
      }
      case "error":
        this.destroy(decoderError(message, this.#options.limit));
        break;
    }
  }

  verified(): VerifiedNar {
    if (!this.#verified) throw new Error("the NAR was not verified: the upload has not finished");
    return this.#verified;
  }

  /** Hands the worker back: as it is after a clean end, reset after a failure or an abandoned upload. */
  #finish(reset: boolean): void {
    if (this.#released) return;
    this.#released = true;
    const unused = this.#filling?.buffer as ArrayBuffer | undefined;
    this.#filling = undefined;
    this.#options.release(unused, reset);
  }
}

/** The worker's error as the in-thread decoder would have thrown it (asUploadError reads both). */
function decoderError(message: Extract<FromWorker, { t: "error" }>, limit: number | undefined): Error {
  if (message.name === "NixFormatError") return new NixFormatError(message.message);
  if (message.name === "NarTooLong" && limit !== undefined) return new NarTooLong(limit);
  const error = Object.assign(new Error(message.message), { code: message.code });
  if (message.name !== "Error") error.name = message.name;
  return error;
}
