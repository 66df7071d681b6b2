// The load generators of measures 1 and 3, each in a process of its own (as wrk is for measure 2 and
// put-file.mjs for measure 5), and each the lightest client found for its load, so that the server is what is
// measured:
// - "sequential" (measure 1): GETs every path one after another on ONE keep-alive connection, a minimal
//   HTTP/1.1 client on a raw socket (no parser, no agent); unmeasured passes first (at least one, for at least
//   `warmupSeconds`), then `passes` timed ones.
//   curl on one connection took 46-53 ms a pass of nginx against this client's 29-33 (ad-hoc, session 13).
// - "download" (measure 3): curl fetches every file, `connections` at a time, following one redirect (S3
//   presigned URLs). A Node client receiving on keep-alive agents used a whole core at ~500 MB/s and capped
//   every server there; curl took 1.0-1.3 GB/s from nginx on the same machine (BENCHMARKS.md, session 13).
// Not from the bench's own process: its heap (the workload, the results) makes every collection dearer, on the
// two cores the server needs, and it differs from one peer's turn to the next.
//   node bench/http-client.mjs JOB.json
// JOB: {"kind":"sequential","base":URL,"paths":[...],"passes":N,"warmupSeconds"?:S}
//    | {"kind":"download","base":URL,"files":[...],"connections":N,"warmup"?:true,"passes"?:N}
// Prints one JSON line: the seconds timed, the statuses seen and this client's CPU seconds (sequential); or
// each timed download's seconds and bytes received (download). Plain JavaScript, so it starts without the
// TypeScript loader and stays small.

import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { dirname, join } from "node:path";
import { setTimeout } from "node:timers/promises";

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

/**
 * Downloads every file (relative to base), `connections` at a time, with curl (Nix's own HTTP library, and a
 * client that costs far less per byte than any Node one): returns the bytes received. The list goes to curl
 * on its standard input once it has started and waits for it, so curl's own start (20-30 ms) is not timed.
 * scratchDir holds curl's per-file lines meanwhile.
 */
async function downloadAll(base, files, connections, scratchDir) {
  const args = ["--silent", "--no-progress-meter", "--show-error", "--fail", "--location", "--config", "-"];
  if (connections > 1) args.push("--parallel", "--parallel-immediate", "--parallel-max", String(connections));
  args.push("--write-out", "%{size_download}\\n");
  // curl's per-transfer line goes to a file, read once it has exited: a pipe would wake this process for
  // every file downloaded, on the two cores the server needs (nixstash's small NARs on one connection took
  // ~20% longer that way, nginx's ~7%: ad-hoc, session 14).
  const outFile = join(scratchDir, `curl-out-${process.pid}`);
  const outFd = openSync(outFile, "w");
  const curl = spawn("curl", args, { stdio: ["pipe", outFd, "inherit"] });
  closeSync(outFd);
  const exited = new Promise((resolve, reject) => {
    curl.once("error", reject);
    curl.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`curl exited with ${code}`))));
  });
  // Started and blocked reading its configuration (which it parses before any transfer).
  await setTimeout(300);
  const config = files.map((f) => `url = "${base}/${f}"\noutput = "/dev/null"\n`).join("");
  const t0 = performance.now();
  curl.stdin.end(config);
  await exited;
  const seconds = (performance.now() - t0) / 1000;
  const out = readFileSync(outFile, "utf8");
  rmSync(outFile);
  const sizes = out.split("\n").filter(Boolean).map(Number);
  if (sizes.length !== files.length)
    throw new Error(`curl reported ${sizes.length} of ${files.length} downloads`);
  return { seconds, bytes: sizes.reduce((a, b) => a + b, 0) };
}

const jobFile = process.argv[2];
if (!jobFile) throw new Error("usage: http-client.mjs JOB.json");
const job = JSON.parse(readFileSync(jobFile, "utf8"));
let result;
if (job.kind === "sequential") {
  const base = new URL(job.base);
  // Unmeasured passes first, for at least warmupSeconds (one pass at least): the measure is a warm server's
  // latency (JIT-compiled code, page cache), and they warm this client alike for every peer. One pass was not
  // enough: after a push, nixstash's narinfo answers were still being compiled through several timed reps
  // (V8 optimized 48 functions and deoptimized 6 over five reps of 11 passes, which went 35 -> 25 ms a pass:
  // BENCHMARKS.md, session 20).
  const warmUntil = performance.now() + (job.warmupSeconds ?? 0) * 1000;
  do await sequentialGets(base, job.paths);
  while (performance.now() < warmUntil);
  const all = Array.from({ length: job.passes }, () => job.paths).flat();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const statuses = await sequentialGets(base, all);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  result = { seconds, statuses, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
} else if (job.kind === "download") {
  // One unmeasured download of every file first, as measure 1's passes and measure 2's wrk pass warm their
  // servers: a server's first downloads after the other peers' turns run cold (code not yet optimized, memo
  // and disk copies not yet made), and the measure is a warm cache's. On nixstash the NAR path was still
  // being optimized after ~800 requests (`--trace-opt`, BENCHMARKS.md session 26).
  if (job.warmup) await downloadAll(job.base, job.files, job.connections, dirname(jobFile));
  // Several timed downloads back to back, each a sample of its own: one download of the closure takes
  // 0.13-0.25 s here, and with one per run nixstash's ratio on 16 connections went from 1.07x to 1.33x
  // between two runs of the bench with nothing on its path changed (BENCHMARKS.md, session 26).
  const samples = [];
  for (let i = 0; i < (job.passes ?? 1); i++)
    samples.push(await downloadAll(job.base, job.files, job.connections, dirname(jobFile)));
  result = { samples };
} else throw new Error(`unknown job kind ${job.kind}`);
process.stdout.write(`${JSON.stringify(result)}\n`);
