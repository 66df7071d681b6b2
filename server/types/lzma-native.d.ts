// The part of lzma-native (no bundled types) that nixstash uses: a streaming .xz decoder.
declare module "lzma-native" {
  import type { Transform } from "node:stream";
  export function createDecompressor(options?: { memlimit?: number; synchronous?: boolean }): Transform;
  const lzma: { createDecompressor: typeof createDecompressor };
  export default lzma;
}
