// Summarises a V8 .cpuprofile (from `npm run bench -- --profile`, i.e. node --cpu-prof of the servers):
// self time by function and by package/file, so a missed target can be traced to its cause.
//   node --import tsx bench/profile-summary.ts FILE.cpuprofile [TOP]
// The times are V8's: each sample weighs the wall time since the one before. A thread that waited off the
// CPU (descheduled on a busy machine, often inside a system call) charges that wait to the frame it resumes
// in, so socket writes and reads look dearer than their CPU. For CPU alone, sample the process with
// `perf record -g -p PID` (linux-perf; start node with --perf-basic-prof to name its JavaScript frames): on
// the closure's push to PostgreSQL + RGW, session 19's V8 profile put 0.74 s in socket writes to RGW, and
// perf 0.6 s in all of the server's kernel time, every thread (BENCHMARKS.md, session 20).
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg] = process.argv.slice(2);
if (!file) throw new Error("usage: profile-summary.ts FILE.cpuprofile [TOP]");
const top = Number(topArg ?? 25);
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map<number, number>();
profile.samples.forEach((id, i) => {
  self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
});
const total = [...self.values()].reduce((a, b) => a + b, 0);
const where = (n: ProfileNode) => {
  const url = n.callFrame.url.replace(/^file:\/\//, "");
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  if (url.startsWith("node:")) return url;
  return url ? url.replace(/^.*?\/(server|nix|hook|schema)\//, "$1/") : "(native/vm)";
};
const fn = new Map<string, number>();
const pkg = new Map<string, number>();
for (const [id, us] of self) {
  const n = byId.get(id)!;
  const name = `${n.callFrame.functionName || "(anonymous)"} ${where(n)}:${n.callFrame.lineNumber + 1}`;
  fn.set(name, (fn.get(name) ?? 0) + us);
  pkg.set(where(n), (pkg.get(where(n)) ?? 0) + us);
}
const show = (title: string, m: Map<string, number>) => {
  process.stdout.write(`${title}\n`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top))
    process.stdout.write(
      `  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}\n`,
    );
};
process.stdout.write(`${file}: ${(total / 1e6).toFixed(2)} s sampled\n`);
show("self time by package/file:", pkg);
show("self time by function:", fn);
