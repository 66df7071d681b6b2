// The floor of one Node.js process for narinfo reads (measures 1 and 2): every narinfo and nix-cache-info of
// the static cache read into memory at start, answered over raw sockets (node:net) with keep-alive, a
// request head found by its CRLF CRLF and its target by the spaces around it; no HTTP library, no checks, no
// logging, 404 for anything else. Whatever nixstash's fast lane costs above this is ours; what this costs
// above nginx is the price of one Node process and its single event loop on this machine.
//   node bench/node-raw.ts ROOT PORT
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";

const [root, port] = process.argv.slice(2);
if (!root || !port) throw new Error("usage: node-raw.ts ROOT PORT");

const responses = new Map<string, Buffer>();
const respond = (type: string, body: Buffer) =>
  Buffer.concat([
    Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: ${type}\r\nContent-Length: ${body.length}\r\n\r\n`),
    body,
  ]);
for (const name of readdirSync(root)) {
  if (name.endsWith(".narinfo"))
    responses.set(`/${name}`, respond("text/x-nix-narinfo", readFileSync(join(root, name))));
}
responses.set(
  "/nix-cache-info",
  respond("text/x-nix-cache-info", readFileSync(join(root, "nix-cache-info"))),
);
const notFound = Buffer.from(
  "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n",
);
const END = Buffer.from("\r\n\r\n");

net
  .createServer({ noDelay: true }, (socket) => {
    let pending: Buffer | undefined;
    socket.on("data", (chunk: Buffer) => {
      let buffer = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = undefined;
      for (;;) {
        const end = buffer.indexOf(END);
        if (end < 0) {
          pending = buffer.length > 0 ? buffer : undefined;
          return;
        }
        const space = buffer.indexOf(32);
        const target = buffer.toString("latin1", space + 1, buffer.indexOf(32, space + 1));
        socket.write(responses.get(target) ?? notFound);
        buffer = buffer.subarray(end + 4);
      }
    });
    socket.on("error", () => socket.destroy());
  })
  .listen(Number(port), "127.0.0.1");
