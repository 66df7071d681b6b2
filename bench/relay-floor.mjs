// Measure 6's relay floor for a push into S3, in two processes of its own: the least a Node server that
// checks every pushed NAR and stores it as nixstash does does, and the least a client does to hand it the
// NARs. The NAR files `nix copy --to file://` wrote (already dumped and compressed: that work is file://'s
// own) go from a sender to a relay on node:http, and the relay hashes each body (its FileHash), decodes it
// with zstd and hashes the NAR (bench/nar-hasher.mjs, as verify-floor.mjs does), and stores it: a body of
// up to 64 KiB as a row of PostgreSQL (one INSERT, where nixstash keeps the small ones:
// NIXSTASH_S3_INLINE_KB), a longer one streamed on into RGW in one presigned PUT (no payload hash: less than
// nixstash's signed PUTs). No parsing, no other database work, no signing, no framework: whatever a real
// push spends beyond this is its design's.
//   node bench/relay-floor.mjs relay BUCKET             serves PUT /<key> on 127.0.0.1; prints {"port"}
//   node bench/relay-floor.mjs send URL DIR N FILE...   PUTs each FILE (its key: its path under DIR), N at
//                                                       once, from memory; prints the files, the NAR bytes
//                                                       the relay decoded and the CPU seconds of sending
// The relay reaches RGW with the minio client options in NIXSTASH_BENCH_S3 (JSON: bench/peers.ts bucketOptions),
// and PostgreSQL at NIXSTASH_BENCH_PG (a database of its own: it makes its table there).
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { relative } from "node:path";
import { Client } from "minio";
import pg from "pg";
import { createNarHasher } from "./nar-hasher.mjs";

/** Bodies up to this many bytes become rows, as nixstash's default NIXSTASH_S3_INLINE_KB=64 keeps them. */
const INLINE_BYTES = 64 * 1024;

const [mode, ...args] = process.argv.slice(2);
if (mode === "relay") await relay(args[0]);
else if (mode === "send") await send(args[0], args[1], Number(args[2]), args.slice(3));
else throw new Error("usage: relay-floor.mjs relay BUCKET | send URL DIR N FILE...");

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
  const putOne = (file) =>
    new Promise((resolve, reject) => {
      const key = encodeURIComponent(relative(dir, file));
      const body = bodies.get(file);
      const request = http.request(`${base}/${key}`, {
        method: "PUT",
        agent,
        headers: { "content-length": body.length },
      });
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
      request.end(body);
    });
  let next = 0;
  let narBytes = 0;
  await Promise.all(
    Array.from({ length: atOnce }, async () => {
      while (next < files.length) {
        // Not `narBytes += await …`: that reads narBytes before the await, and loses the other uploads' bytes.
        const decoded = await putOne(files[next++]);
        narBytes += decoded;
      }
    }),
  );
  agent.destroy();
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(
    `${JSON.stringify({ files: files.length, narBytes, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
  );
}
