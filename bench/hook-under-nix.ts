// Measure 7 as a builder sees it: how long Nix's own build loop waits for the post-build hook.
//
// Nix 2.8 runs the hook between two log events of its own, the start and the stop of a "running
// post-build-hook" activity (type 110, actPostBuildHook): between them it copies its environment, forks
// itself, execs the hook and waits for it (the child does Nix's own set-up between fork and exec). With
// `--log-format internal-json` both events reach stderr as `@nix {...}` lines, written before the fork and
// after the wait; this process timestamps them as they arrive. It sleeps in the meantime, so both lines are
// read as soon as they are written (the pipe adds the same few microseconds to each).
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";
import { nixEnvIn } from "./workload.ts";

const execFileP = promisify(execFile);
const HOOK_ACTIVITY = 110;

/**
 * Builds `builds` fresh trivial derivations with `nix-store --realise` (one job at a time, as a builder's
 * queue of small builds) with `hook` as `post-build-hook`, and returns the milliseconds Nix spent on each
 * hook call. `env` is added to the environment Nix passes on to the hook (NIXSTASH_STATE_DIR).
 */
export async function hookCallsUnderNix(
  hook: string,
  builds: number,
  dir: string,
  env: Record<string, string> = {},
): Promise<number[]> {
  const nixEnv = { ...nixEnvIn(dir, [`post-build-hook = ${hook}`, "max-jobs = 1"]), ...env };
  const nonce = randomBytes(8).toString("hex");
  const expression = `builtins.genList (i: builtins.derivation {
    name = "hook-bench-\${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${nonce} \${toString i} > $out" ];
  }) ${builds}`;
  const drvs = (
    await execFileP("nix-instantiate", ["-E", expression], { env: nixEnv, maxBuffer: 1 << 24 })
  ).stdout
    .trim()
    .split("\n");
  if (drvs.length !== builds)
    throw new Error(`nix-instantiate gave ${drvs.length} derivations, not ${builds}`);
  const realise = spawn("nix-store", ["--realise", ...drvs, "--log-format", "internal-json"], {
    env: nixEnv,
    stdio: ["ignore", "ignore", "pipe"],
  });
  const started = new Map<number, bigint>();
  const ms: number[] = [];
  const errors: string[] = [];
  let pending = "";
  realise.stderr.setEncoding("utf8");
  realise.stderr.on("data", (chunk: string) => {
    const at = process.hrtime.bigint();
    pending += chunk;
    for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (!line.startsWith("@nix ")) continue;
      const event = JSON.parse(line.slice(5)) as {
        action: string;
        id?: number;
        type?: number;
        msg?: string;
        level?: number;
      };
      if (event.action === "start" && event.type === HOOK_ACTIVITY && event.id !== undefined)
        started.set(event.id, at);
      else if (event.action === "stop" && event.id !== undefined) {
        const t0 = started.get(event.id);
        if (t0 === undefined) continue;
        ms.push(Number(at - t0) / 1e6);
        started.delete(event.id);
      } else if (event.action === "msg" && (event.level ?? 9) === 0 && event.msg) errors.push(event.msg);
    }
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    realise.once("error", reject);
    realise.once("close", resolve);
  });
  if (code !== 0) throw new Error(`nix-store --realise exited ${code}: ${errors.join("; ")}`);
  if (ms.length !== builds)
    throw new Error(`Nix logged ${ms.length} post-build-hook calls for ${builds} builds`);
  return ms;
}
