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
import { Readable, type Writable } from "node:stream";
import { startSendfile } from "./sendfile.ts";

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
   * Sends what is left of the file with sendfile(2) when `out` is the current response on a plain TCP socket
   * and the addon is there: true once done (sent and ended, or failed and destroyed), false to copy instead.
   * The kernel sends only after everything Node has queued on the socket (the response's head) is out, and
   * Node writes nothing to it until the kernel is done: then `out.end()` finishes the response as usual.
   */
  async #sendfile(out: Writable): Promise<boolean> {
    // A pipelined response waiting its turn has no socket yet.
    const socket = out instanceof ServerResponse ? out.socket : null;
    const fd = socket && !out.destroyed && this.#left > 0 ? socketFd(socket) : undefined;
    if (!socket || fd === undefined) return false;
    (out as ServerResponse).flushHeaders();
    // Writes on a socket complete in order: once this empty one has, the head is with the kernel.
    if (socket.writableLength > 0)
      await new Promise<void>((resolve) => socket.write(NOTHING, () => resolve()));
    if (socket.writableLength > 0 || out.destroyed || socket.destroyed) return false;
    const sending = startSendfile(fd, this.#fd, this.#position, this.#left);
    if (!sending) return false;
    const onClose = () => sending.cancel();
    out.once("close", onClose);
    try {
      const sent = await sending.done;
      this.#position += sent;
      this.#left -= sent;
      out.end();
    } catch (error) {
      // The peer went away (the cancel above) or the send failed: the client sees a short body.
      out.destroy(error as Error);
    } finally {
      out.removeListener("close", onClose);
      this.destroy();
    }
    return true;
  }

  /**
   * Writes what is left of the file to `out` and ends it; a read error destroys `out` (the client sees a
   * short body), `out` closing early (the client went away) stops the reading. Use instead of reading this
   * stream, not besides. A buffer goes back to the pool once `out` has handed it to the kernel (its write
   * callback), never earlier, and at most IN_FLIGHT of them are out at once: that is the backpressure.
   */
  async sendTo(out: Writable): Promise<void> {
    if (await this.#sendfile(out)) return;
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
      if (!gone) out.end();
    } catch (error) {
      out.destroy(error as Error);
    } finally {
      out.removeListener("close", onClose);
      this.destroy();
    }
  }
}
