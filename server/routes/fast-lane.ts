// The fast lane: the hottest reads of a binary cache (narinfo, nix-cache-info, and NARs: from local storage,
// from memory, or as a redirect to the bucket) answered straight from the socket, and every other request
// handed, with its connection, to node:http and the Hono app. A NAR is sent by the kernel after its head (a
// StreamedBody: FileBody.writeTo), and the connection answers nothing else until it is: a substituter's
// narinfo and NAR requests share connections, and one NAR through node:http would have taken its connection
// out of the lane for good.
//
// Why: a substituter asks for one narinfo per store path, one after another, and a warm cache answers each
// from memory or one indexed row. Behind node:http and Hono every such request cost ~80 µs of parsing, header
// objects, routing and middleware, ten times the lookup; this lane costs a few µs per request, and the
// measured floor of one Node.js process on raw sockets is above nginx's static files (issue 7, BENCHMARKS.md).
//
// How it stays safe: it takes only what it fully understands, and gives up a connection for good at the
// first request it does not. Taken (RFC 9112 message syntax, checked byte for byte): one complete request
// head, `GET` or `HEAD` of an origin-form target, `HTTP/1.1`, a Host header, every byte printable ASCII or
// tab, every line ending in CRLF, header names tokens, at most one Authorization and X-Request-Id, and no
// Content-Length, Transfer-Encoding, Expect or Upgrade (so no body, and nothing to smuggle). The answer
// itself may also decline (unknown cache, bad token, any error): node:http then parses the same bytes and
// the Hono app answers, with the same messages as always. Anything else — a partial head, a body, HTTP/1.0,
// pipelined bytes cut mid-request, a shutdown under way — hands the connection over with every byte read so
// far, synchronously, before the event loop can read more: node:http's own parser then owns it until it
// closes, timeouts and limits included.
//
// Responses are what node:http and Hono would send for the same answer (status line, Content-Type, the
// route's other headers, Content-Length, X-Request-Id, Date, Connection, Keep-Alive), and each request is
// metered and logged by the same recorder as the rest (request-log.ts).
import type { Server as HttpServer } from "node:http";
import type { Socket } from "node:net";
import type { Readable } from "node:stream";

/** A request the lane can answer without a body. */
export interface FastRequest {
  method: "GET" | "HEAD";
  /** The request target, origin-form (`/cache/hash.narinfo`), unparsed. */
  target: string;
  authorization: string | undefined;
  requestId: string | undefined;
  userAgent: string | undefined;
  remoteAddress: string | undefined;
  /** The request carries a Range header (which the lane passes on, never answers). */
  range: boolean;
}

/**
 * A body the lane does not hold: it writes the head, hands the socket over until `writeTo` settles, and
 * only then answers the next request on the connection. Resolves once all `size` bytes are with the kernel;
 * rejects when they cannot be (the lane then closes the connection: the client sees a short body).
 */
export interface StreamedBody {
  readonly size: number;
  writeTo(socket: Socket): Promise<void>;
  /** Lets go of it unwritten (a HEAD, or a client gone before its answer). */
  discard(): void;
}

/**
 * A stream as a StreamedBody (the read-through of a NAR from the bucket, server/storage/disk-cache.ts): its
 * chunks written to the socket as they come, paused while the socket is full.
 */
