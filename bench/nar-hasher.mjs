// The verifying both of measure 6's floors do (bench/verify-floor.mjs, bench/relay-floor.mjs): decode a zstd
// NAR with zstd-napi's binding (the one the server's decoder drives) into one block, and SHA-256 what comes
// out, nothing else. A hasher keeps its decoding context and block for every NAR it is started on. Its
// decoding loop, `decodeInto`, also decodes the streaming floor's NARs into memory (relay-floor.mjs push).
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
      decodeInto(dctx, block, compressed, (decoded) => {
        hash.update(decoded);
        this.narBytes += decoded.length;
      });
    },
    /** The NAR's SHA-256. */
    digest() {
      return hash.digest();
    },
  };
}

/**
 * Decodes one piece of zstd input on `dctx` through `block`, handing each decoded stretch to `sink` (valid
 * until the sink returns), until the input is used up and zstd has nothing more to give for it.
 */
export function decodeInto(dctx, block, compressed, sink) {
  let rest = compressed;
  for (;;) {
    const [, produced, consumed] = dctx.decompressStream(block, rest);
    rest = rest.subarray(consumed);
    if (produced > 0) sink(block.subarray(0, produced));
    if (rest.length === 0 && produced < block.length) break;
  }
}
