// A stored file, or a byte range of it, as a response body (local storage's NARs and build logs).
//
// It is a Readable like any other for whoever reads it; a socket response takes it through sendTo() instead,
// which has the kernel send it with sendfile(2) where it can (server/sendfile.ts), and otherwise reads the
// file into a few buffers reused from one download to the next. Why the reuse: an fs stream allocates a
// fresh buffer for every chunk, and at a gigabyte a second those buffers (memory outside V8's heap, but
// accounted to it) set off a full mark-and-sweep of the server's heap every few tens of megabytes. `perf
// record` of the server sending one 109 MB NAR put a third of its CPU in V8's marking and sweeping, and it
// sent at half the speed of a bare node:http file server, whose heap is a fraction of ours (issue 7).

import { close, read } from "node:fs";
import { ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { constants } from "node:os";
import { Readable, type Writable } from "node:stream";
import { SendfileError, startSendfile } from "./sendfile.ts";

/** Bytes per read. */
const CHUNK = 256 * 1024;
/** Buffers one download may have written and not yet flushed to the socket: one is read while one is sent. */
const IN_FLIGHT = 2;
/** Idle buffers kept for the next downloads (4 MiB); more are made when many run at once. */
const KEEP = 16;
const spare: Buffer[] = [];
const take = () => spare.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
const give = (buffer: Buffer) => {
  if (spare.length < KEEP) spare.push(buffer);
};
const NOTHING = Buffer.alloc(0);
const { ECANCELED } = constants.errno;

/** The descriptor of a plain TCP socket (not TLS), or undefined. */
function socketFd(socket: Socket): number | undefined {
  if ("encrypted" in socket) return undefined;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}

function readAt(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, 0, length, position, (error, bytes) => (error ? reject(error) : resolve(bytes)));
  });
}

export class FileBody extends Readable {
  readonly #fd: number;
  #position: number;
  #left: number;
  #closed = false;

  /** Takes over `fd` (closed when the body ends or is destroyed) to send `length` bytes from `start`. */
  constructor(fd: number, start: number, length: number) {
    super({ highWaterMark: CHUNK });
    this.#fd = fd;
    this.#position = start;
    this.#left = length;
  }

  /** The next piece of the file, read into `buffer` (at most its length); fails if the file ends early. */
  async #next(buffer: Buffer): Promise<Buffer> {
    const length = Math.min(buffer.length, this.#left);
    const bytes = await readAt(this.#fd, buffer, length, this.#position);
    if (bytes === 0) throw new Error(`file ended ${this.#left} bytes early`);
    this.#position += bytes;
    this.#left -= bytes;
    return bytes === buffer.length ? buffer : buffer.subarray(0, bytes);
  }

  override _read(): void {
    if (this.#left === 0) {
      this.push(null);
      return;
    }
    // Read by a consumer that keeps what it is given: a fresh buffer each time.
    this.#next(Buffer.allocUnsafeSlow(Math.min(CHUNK, this.#left))).then(
      (chunk) => this.push(chunk),
      (error: Error) => this.destroy(error),
    );
  }

  override _destroy(error: Error | null, done: (error: Error | null) => void): void {
    this.#close();
    done(error);
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#fd, () => {});
  }

  /**
   * Sends what is left of the file to `out` and ends it; a read error destroys `out` (the client sees a short
   * body), `out` closing early (the client went away) stops the sending and closes the file. Use instead of
   * reading this stream, not besides. On the current response of a plain TCP socket the kernel sends it
   * (sendfile), once node:http has flushed the head; otherwise it is copied through reused buffers.
   */
  async sendTo(out: Writable): Promise<void> {
    try {
      // A pipelined response waiting its turn has no socket yet.
      const socket = out instanceof ServerResponse && !out.destroyed ? out.socket : null;
      if (socket) (out as ServerResponse).flushHeaders();
      const whole = (socket && (await this.#kernelSend(socket, out))) ?? (await this.#copy(out));
      if (whole) out.end();
    } catch (error) {
      out.destroy(error as Error);
    } finally {
      this.destroy();
    }
  }

  /**
   * Writes what is left of the file to `socket` after what was written to it before (a response head), and
   * leaves it open for the next response: resolves once every byte is with the kernel, rejects when the file
   * fails or the socket closes first (the caller then destroys the socket). The file is closed either way.
   */
  async writeTo(socket: Socket): Promise<void> {
    try {
      const whole = (await this.#kernelSend(socket, socket)) ?? (await this.#copy(socket));
      if (!whole) throw new Error("the connection closed before the body was sent");
    } finally {
      this.destroy();
    }
  }

  /**
   * Sends the rest with sendfile(2) to `socket` (whose closing `watch` reports): true when all was sent,
   * false when the socket closed first; undefined, with nothing sent, when the kernel cannot do it here (no
   * addon, TLS, nothing left), for the copy to do instead. Everything Node has queued on the socket goes
   * first, and Node must write nothing to it until this settles.
   */
  async #kernelSend(socket: Socket, watch: Writable): Promise<boolean | undefined> {
    const fd = this.#left > 0 ? socketFd(socket) : undefined;
    if (fd === undefined) return undefined;
    // Writes on a socket complete in order: once this empty one has, what was queued is with the kernel.
    if (socket.writableLength > 0)
      await new Promise<void>((resolve) => socket.write(NOTHING, () => resolve()));
    if (watch.destroyed || socket.destroyed) return false;
    if (socket.writableLength > 0) return undefined;
    const sending = startSendfile(fd, this.#fd, this.#position, this.#left);
    if (!sending) return undefined;
    const onClose = () => sending.cancel();
    watch.once("close", onClose);
    try {
      const sent = await sending.done;
      this.#position += sent;
      this.#left -= sent;
      return true;
    } catch (error) {
      // The peer went away (the cancel above), or the send failed.
      if (error instanceof SendfileError && error.errno === ECANCELED) return false;
      throw error;
    } finally {
      watch.removeListener("close", onClose);
    }
  }

  /**
   * Copies the rest into `out` through reused buffers: true when all was written, false when `out` closed
   * first; a read error rejects. A buffer goes back to the pool once `out` has handed it to the kernel (its
   * write callback), never earlier, and at most IN_FLIGHT of them are out at once: that is the backpressure.
   */
  async #copy(out: Writable): Promise<boolean> {
    let gone = out.destroyed;
    let wake: (() => void) | undefined;
    const onClose = () => {
      gone = true;
      wake?.();
    };
    out.once("close", onClose);
    let held = 0;
    try {
      while (this.#left > 0 && !gone) {
        while (held >= IN_FLIGHT && !gone)
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
        if (gone) break;
        const buffer = take();
        let chunk: Buffer;
        try {
          chunk = await this.#next(buffer);
        } catch (error) {
          give(buffer);
          throw error;
        }
        if (gone) {
          give(buffer);
          break;
        }
        held++;
        out.write(chunk, (error) => {
          held--;
          // A write that failed may still be referenced by the socket's queue: left to the collector.
          if (!error) give(buffer);
          wake?.();
        });
      }
      // Written means handed to `out`; wait for the last buffers to be with the kernel before the caller
      // writes after them or ends.
      while (held > 0 && !gone)
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      return !gone;
    } finally {
      out.removeListener("close", onClose);
    }
  }
}
