// The floor of one Node.js process (measures 1-3): every narinfo, nix-cache-info and small NAR (up to 64 KiB,
// the size nixstash's local storage reads whole) of the static cache read into memory at start, larger NARs
// sent from their files by sendfile(2) through nixstash's own FileBody (server/file-body.ts, the addon in
// server/native), all over raw sockets (node:net) with keep-alive: a request head found by its CRLF CRLF and
// its target by the spaces around it; no HTTP library, no checks, no logging, 404 for anything else. Whatever
// nixstash's fast lane costs above this is ours; what this costs above nginx is the price of one Node process
// and its single event loop on this machine.
//   node --import tsx bench/node-raw.ts ROOT PORT
import { openSync, readdirSync, readFileSync, statSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { FileBody } from "../server/file-body.ts";
import { sendfileUnavailable } from "../server/sendfile.ts";

const [root, port] = process.argv.slice(2);
if (!root || !port) throw new Error("usage: node-raw.ts ROOT PORT");
// Without the addon the large NARs would be copied, and this would not be the floor it claims to be.
if (sendfileUnavailable)
  throw new Error(`node-raw.ts: the sendfile addon did not load (npm ci builds it): ${sendfileUnavailable}`);

const SMALL = 64 * 1024;
const headOf = (type: string, length: number) =>
  `HTTP/1.1 200 OK\r\nContent-Type: ${type}\r\nContent-Length: ${length}\r\n\r\n`;
const respond = (type: string, body: Buffer) => Buffer.concat([Buffer.from(headOf(type, body.length)), body]);
const responses = new Map<string, Buffer>();
/** The large NARs: their files, and the head that goes before each. */
const files = new Map<string, { path: string; size: number; head: Buffer }>();
for (const name of readdirSync(root)) {
  if (name.endsWith(".narinfo"))
    responses.set(`/${name}`, respond("text/x-nix-narinfo", readFileSync(join(root, name))));
}
responses.set(
  "/nix-cache-info",
  respond("text/x-nix-cache-info", readFileSync(join(root, "nix-cache-info"))),
);
for (const name of readdirSync(join(root, "nar"))) {
  const path = join(root, "nar", name);
  const size = statSync(path).size;
  if (size <= SMALL) responses.set(`/nar/${name}`, respond("application/x-nix-nar", readFileSync(path)));
  else files.set(`/nar/${name}`, { path, size, head: Buffer.from(headOf("application/x-nix-nar", size)) });
}
const notFound = Buffer.from(
  "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n",
);
const END = Buffer.from("\r\n\r\n");

net
  .createServer({ noDelay: true }, (socket) => {
    let pending: Buffer | undefined;
    // While a large NAR is being sent, requests wait (in order) until it is out.
    let sending = false;
    const answer = () => {
      let buffer = pending;
      pending = undefined;
      while (buffer && !sending) {
        const end = buffer.indexOf(END);
        if (end < 0) break;
        const space = buffer.indexOf(32);
        const target = buffer.toString("latin1", space + 1, buffer.indexOf(32, space + 1));
        buffer = buffer.subarray(end + 4);
        const file = files.get(target);
        if (!file) {
          socket.write(responses.get(target) ?? notFound);
          continue;
        }
        sending = true;
        socket.write(file.head);
        new FileBody(openSync(file.path, "r"), 0, file.size).writeTo(socket).then(
          () => {
            sending = false;
            answer();
          },
          () => socket.destroy(),
        );
      }
      pending = buffer && buffer.length > 0 ? buffer : undefined;
    };
    socket.on("data", (chunk: Buffer) => {
      pending = pending ? Buffer.concat([pending, chunk]) : chunk;
      if (!sending) answer();
    });
    socket.on("error", () => socket.destroy());
  })
  .listen(Number(port), "127.0.0.1");
