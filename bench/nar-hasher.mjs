// The verifying both of measure 6's floors do (bench/verify-floor.mjs, bench/relay-floor.mjs): decode a zstd
// NAR with zstd-napi's binding (the one the server's decoder drives) into one block, and SHA-256 what comes
// out, nothing else. A hasher keeps its decoding context and block for every NAR it is started on.
// Plain JavaScript, as the scripts that use it.
import { createHash } from "node:crypto";
import { createRequire } from "node:module";

const binding = createRequire(import.meta.url)("zstd-napi/binding.js");

export function createNarHasher() {
  const dctx = new binding.DCtx();
  const block = new Uint8Array(4 * binding.dStreamOutSize());
  let hash;
  return {
    /** NAR bytes decoded since start(). */
    narBytes: 0,
    /** Begins a NAR: a fresh hash, the context reset. */
    start() {
      dctx.reset(binding.ResetDirective.sessionOnly);
      hash = createHash("sha256");
      this.narBytes = 0;
    },
    /** Decodes and hashes one piece of the compressed NAR. */
    update(compressed) {
      let rest = compressed;
      for (;;) {
        const [, produced, consumed] = dctx.decompressStream(block, rest);
        rest = rest.subarray(consumed);
        if (produced > 0) hash.update(block.subarray(0, produced));
        this.narBytes += produced;
        if (rest.length === 0 && produced < block.length) break;
      }
    },
    /** The NAR's SHA-256. */
    digest() {
      return hash.digest();
    },
  };
}
