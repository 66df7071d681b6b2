// Measure 6's floor of verification, in a process of its own: what any server that checks every pushed NAR
// must at least do with the NAR files `nix copy --to file://` wrote — decode each with zstd (the binding the
// server's decoder drives, into one block reused throughout, as the server's decode worker does) and SHA-256
// the NAR — without parsing it, storing it or anything else. Prints the files, NAR bytes and its own CPU
// seconds as one JSON line.
//   node bench/verify-floor.mjs FILE...
// Plain JavaScript, so it starts without the TypeScript loader and stays small.
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";
import { createRequire } from "node:module";

const binding = createRequire(import.meta.url)("zstd-napi/binding.js");
const files = process.argv.slice(2);
if (files.length === 0) throw new Error("usage: verify-floor.mjs FILE...");
const cpu0 = process.cpuUsage();
const dctx = new binding.DCtx();
const input = new Uint8Array(1 << 20);
const block = new Uint8Array(4 * binding.dStreamOutSize());
let narBytes = 0;
for (const file of files) {
  const hash = createHash("sha256");
  const fd = openSync(file, "r");
  dctx.reset(binding.ResetDirective.sessionOnly);
  for (;;) {
    const n = readSync(fd, input, 0, input.length, null);
    if (n === 0) break;
    let rest = input.subarray(0, n);
    for (;;) {
      const [, produced, consumed] = dctx.decompressStream(block, rest);
      rest = rest.subarray(consumed);
      if (produced > 0) hash.update(block.subarray(0, produced));
      narBytes += produced;
      if (rest.length === 0 && produced < block.length) break;
    }
  }
  closeSync(fd);
  hash.digest();
}
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${JSON.stringify({ files: files.length, narBytes, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
);
