// The floor for one Node.js process: a bare node:http server (no framework, no database, no logging) serving
// the same static cache nginx serves, a file per request (small ones read at once, large ones streamed). Whatever nixstash costs above
// this is ours; whatever this costs above nginx is the price of one Node process on this machine.
//   node bench/node-static.ts ROOT PORT
import { readFileSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import http from "node:http";
import { join, normalize } from "node:path";
import { pipeline } from "node:stream/promises";

const [root, port] = process.argv.slice(2);
if (!root || !port) throw new Error("usage: node-static.ts ROOT PORT");

const types: Record<string, string> = {
  narinfo: "text/x-nix-narinfo",
  "nix-cache-info": "text/x-nix-cache-info",
};

const server = http.createServer(async (req, res) => {
  const path = normalize(decodeURIComponent((req.url ?? "/").split("?")[0]!));
  if (path.includes("..")) {
    res.writeHead(400).end();
    return;
  }
  const file = join(root, path);
  const type =
    types[path.slice(path.lastIndexOf(".") + 1)] ?? types[path.slice(1)] ?? "application/octet-stream";
  // Small files the way nginx serves them: blocking open/fstat/read, no thread-pool round trips.
  let small: Buffer | undefined;
  try {
    if (statSync(file).size <= 64 * 1024) small = readFileSync(file);
  } catch {
    res.writeHead(404).end();
    return;
  }
  if (small) {
    res.writeHead(200, { "content-type": type, "content-length": small.length });
    res.end(req.method === "HEAD" ? undefined : small);
    return;
  }
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(file);
    const { size } = await handle.stat();
    const type =
      types[path.slice(path.lastIndexOf(".") + 1)] ?? types[path.slice(1)] ?? "application/octet-stream";
    res.writeHead(200, { "content-type": type, "content-length": size });
    if (req.method === "HEAD") {
      await handle.close();
      res.end();
      return;
    }
    await pipeline(handle.createReadStream({ highWaterMark: 512 * 1024 }), res);
  } catch {
    await handle?.close().catch(() => {});
    if (!res.headersSent) res.writeHead(404).end();
    else res.destroy();
  }
});
server.keepAliveTimeout = 65_000;
server.listen(Number(port), "127.0.0.1");
