// zstd-napi's native binding, the one its DecompressStream drives: a CommonJS module ESM cannot import by
// name, and dStreamOutSize (ZSTD_DStreamOutSize) is missing from its typings. Used by the bounded
// in-thread decoder (compression.ts) and the decode worker (decode-worker.ts).
import { createRequire } from "node:module";
import type * as Binding from "zstd-napi/binding.js";

export const zstdBinding = createRequire(import.meta.url)("zstd-napi/binding.js") as typeof Binding & {
  dStreamOutSize(): number;
};
