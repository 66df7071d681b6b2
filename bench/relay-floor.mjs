// Measure 6's relay floor for a push into S3, in two processes of its own: the least a Node server that
// checks every pushed NAR and stores it as nixstash does does, and the least a client does to hand it the
// NARs. The NAR files `nix copy --to file://` wrote (already dumped and compressed: that work is file://'s
// own) go from a sender to a relay on node:http, and the relay hashes each body (its FileHash), decodes it
// with zstd and hashes the NAR (bench/nar-hasher.mjs, as verify-floor.mjs does), and stores it: a body of
// up to 64 KiB as a row of PostgreSQL (one INSERT, where nixstash keeps the small ones:
// NIXSTASH_S3_INLINE_KB), a longer one streamed on into RGW in one presigned PUT (no payload hash: less than
// nixstash's signed PUTs). No parsing, no other database work, no signing, no framework: whatever a real
// push spends beyond this is its design's. The relay floor sends the files as they are; the streaming floor
// (`push`) compresses the NARs again as it sends them, as a pusher must, and is timed rather than counted.
//   node bench/relay-floor.mjs relay BUCKET             serves PUT /<key> on 127.0.0.1; prints {"port"}
//   node bench/relay-floor.mjs send URL DIR N FILE...   PUTs each FILE (its key: its path under DIR), N at
//                                                       once, from memory; prints the files, the NAR bytes
//                                                       the relay decoded and the CPU seconds of sending
//   node bench/relay-floor.mjs push URL DIR N FILE...   the streaming floor: decodes each FILE (a zstd NAR)
//                                                       into memory first, then PUTs every NAR compressed
//                                                       again at zstd level 3 as it is sent, N at once,
//                                                       biggest first; prints the files, the NAR bytes the
//                                                       relay decoded, the wall and CPU seconds of pushing
// The relay reaches RGW with the minio client options in NIXSTASH_BENCH_S3 (JSON: bench/peers.ts bucketOptions),
// and PostgreSQL at NIXSTASH_BENCH_PG (a database of its own: it makes its table there).
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import { relative } from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { Client } from "minio";
import pg from "pg";
import { createNarHasher, decodeInto } from "./nar-hasher.mjs";

/** Bodies up to this many bytes become rows, as nixstash's default NIXSTASH_S3_INLINE_KB=64 keeps them. */
const INLINE_BYTES = 64 * 1024;

/** As `nixstash push` compresses (hook/client.ts): level 3, zstd's own two threads from 4 MiB of NAR on. */
const LEVEL = 3;
const THREADED_FROM = 4 * 1024 * 1024;
/** NAR bytes handed to zstd per call, and compressed before the event loop gets a turn. */
const PIECE = 1024 * 1024;
const PER_TURN = 8 * 1024 * 1024;

const [mode, ...args] = process.argv.slice(2);
if (mode === "relay") await relay(args[0]);
else if (mode === "send") await send(args[0], args[1], Number(args[2]), args.slice(3));
else if (mode === "push") await push(args[0], args[1], Number(args[2]), args.slice(3));
else throw new Error("usage: relay-floor.mjs relay BUCKET | send URL DIR N FILE... | push URL DIR N FILE...");

