// Measure 7's load generator, in a small process of its own: a big parent (the bench holds the workload
// and has hashed a 1 GiB NAR by then) makes every fork slower and would be measured instead of the hook.
// Runs the post-build hook once per store path, HOOK_PACE_MS apart, and prints the latencies (ms) as JSON.
//   node bench/hook-loop.mjs HOOK PACE_MS PATH...      (NIXSTASH_STATE_DIR set by the caller)
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { spawnSync } from "node:child_process";

const [hook, pace, ...paths] = process.argv.slice(2);
if (!hook || !pace || paths.length === 0) throw new Error("usage: hook-loop.mjs HOOK PACE_MS PATH...");
const env = {
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  NIXSTASH_STATE_DIR: process.env.NIXSTASH_STATE_DIR ?? "",
};
const ms = [];
for (const path of paths) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(hook, [], {
    env: { ...env, DRV_PATH: `${path}.drv`, OUT_PATHS: path },
    stdio: "ignore",
  });
  ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  if (r.status !== 0) throw new Error(`hook exited ${r.status}`);
  await new Promise((res) => setTimeout(res, Number(pace)));
}
process.stdout.write(`${JSON.stringify(ms)}\n`);
