// Measure 6's floor of verification, in a process of its own: what any server that checks every pushed NAR
// must at least do with the NAR files `nix copy --to file://` wrote — decode each with zstd and SHA-256 the
// NAR (bench/nar-hasher.mjs: the binding the server's decoder drives, into one block reused throughout) —
// without parsing it, storing it or anything else. Prints the files, NAR bytes and its own CPU
// seconds as one JSON line.
//   node bench/verify-floor.mjs FILE...
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { closeSync, openSync, readSync } from "node:fs";
import { createNarHasher } from "./nar-hasher.mjs";

const files = process.argv.slice(2);
if (files.length === 0) throw new Error("usage: verify-floor.mjs FILE...");
const cpu0 = process.cpuUsage();
const hasher = createNarHasher();
const input = new Uint8Array(1 << 20);
let narBytes = 0;
for (const file of files) {
  const fd = openSync(file, "r");
  hasher.start();
  for (;;) {
    const n = readSync(fd, input, 0, input.length, null);
    if (n === 0) break;
    hasher.update(input.subarray(0, n));
  }
  closeSync(fd);
  hasher.digest();
  narBytes += hasher.narBytes;
}
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${JSON.stringify({ files: files.length, narBytes, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}
`,
);