async function relay(bucket) {
  if (!bucket) throw new Error("relay-floor.mjs relay: no bucket");
  const s3 = new Client(JSON.parse(process.env.NIXSTASH_BENCH_S3 ?? "{}"));
  if (!process.env.NIXSTASH_BENCH_PG) throw new Error("relay-floor.mjs relay: no NIXSTASH_BENCH_PG");
  const db = new pg.Pool({ connectionString: process.env.NIXSTASH_BENCH_PG, max: 4 });
  await db.query("CREATE TABLE IF NOT EXISTS inline_floor (key text PRIMARY KEY, bytes bytea NOT NULL)");
  const agent = new http.Agent({ keepAlive: true });
  // One NAR hasher (a decoding context and block) per upload running at once, reused (as the server's
  // decoders are).
  const idle = [];
  const server = http.createServer(async (req, res) => {
    const fail = (error) => {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(error?.message ?? error));
    };
    try {
      const key = decodeURIComponent(req.url.slice(1));
      const length = Number(req.headers["content-length"]);
      const nar = idle.pop() ?? createNarHasher();
      nar.start();
      const fileHash = createHash("sha256");
      if (length <= INLINE_BYTES) {
        const chunks = [];
        for await (const chunk of req) {
          fileHash.update(chunk);
          nar.update(chunk);
          chunks.push(chunk);
        }
        await db.query(
          "INSERT INTO inline_floor (key, bytes) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes",
          [key, Buffer.concat(chunks)],
        );
        fileHash.digest();
        nar.digest();
        idle.push(nar);
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ narBytes: nar.narBytes }));
        return;
      }
      const url = await s3.presignedPutObject(bucket, key, 600);
      // The body goes on to RGW chunk by chunk as it comes. Gathered first and put in one write, the same
      // files cost this relay ~1 CPU s more and RGW no less (ad-hoc A/B, 3 runs each, session 20).
      const upstream = http.request(url, { method: "PUT", agent, headers: { "content-length": length } });
      const stored = new Promise((resolve, reject) => {
        upstream.on("error", reject);
        upstream.on("response", (answer) => {
          answer.resume();
          if (answer.statusCode === 200) answer.on("end", resolve);
          else reject(new Error(`RGW answered ${answer.statusCode} for ${key}`));
        });
      });
      // RGW failing before the body has ended (an unknown bucket answers at once) fails this upload: the
      // rest of its body is read and dropped, and the sender gets the error once it has sent it all.
      let failure;
      stored.catch((error) => {
        failure = error;
        req.resume();
      });
      req.on("data", (chunk) => {
        if (failure) return;
        fileHash.update(chunk);
        nar.update(chunk);
        if (!upstream.write(chunk)) {
          req.pause();
          upstream.once("drain", () => req.resume());
        }
      });
      await new Promise((resolve, reject) => {
        req.on("end", resolve);
        req.on("error", reject);
      });
      if (failure) throw failure;
      upstream.end();
      await stored;
      fileHash.digest();
      nar.digest();
      idle.push(nar);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ narBytes: nar.narBytes }));
    } catch (error) {
      fail(error);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
  process.on("SIGTERM", () => process.exit(0));
}

