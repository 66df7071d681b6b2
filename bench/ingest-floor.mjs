// Measure 5's floor for a plain (uncompressed) body: the least a Node server does with one, and nothing else.
// A PUT's body is hashed (NarHash), compressed at zstd level 3 by 2 workers in 2 MiB jobs (zstd-napi, as
// server/verbs/receive.ts does), the output hashed (FileHash) and written to a file, fdatasync'd, and
// deleted again; the answer is the two hashes. No NAR parsing, no database, no signing, no checks. What
// nixstash's ingest costs above this is its own; what this costs is the price of the work on this machine.
//   node bench/ingest-floor.mjs DIR      (prints the port it listens on, 127.0.0.1)
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { open, rm } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { CompressStream } from "zstd-napi";

const [dir] = process.argv.slice(2);
if (!dir) throw new Error("usage: ingest-floor.mjs DIR");
let uploads = 0;

/** Passes chunks through, hashing them. */
function hashing(hash) {
  return new Transform({
    transform(chunk, _encoding, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
}

async function ingest(req) {
  const file = join(dir, `ingest-floor-${process.pid}-${uploads++}.nar.zst`);
  const narHash = createHash("sha256");
  const fileHash = createHash("sha256");
  try {
    await pipeline(
      req,
      hashing(narHash),
      new CompressStream({ compressionLevel: 3, nbWorkers: 2, jobSize: 2 * 1024 * 1024 }),
      hashing(fileHash),
      createWriteStream(file),
    );
    const handle = await open(file, "r");
    try {
      await handle.datasync();
    } finally {
      await handle.close();
    }
    return { narHash: narHash.digest("hex"), fileHash: fileHash.digest("hex") };
  } finally {
    await rm(file, { force: true });
  }
}

http
  .createServer((req, res) => {
    ingest(req).then(
      (hashes) => {
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify(hashes));
      },
      (error) => {
        res.writeHead(500, { "content-type": "text/plain" });
        res.end(String(error));
      },
    );
  })
  .listen(0, "127.0.0.1", function () {
    process.stdout.write(`${this.address().port}\n`);
  });
