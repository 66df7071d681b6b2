// Where the CPU of one push goes (issue 7, measure 6): `npm run bench -- push-profile [--stack S] [--reps N]
// [--warm-ups N] [--perf]`. bench/run.sh starts PostgreSQL and Ceph RGW first (unless --stack sqlite+local
// with --no-s3) and routes here. Each rep times `nix copy --to file://` of the bench closure, starts a fresh
// nixstash server on the stack, pushes the warm-up closures into it unmeasured (as measure 6 does), then
// times `nixstash push` of the closure and prints the CPU seconds of each party from /proc: the push
// command, the server, RGW, its OSD, PostgreSQL, and what the machine left idle. With --perf, `perf record
// -a -g` samples the whole machine during the push (the server started with --perf-basic-prof-only-functions
// so its JavaScript frames have names), and a summary by process and library is printed; the data file is
// kept for `perf report -i FILE`. Nothing is written to BENCHMARKS.md.
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { nixstashPush, type Stack, startNixstash } from "./peers.ts";
import { childrenCpuSeconds, processCpuSeconds, servicesCpuByName } from "./proc-cpu.ts";
import { buildWarmUps, buildWorkload, copyToFileTimed, nixEnvIn } from "./workload.ts";

const execFileP = promisify(execFile);
const TMP = process.env.NIXSTASH_BENCH_TMP ?? join(os.tmpdir(), `nixstash-push-profile-${process.pid}`);

const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (["--stack", "--reps", "--warm-ups"].includes(a) && args[i + 1] !== undefined) i++;
  else if (a !== "--perf" && a !== "--no-s3")
    throw new Error(`push-profile: unknown option ${a} (--stack S, --reps N, --warm-ups N, --perf, --no-s3)`);
}
const option = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const stack = (option("--stack") ?? "postgres+s3") as Stack;
if (stack !== "postgres+s3" && stack !== "sqlite+local")
  throw new Error(`--stack ${stack}: sqlite+local or postgres+s3`);
const reps = Number(option("--reps") ?? 3);
const warmUpCount = Number(option("--warm-ups") ?? 4);
const withPerf = args.includes("--perf");
if (withPerf && spawnSync("perf", ["--version"]).status !== 0)
  throw new Error("push-profile --perf needs perf (apt-get install -y linux-perf)");
for (const [name, n] of [
  ["--reps", reps],
  ["--warm-ups", warmUpCount],
] as const) {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a whole number`);
}

const log = (line: string) =>
  process.stderr.write(`[push-profile ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

/** Idle CPU seconds of the whole machine (all cores), from /proc/stat. */
const idleCpu = () => {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.split(/\s+/);
  return (Number(cpu[4]) + Number(cpu[5])) / 100; // idle + iowait, in USER_HZ
};

const workload = await buildWorkload({ seed: 7, dir: join(TMP, "workload") });
const warmUps = await buildWarmUps(TMP, warmUpCount, (i, seed) =>
  log(`building warm-up closure ${i + 1}/${warmUpCount} (seed ${seed})`),
);
log(
  `closure: ${workload.paths.length} paths, ${(workload.narBytes / 2 ** 20).toFixed(1)} MiB of NAR; stack ${stack}`,
);
const copyEnv = nixEnvIn(join(TMP, "nix-push"));
const copyDir = join(TMP, "push-profile-file");

for (let rep = 1; rep <= reps; rep++) {
  const copy = await copyToFileTimed(workload, copyDir, copyEnv);
  rmSync(copyDir, { recursive: true, force: true });
  const peer = await startNixstash(
    stack,
    TMP,
    withPerf ? { NODE_OPTIONS: "--perf-basic-prof-only-functions" } : {},
  );
  let perf: ChildProcess | undefined;
  try {
    for (const warmUp of warmUps) await nixstashPush(peer, [warmUp.top]);
    const perfData = join(TMP, `push-profile-${rep}.perf.data`);
    if (withPerf) {
      perf = spawn("perf", ["record", "-a", "-g", "-F", "999", "-o", perfData], { stdio: "ignore" });
      await new Promise((resolve) => setTimeout(resolve, 500)); // perf is sampling before the push starts
    }
    const before = servicesCpuByName();
    const [client0, server0, idle0] = [childrenCpuSeconds(), processCpuSeconds(peer.pid!), idleCpu()];
    const t0 = performance.now();
    await nixstashPush(peer, [workload.top]);
    const seconds = (performance.now() - t0) / 1000;
    const [client, server, idle] = [
      childrenCpuSeconds() - client0,
      processCpuSeconds(peer.pid!) - server0,
      idleCpu() - idle0,
    ];
    const after = servicesCpuByName();
    if (perf) {
      perf.kill("SIGINT");
      await new Promise((resolve) => perf!.once("exit", resolve));
    }
    const service = (comm: string) => (after.get(comm) ?? 0) - (before.get(comm) ?? 0);
    const services = ["radosgw", "ceph-osd", "ceph-mon", "postgres"]
      .map((comm) => [comm, service(comm)] as const)
      .filter(([, s]) => s > 0);
    const total = client + server + services.reduce((n, [, s]) => n + s, 0);
    process.stdout.write(
      `rep ${rep}: copy ${copy.seconds.toFixed(2)} s (${copy.cpu.toFixed(2)} CPU s); push ${seconds.toFixed(2)} s = ${(seconds / copy.seconds).toFixed(2)}x; ` +
        `CPU s: push command ${client.toFixed(2)}, server ${server.toFixed(2)}${services.map(([c, s]) => `, ${c} ${s.toFixed(2)}`).join("")}; ` +
        `all ${total.toFixed(2)} = ${(total / 2 / copy.seconds).toFixed(2)}x of the copy over 2 cores; machine idle ${idle.toFixed(2)}\n`,
    );
    if (withPerf) {
      const { stdout } = await execFileP(
        "perf",
        ["report", "-i", perfData, "--no-children", "--sort", "comm,dso", "-g", "none", "--stdio"],
        { maxBuffer: 1 << 26 },
      );
      const lines = stdout.split("\n").filter((l) => l.trim() && !l.startsWith("#"));
      process.stdout.write(`  perf, share of samples by process and library (${perfData}):\n`);
      for (const line of lines.slice(0, 15)) process.stdout.write(`  ${line.trim()}\n`);
    }
  } finally {
    perf?.kill("SIGINT");
    await peer.stop();
    await peer.cleanupBackends();
  }
}