async function send(base, dir, atOnce, files) {
  if (!base || !dir || !(atOnce > 0) || files.length === 0)
    throw new Error("usage: relay-floor.mjs send URL DIR N FILE...");
  // Read before the clock starts: a pusher has its compressed NARs in memory (it made them), and reading
  // the files back was most of this process's CPU (ad-hoc perf, session 20).
  const bodies = new Map(files.map((file) => [file, readFileSync(file)]));
  const cpu0 = process.cpuUsage();
  const agent = new http.Agent({ keepAlive: true, maxSockets: atOnce });
  const narBytes = await inTurns(files, atOnce, (file) => {
    const body = bodies.get(file);
    return putToRelay(
      `${base}/${encodeURIComponent(relative(dir, file))}`,
      agent,
      body.length,
      file,
      (request) => request.end(body),
    );
  });
  agent.destroy();
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(
    `${JSON.stringify({ files: files.length, narBytes, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
  );
}

/**
 * The least a push that compresses as it sends costs here: the NARs are in memory before the clock starts
 * (no store to read, no NAR to serialise, no path infos or queries), and each one's compressed length is
 * known in advance (a first compression, before the clock), so every body goes out with its length and the
 * relay streams it on into RGW in one PUT. Biggest NARs first, N at once. The time is measured, not derived
 * from CPU seconds: what the two cores really give a sender, a relay, RGW and PostgreSQL side by side.
 */
async function push(base, dir, atOnce, files) {
  if (!base || !dir || !(atOnce > 0) || files.length === 0)
    throw new Error("usage: relay-floor.mjs push URL DIR N FILE...");
  const zstd = createRequire(import.meta.url)("zstd-napi/binding.js");
  const contexts = { 0: [], 2: [] };
  const contextFor = (threads) => {
    const cctx = contexts[threads].pop();
    if (cctx) return cctx;
    const made = new zstd.CCtx();
    made.setParameter(zstd.CParameter.compressionLevel, LEVEL);
    if (threads) {
      made.setParameter(zstd.CParameter.nbWorkers, threads);
      made.setParameter(zstd.CParameter.jobSize, 2 * 1024 * 1024);
    }
    return made;
  };
  /** Compresses `nar` into one frame, each output piece to `emit` (which may wait); resolves at the end. */
  const compress = async (nar, emit) => {
    const threads = nar.length >= THREADED_FROM ? 2 : 0;
    const cctx = contextFor(threads);
    const out = Buffer.allocUnsafe(zstd.cStreamOutSize());
    let sinceTurn = 0;
    for (let offset = 0; ; offset += PIECE) {
      const last = offset + PIECE >= nar.length;
      let piece = nar.subarray(offset, Math.min(nar.length, offset + PIECE));
      for (;;) {
        const [ret, produced, consumed] = cctx.compressStream2(
          out,
          piece,
          last ? zstd.EndDirective.end : zstd.EndDirective.continue,
        );
        piece = piece.subarray(consumed);
        if (produced > 0) await emit(Buffer.from(out.subarray(0, produced)));
        if (last ? ret === 0 : piece.length === 0) break;
      }
      if (last) break;
      sinceTurn += PIECE;
      if (sinceTurn >= PER_TURN) {
        sinceTurn = 0;
        await nextTurn();
      }
    }
    contexts[threads].push(cctx);
  };

  const nars = files.map((file) => ({ file, nar: decodeWhole(zstd, readFileSync(file)), length: 0 }));
  nars.sort((a, b) => b.nar.length - a.nar.length);
  for (const entry of nars) {
    await compress(entry.nar, (chunk) => {
      entry.length += chunk.length;
    });
  }

  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const agent = new http.Agent({ keepAlive: true, maxSockets: atOnce });
  const narBytes = await inTurns(nars, atOnce, ({ file, nar, length }) =>
    putToRelay(`${base}/${encodeURIComponent(relative(dir, file))}`, agent, length, file, async (request) => {
      await compress(nar, async (chunk) => {
        if (!request.write(chunk)) await once(request, "drain");
      });
      request.end();
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  agent.destroy();
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(
    `${JSON.stringify({ files: files.length, narBytes, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
  );
}

/** A whole zstd file decoded into one Buffer. */
function decodeWhole(zstd, compressed) {
  const pieces = [];
  decodeInto(new zstd.DCtx(), Buffer.allocUnsafe(zstd.dStreamOutSize()), compressed, (decoded) =>
    pieces.push(Buffer.from(decoded)),
  );
  return Buffer.concat(pieces);
}

/** Runs `putOne` on every item, `atOnce` at a time in order; resolves to the NAR bytes they decoded. */
async function inTurns(items, atOnce, putOne) {
  let next = 0;
  let narBytes = 0;
  await Promise.all(
    Array.from({ length: atOnce }, async () => {
      while (next < items.length) {
        // Not `narBytes += await …`: that reads narBytes before the await, and loses the other uploads' bytes.
        const decoded = await putOne(items[next++]);
        narBytes += decoded;
      }
    }),
  );
  return narBytes;
}

/** PUTs one body of `length` bytes, written by `writeBody`, to the relay; resolves to the NAR bytes it decoded. */
async function putToRelay(url, agent, length, file, writeBody) {
  const request = http.request(url, { method: "PUT", agent, headers: { "content-length": length } });
  const answered = new Promise((resolve, reject) => {
    request.on("error", reject);
    request.on("response", (answer) => {
      const chunks = [];
      answer.on("data", (chunk) => chunks.push(chunk));
      answer.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (answer.statusCode === 200) resolve(JSON.parse(text).narBytes);
        else reject(new Error(`relay answered ${answer.statusCode} for ${file}: ${text}`));
      });
    });
  });
  await writeBody(request);
  return answered;
}
