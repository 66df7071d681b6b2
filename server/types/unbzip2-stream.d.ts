// unbzip2-stream (no bundled types): a streaming bzip2 decoder.
declare module "unbzip2-stream" {
  import type { Duplex } from "node:stream";

  function unbzip2Stream(): Duplex;
  export default unbzip2Stream;
}