export function streamedBody(body: Readable, size: number): StreamedBody {
  return {
    size,
    discard: () => body.destroy(),
    writeTo: (socket) =>
      new Promise<void>((resolve, reject) => {
        let sent = 0;
        const finish = (error?: Error) => {
          body.off("data", onData);
          body.off("end", onEnd);
          body.off("error", finish);
          socket.off("drain", onDrain);
          socket.off("close", onClose);
          if (!error) return resolve();
          body.destroy();
          reject(error);
        };
        const onData = (chunk: Buffer) => {
          sent += chunk.length;
          if (!socket.write(chunk)) body.pause();
        };
        const onDrain = () => body.resume();
        const onClose = () => finish(new Error("the connection closed before the body was sent"));
        // Every byte with the kernel: once the last write (in order) has completed.
        const onEnd = () =>
          sent === size
            ? socket.write(NO_BYTES, (error) => finish(error ?? undefined))
            : finish(new Error(`the body had ${sent} bytes, not ${size}`));
        body.on("data", onData);
        body.once("end", onEnd);
        body.once("error", finish);
        socket.on("drain", onDrain);
        socket.once("close", onClose);
      }),
  };
}
const NO_BYTES = Buffer.alloc(0);

const isStreamed = (body: FastAnswer["body"]): body is StreamedBody =>
  typeof body !== "string" && !Buffer.isBuffer(body);

/** What the answerer decided: a response, or undefined to let the full server answer it. */
export interface FastAnswer {
  /** 302: a redirect, its Location among `headers`. */
  status: 200 | 302 | 404;
  /** Undefined: no Content-Type (a redirect, as the route sends it). */
  contentType: string | undefined;
  /** More response headers, written as they are (lower-case names, values without line breaks). */
  headers?: Readonly<Record<string, string>> | undefined;
  /**
   * The body of a GET (HEAD sends the headers only); bytes are written as they are, text as UTF-8, and a
   * streamed body by itself, after the head.
   */
  body: string | Buffer | StreamedBody;
  /** The request id echoed in X-Request-Id (request-log.ts chooses it). */
  requestId: string;
  /** Called once the response is written (or the socket failed first), with the bytes of the body sent. */
  done?: ((bytesOut: number) => void) | undefined;
}

export type FastAnswerer = (request: FastRequest) => FastAnswer | undefined | Promise<FastAnswer | undefined>;

/** Why a connection left the lane (a Prometheus label: bounded). */
export type HandoffReason = "declined" | "not_fast" | "partial" | "draining" | "error";

export interface FastLaneOptions {
  answer: FastAnswerer;
  /** True once the server drains: every request then goes to node:http, which asks clients to reconnect. */
  draining: () => boolean;
  onHandoff?: ((reason: HandoffReason) => void) | undefined;
  onError?: ((error: unknown) => void) | undefined;
}

export interface FastLane {
  /** Closes the lane's connections that sit between requests, as http.Server#closeIdleConnections does. */
  closeIdleConnections(): void;
  /** Destroys every connection still in the lane. */
  closeAllConnections(): void;
}

