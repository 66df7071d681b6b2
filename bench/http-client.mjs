// The load generator of measures 1 and 3, in a small process of its own (as wrk is for measure 2 and
// put-file.mjs for measure 5), kept as thin as possible so that the server is what is measured:
// - "sequential": GETs every path one after another on ONE keep-alive connection, a minimal HTTP/1.1 client
//   on a raw socket (no parser, no agent); one unmeasured pass first, then `passes` timed ones;
// - "download": GETs every file, `connections` at a time, through node:http keep-alive agents, following one
//   redirect (S3 presigned URLs).
// Not from the bench's own process: its heap (the workload, the results) makes the collections that half a
// gigabyte of received chunks sets off cost more, on the two cores the server needs, and it differs from one
// peer's turn to the next.
//   node bench/http-client.mjs JOB.json
// JOB: {"kind":"sequential","base":URL,"paths":[...],"passes":N} | {"kind":"download","base":URL,"files":[...],"connections":N}
// Prints one JSON line: the seconds timed, the statuses seen (sequential) or bytes received (download), and
// its own CPU seconds. Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";

/** GETs every path one after another on one connection; returns how many answers had each status. */
async function sequentialGets(base, paths) {
  const socket = net.connect({ host: base.hostname, port: Number(base.port), noDelay: true });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const statuses = {};
  let buffered = Buffer.alloc(0);
  let waiting;
  socket.on("data", (chunk) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    waiting?.();
  });
  let failure;
  socket.on("error", (e) => {
    failure = e;
    waiting?.();
  });
  const more = () =>
    new Promise((resolve) => {
      waiting = resolve;
    });
  const host = `${base.hostname}:${base.port}`;
  for (const path of paths) {
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: nixstash-bench\r\n\r\n`);
    for (;;) {
      if (failure) throw failure;
      const end = buffered.indexOf("\r\n\r\n");
      if (end >= 0) {
        const head = buffered.subarray(0, end).toString("latin1");
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? Number.NaN);
        if (Number.isNaN(length)) throw new Error(`no content-length in response to ${path}: ${head}`);
        if (buffered.length >= end + 4 + length) {
          const status = head.slice(9, 12);
          statuses[status] = (statuses[status] ?? 0) + 1;
          buffered = buffered.subarray(end + 4 + length);
          break;
        }
      }
      await more();
    }
  }
  socket.destroy();
  return statuses;
}

/** Downloads every file (relative to base), `connections` at a time; returns the bytes received. */
async function downloadAll(base, files, connections) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const redirectAgent = new http.Agent({ keepAlive: true, maxSockets: connections });
  let next = 0;
  let bytes = 0;
  const get = (url, viaRedirect) =>
    new Promise((resolve, reject) => {
      const req = http.get(url, { agent: viaRedirect ? redirectAgent : agent }, (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 300 && status < 400 && res.headers.location && !viaRedirect) {
          res.resume();
          resolve(get(new URL(res.headers.location, url).toString(), true));
          return;
        }
        if (status !== 200) {
          res.resume();
          reject(new Error(`GET ${url}: ${status}`));
          return;
        }
        let n = 0;
        res.on("data", (chunk) => {
          n += chunk.length;
        });
        res.on("end", () => resolve(n));
        res.on("error", reject);
      });
      req.on("error", reject);
    });
  const worker = async () => {
    while (next < files.length) {
      const file = files[next++];
      // Not `bytes += await …`: that reads `bytes` before the await, and concurrent workers' sums are lost.
      const got = await get(`${base}/${file}`, false);
      bytes += got;
    }
  };
  try {
    await Promise.all(Array.from({ length: connections }, worker));
  } finally {
    agent.destroy();
    redirectAgent.destroy();
  }
  return bytes;
}

const jobFile = process.argv[2];
if (!jobFile) throw new Error("usage: http-client.mjs JOB.json");
const job = JSON.parse(readFileSync(jobFile, "utf8"));
let timed;
if (job.kind === "sequential") {
  const base = new URL(job.base);
  // The unmeasured pass: the measure is a warm server's latency (JIT-compiled code, page cache), and it warms
  // this client alike for every peer.
  await sequentialGets(base, job.paths);
  const all = Array.from({ length: job.passes }, () => job.paths).flat();
  timed = async () => ({ statuses: await sequentialGets(base, all) });
} else if (job.kind === "download") {
  timed = async () => ({ bytes: await downloadAll(job.base, job.files, job.connections) });
} else throw new Error(`unknown job kind ${job.kind}`);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
const result = await timed();
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${JSON.stringify({ ...result, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
);
