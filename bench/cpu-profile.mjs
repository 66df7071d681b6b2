// Preload (`NODE_OPTIONS=--import bench/cpu-profile.mjs`) that CPU-profiles a whole Node process the way
// `node --cpu-prof` does (Node 20 refuses --cpu-prof in NODE_OPTIONS, and the server is started by
// test/support/server-process.ts, whose command line the benchmark does not own). The profile is written to
// $NIXSTASH_CPU_PROF_DIR/<pid>.cpuprofile when the process exits (the server exits on SIGTERM).
import { mkdirSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { join } from "node:path";

const dir = process.env.NIXSTASH_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", { interval: 1000 });
  session.post("Profiler.start");
  process.on("exit", () => {
    // On the main thread the inspector answers synchronously, so this completes inside the exit handler.
    session.post("Profiler.stop", (error, result) => {
      if (error) return;
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, `${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