/** A head larger than this is node:http's business (it takes up to its maxHeaderSize). */
const MAX_FAST_HEAD = 8 * 1024;
/** Bytes a connection may pile up while its answer is awaited, before it is no longer read. */
const MAX_WAITING = 64 * 1024;
const CRLF_CRLF = Buffer.from("\r\n\r\n", "latin1");
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REQUEST_LINE = /^(GET|HEAD) (\/[!$&'()*+,\-./0-9:;=@A-Z_a-z~%]*) HTTP\/1\.1$/;

/**
 * Puts the lane in front of `server`: its connections arrive here first, and node:http's own connection
 * listener receives those handed over. `server` is a node:http server made by createServer (or
 * @hono/node-server), with node:http's listener as its only `connection` listener.
 */
export function installFastLane(server: HttpServer, options: FastLaneOptions): FastLane {
  const listeners = server.listeners("connection");
  if (listeners.length !== 1) throw new Error("fast lane: expected node:http's connection listener alone");
  const nodeConnection = listeners[0] as (socket: Socket) => void;
  server.removeListener("connection", nodeConnection);
  const lane = new Set<LaneConnection>();
  const handOver = (socket: Socket, pending: Buffer | undefined) => {
    nodeConnection.call(server, socket);
    // node:http now reads the socket itself; the bytes read so far go to its parser first, before the
    // event loop can deliver any newer ones.
    if (pending && pending.length > 0) socket.emit("data", pending);
    // node:http stops reading a socket it consumes only when the socket turns from flowing to paused (its
    // 'pause' listener stops the handle; 'resume' starts it). A socket the lane has read is not new to the
    // stream machinery: its own pending read-ahead (the tick after a 'data' event) or a resume the lane
    // asked for starts the handle again without a 'resume' event, so when node:http had paused the socket
    // meanwhile (a first read bringing more body than the request buffers), the handle reads on behind a
    // socket marked paused, every later pause is a no-op, and the body piles up in the request unread
    // (the large-NAR test's 1.4 GiB). Once those reads are done, a socket marked paused is resumed: flag and
    // handle agree again, and node:http pauses it at its next full buffer (one read later).
    setImmediate(() => {
      if (!socket.destroyed && socket.isPaused()) socket.resume();
    });
  };
  server.on("connection", (socket: Socket) => {
    const connection = new LaneConnection(socket, server, options, (pending, reason) => {
      lane.delete(connection);
      options.onHandoff?.(reason);
      handOver(socket, pending);
    });
    lane.add(connection);
    socket.once("close", () => lane.delete(connection));
  });
  return {
    closeIdleConnections() {
      for (const c of lane) c.closeIfIdle();
    },
    closeAllConnections() {
      for (const c of lane) c.socket.destroy();
    },
  };
}

/** A date header value, recomputed once a second (as node:http does). */
let dateSecond = -1;
let dateValue = "";
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateValue = new Date(now).toUTCString();
  }
  return dateValue;
}

