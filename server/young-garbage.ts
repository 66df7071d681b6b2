// Collecting an upload's dead Buffers as it goes. Every read of a request body is a new Buffer (node:http
// allocates one per socket read, 64 KiB on a fast upload), dead as soon as the ingest pipeline has hashed,
// parsed and compressed or stored it; its bytes live outside V8's heap. V8 frees them only when a
// collection runs, and a streaming upload allocates little on the heap itself, so collections come late
// (V8 also collects once external memory has grown by 64 MiB since the last one). Measured on a 1 GiB
// upload (BENCHMARKS.md, session 18): the process heap (malloc) grew by 43-60 MB; with a young-generation
// collection every few MiB, by 14-27.
//
// So the ingest reports the body bytes it has taken in, and every `everyBytes` of them this runs a young-
// generation collection (a scavenge: ~0.1-1 ms, while a GiB of body arrives in seconds). It needs `gc`,
// which node exposes with --expose-gc (the start script, the Dockerfile); without it, nothing happens.

/** The collection function node exposes with --expose-gc (V8's: it takes the kind of collection). */
type ExposedGc = (options: { type: "minor" | "major"; execution?: "sync" | "async" }) => void;

/** What the ingest calls with the body bytes it has taken in. */
export type BodyBytesSeen = (bytes: number) => void;

/** Body bytes between two young-generation collections. */
export const COLLECT_EVERY_BYTES = 8 * 1024 * 1024;

/**
 * The ingest's `BodyBytesSeen`, or undefined when `gc` is not exposed. `collect` stands in for node's `gc`
 * (tests count the collections).
 */
export function youngGarbageCollector(
  options: { everyBytes?: number; collect?: () => void } = {},
): BodyBytesSeen | undefined {
  const exposed = (globalThis as { gc?: ExposedGc }).gc;
  const collect = options.collect ?? (exposed ? () => exposed({ type: "minor" }) : undefined);
  if (!collect) return undefined;
  const every = options.everyBytes ?? COLLECT_EVERY_BYTES;
  let since = 0;
  return (bytes) => {
    since += bytes;
    if (since < every) return;
    since = 0;
    collect();
  };
}