class LaneConnection {
  /** Bytes received and not yet answered, starting at the head of the next request. */
  #pending: Buffer | undefined;
  /** An answer is being computed (asynchronously): new bytes wait in #pending. */
  #busy = false;
  /** The client asked to close, or the client ended its side: no more requests. */
  #closing = false;
  #gone = false;
  /** The end of every keep-alive response head. */
  readonly #keepAlive: string;
  /** Read once: the getter asks the kernel each time. */
  readonly #remote: string | undefined;
  readonly #onData = (chunk: Buffer) => {
    this.#pending = this.#pending ? Buffer.concat([this.#pending, chunk]) : chunk;
    if (!this.#busy) this.#drain();
    // A client that keeps sending while an answer is awaited (a slow database) is not read further until
    // it comes: what it sent waits in the kernel, not in our memory.
    else if (this.#pending.length > MAX_WAITING) this.socket.pause();
  };
  readonly #onEnd = () => {
    this.#closing = true;
    if (!this.#busy) this.socket.end();
  };
  readonly #onTimeout = () => this.socket.destroy();
  readonly #onError = () => this.socket.destroy();

  constructor(
    readonly socket: Socket,
    readonly server: HttpServer,
    readonly options: FastLaneOptions,
    readonly handoff: (pending: Buffer | undefined, reason: HandoffReason) => void,
  ) {
    // As node:http configures its own connections (noDelay is its default; half-open so that a response
    // can still be written after the client ended its side).
    this.#remote = socket.remoteAddress;
    this.#keepAlive = `Connection: keep-alive\r\nKeep-Alive: timeout=${Math.floor(server.keepAliveTimeout / 1000)}\r\n\r\n`;
    socket.setNoDelay(true);
    socket.setTimeout(server.keepAliveTimeout);
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("timeout", this.#onTimeout);
    socket.on("error", this.#onError);
  }

  closeIfIdle(): void {
    if (!this.#busy && !this.#pending) this.socket.end();
  }

  #leave(reason: HandoffReason): void {
    if (this.#gone) return;
    this.#gone = true;
    const socket = this.socket;
    socket.removeListener("data", this.#onData);
    socket.removeListener("end", this.#onEnd);
    socket.removeListener("timeout", this.#onTimeout);
    socket.removeListener("error", this.#onError);
    socket.setTimeout(0);
    const pending = this.#pending;
    this.#pending = undefined;
    this.handoff(pending, reason);
  }

  /** Answers the complete requests at the front of #pending, in order, until one needs the full server. */
  #drain(): void {
    while (this.#pending && !this.#gone && !this.#busy) {
      if (this.#closing) {
        // Bytes after a `Connection: close` request are ignored, as node:http ignores them.
        this.#pending = undefined;
        return;
      }
      const buffer = this.#pending;
      const end = buffer.indexOf(CRLF_CRLF);
      if (end < 0 || end > MAX_FAST_HEAD) {
        this.#leave(end < 0 ? "partial" : "not_fast");
        return;
      }
      if (this.options.draining()) {
        this.#leave("draining");
        return;
      }
      const head = parseHead(buffer, end);
      if (!head) {
        this.#leave("not_fast");
        return;
      }
      const request: FastRequest = {
        method: head.method,
        target: head.target,
        authorization: head.authorization,
        requestId: head.requestId,
        userAgent: head.userAgent,
        remoteAddress: this.#remote,
        range: head.range,
      };
      let answer: ReturnType<FastAnswerer>;
      try {
        answer = this.options.answer(request);
      } catch (error) {
        this.options.onError?.(error);
        this.#leave("error");
        return;
      }
      if (answer instanceof Promise) {
        this.#busy = true;
        answer.then(
          (a) => this.#settle(a, head, end),
          (error: unknown) => {
            this.options.onError?.(error);
            this.#free();
            this.#leave("error");
          },
        );
        return;
      }
      if (!answer) {
        this.#leave("declined");
        return;
      }
      this.#respond(answer, head, end);
    }
  }

  #settle(answer: FastAnswer | undefined, head: Head, end: number): void {
    this.#free();
    if (this.#gone) return;
    if (this.socket.destroyed) {
      if (answer && isStreamed(answer.body)) answer.body.discard();
      answer?.done?.(0);
      return;
    }
    if (!answer) {
      this.#leave("declined");
      return;
    }
    this.#respond(answer, head, end);
    // A streamed body is still being written: what follows waits for it (#streamed).
    if (this.#busy) return;
    this.#next();
  }

  /** Free to answer again: reading resumes (a client that kept sending was paused meanwhile, see #onData). */
  #free(): void {
    this.#busy = false;
    if (this.socket.isPaused()) this.socket.resume();
  }

  /** After an answer is out: the connection closes if that was its last, or answers what waits. */
  #next(): void {
    if (this.#closing) {
      // The client ended its side, or asked to close: this was the last answer.
      this.#pending = undefined;
      this.socket.end();
      return;
    }
    this.#drain();
  }

  #respond(answer: FastAnswer, head: Head, end: number): void {
    const rest = this.#pending!.subarray(end + 4);
    this.#pending = rest.length > 0 ? rest : undefined;
    const close = head.close;
    if (close) this.#closing = true;
    const body = answer.body;
    const streamed = isStreamed(body) ? body : undefined;
    const bodyLength = streamed ? streamed.size : Buffer.byteLength(body as string | Buffer);
    let extra = "";
    if (answer.headers) for (const name in answer.headers) extra += `${name}: ${answer.headers[name]}\r\n`;
    const response =
      `HTTP/1.1 ${answer.status === 200 ? "200 OK" : answer.status === 404 ? "404 Not Found" : "302 Found"}\r\n` +
      (answer.contentType === undefined ? "" : `content-type: ${answer.contentType}\r\n`) +
      extra +
      `content-length: ${bodyLength}\r\n` +
      `x-request-id: ${answer.requestId}\r\n` +
      `Date: ${httpDate()}\r\n` +
      (close ? "Connection: close\r\n\r\n" : this.#keepAlive);
    const socket = this.socket;
    if (streamed && head.method === "GET") {
      socket.write(response);
      this.#streamed(streamed, answer);
      return;
    }
    streamed?.discard();
    const bytesOut = head.method === "HEAD" ? 0 : bodyLength;
    if (head.method === "HEAD") socket.write(response);
    else if (typeof body === "string") socket.write(response + body);
    else {
      // One buffer, one write (one syscall): the head is ASCII by construction.
      const bytes = body as Buffer;
      const out = Buffer.allocUnsafe(response.length + bodyLength);
      out.write(response, 0, "latin1");
      bytes.copy(out, response.length);
      socket.write(out);
    }
    this.#done(answer, bytesOut);
    if (close) socket.end();
  }

  /** Metering is not worth a connection, let alone the process (this runs inside a socket's data event). */
  #done(answer: FastAnswer, bytesOut: number): void {
    try {
      answer.done?.(bytesOut);
    } catch (error) {
      this.options.onError?.(error);
    }
  }

  /**
   * Lets `body` write itself after the head; the connection reads on (within limits) but answers nothing
   * meanwhile.
   */
  #streamed(body: StreamedBody, answer: FastAnswer): void {
    this.#busy = true;
    // The keep-alive timeout is for idle connections; this one is busy, in writes Node does not see (the
    // kernel's), so it would fire in the middle of any NAR that takes longer (as node:http's responses, it
    // has no time limit of its own).
    this.socket.setTimeout(0);
    body.writeTo(this.socket).then(
      () => {
        this.socket.setTimeout(this.server.keepAliveTimeout);
        this.#done(answer, body.size);
        this.#free();
        if (this.#gone || this.socket.destroyed) return;
        this.#next();
      },
      () => {
        this.#busy = false;
        this.#done(answer, 0);
        this.socket.destroy();
      },
    );
  }
}

interface Head {
  method: "GET" | "HEAD";
  target: string;
  authorization: string | undefined;
  requestId: string | undefined;
  userAgent: string | undefined;
  close: boolean;
  range: boolean;
}

/**
 * The head `buffer[0, end)` (without its final CRLF CRLF) if the lane may answer it, else undefined. Only
 * what node:http would parse to the same meaning passes: see the module comment.
 */
export function parseHead(buffer: Buffer, end: number): Head | undefined {
  for (let i = 0; i < end; i++) {
    const b = buffer[i]!;
    if (b >= 0x20 && b <= 0x7e) continue;
    if (b === 0x09) continue;
    // CR only before LF, LF only after CR.
    if (b === 0x0d && buffer[i + 1] === 0x0a) {
      i++;
      continue;
    }
    return undefined;
  }
  const lines = buffer.toString("latin1", 0, end).split("\r\n");
  const requestLine = REQUEST_LINE.exec(lines[0]!);
  if (!requestLine) return undefined;
  const head: Head = {
    method: requestLine[1] as "GET" | "HEAD",
    target: requestLine[2]!,
    authorization: undefined,
    requestId: undefined,
    userAgent: undefined,
    close: false,
    range: false,
  };
  let host = false;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return undefined;
    const value = line.slice(colon + 1).trim();
    switch (name.toLowerCase()) {
      case "host":
        if (host) return undefined;
        host = true;
        break;
      case "authorization":
        if (head.authorization !== undefined) return undefined;
        head.authorization = value;
        break;
      case "x-request-id":
        if (head.requestId !== undefined) return undefined;
        head.requestId = value;
        break;
      case "user-agent":
        head.userAgent = value;
        break;
      case "range":
        head.range = true;
        break;
      case "connection": {
        const tokens = value.toLowerCase().split(",");
        for (const token of tokens) {
          const t = token.trim();
          if (t === "close") head.close = true;
          else if (t !== "keep-alive" && t !== "") return undefined;
        }
        break;
      }
      case "content-length":
      case "transfer-encoding":
      case "expect":
      case "upgrade":
        return undefined;
    }
  }
  return host ? head : undefined;
}
