// What holds a process's array buffers, read from a V8 heap snapshot (`--heapsnapshot-signal`,
// v8.writeHeapSnapshot): a test that fails on memory says so in its message, where CI keeps it, instead of
// in a snapshot file that goes with the run's scratch directory.
//
// The snapshot's format (its `snapshot.meta` names the fields): `nodes` is a flat array of node_fields per
// node (type, name, id, self_size, edge_count, ...), `edges` a flat array of edge_fields per edge (type,
// name_or_index, to_node as an index into `nodes`), each node's edges following the previous node's; names
// are indices into `strings`. An ArrayBuffer's bytes are a native node "system / JSArrayBufferData" whose
// self_size is its length. Node 0 is the root.
import { readFileSync } from "node:fs";

interface Snapshot {
  snapshot: {
    meta: {
      node_fields: string[];
      node_types: [string[], ...unknown[]];
      edge_fields: string[];
      edge_types: [string[], ...unknown[]];
    };
  };
  nodes: number[];
  edges: number[];
  strings: string[];
}

export interface RetainerGroup {
  /** The chain from the buffer up towards the roots, e.g. "JSArrayBufferData <- ArrayBuffer <- Buffer <- ...". */
  path: string;
  buffers: number;
  bytes: number;
}

/**
 * Array buffer bytes grouped by their retainer chain (each buffer's shortest path towards the GC roots, up to
 * `depth` hops), largest groups first. Weak edges do not retain.
 */
export function bufferRetainers(file: string, depth = 10): RetainerGroup[] {
  const s = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const { meta } = s.snapshot;
  const nf = meta.node_fields.length;
  const ef = meta.edge_fields.length;
  const [TYPE, NAME, SIZE, EDGES] = ["type", "name", "self_size", "edge_count"].map((f) =>
    meta.node_fields.indexOf(f),
  ) as [number, number, number, number];
  const [E_TYPE, E_NAME, E_TO] = ["type", "name_or_index", "to_node"].map((f) =>
    meta.edge_fields.indexOf(f),
  ) as [number, number, number];
  const nodeTypes = meta.node_types[0];
  const edgeTypes = meta.edge_types[0];
  const weak = edgeTypes.indexOf("weak");
  const count = s.nodes.length / nf;

  const firstEdge = new Uint32Array(count + 1);
  for (let i = 0; i < count; i++) firstEdge[i + 1] = firstEdge[i]! + s.nodes[i * nf + EDGES]! * ef;

  // Retainers of each node (compressed rows), with the edge that retains it.
  const retainerCount = new Uint32Array(count + 1);
  for (let e = 0; e < s.edges.length; e += ef)
    if (s.edges[e + E_TYPE] !== weak) retainerCount[s.edges[e + E_TO]! / nf + 1]!++;
  for (let i = 0; i < count; i++) retainerCount[i + 1]! += retainerCount[i]!;
  const retainerFrom = new Uint32Array(retainerCount[count]!);
  const retainerEdge = new Uint32Array(retainerCount[count]!);
  const filled = retainerCount.slice(0, count);
  for (let i = 0; i < count; i++) {
    for (let e = firstEdge[i]!; e < firstEdge[i + 1]!; e += ef) {
      if (s.edges[e + E_TYPE] === weak) continue;
      const to = s.edges[e + E_TO]! / nf;
      retainerFrom[filled[to]!] = i;
      retainerEdge[filled[to]!] = e;
      filled[to]!++;
    }
  }

  // Distance from the root over strong edges: a buffer's path follows the retainer closest to the root.
  const distance = new Uint32Array(count).fill(0xffffffff);
  distance[0] = 0;
  const queue = new Uint32Array(count);
  let head = 0;
  let tail = 0;
  queue[tail++] = 0;
  while (head < tail) {
    const i = queue[head++]!;
    for (let e = firstEdge[i]!; e < firstEdge[i + 1]!; e += ef) {
      if (s.edges[e + E_TYPE] === weak) continue;
      const to = s.edges[e + E_TO]! / nf;
      if (distance[to] === 0xffffffff) {
        distance[to] = distance[i]! + 1;
        queue[tail++] = to;
      }
    }
  }

  const label = (i: number): string => {
    const name = s.strings[s.nodes[i * nf + NAME]!] ?? "";
    const type = nodeTypes[s.nodes[i * nf + TYPE]!] ?? "?";
    const short = name.length > 40 ? `${name.slice(0, 40)}…` : name;
    return type === "object" || type === "native" || type === "closure" ? short || type : `(${type})${short}`;
  };
  const edgeLabel = (e: number): string => {
    const type = edgeTypes[s.edges[e + E_TYPE]!];
    const name = s.edges[e + E_NAME]!;
    // Indices are left out, so that the elements of one array (or the links of one list) group together.
    return type === "element" || type === "hidden" ? "[]" : `.${s.strings[name] ?? name}`;
  };

  const groups = new Map<string, RetainerGroup>();
  for (let i = 0; i < count; i++) {
    if (s.strings[s.nodes[i * nf + NAME]!] !== "system / JSArrayBufferData") continue;
    const bytes = s.nodes[i * nf + SIZE]!;
    const hops = ["JSArrayBufferData"];
    let at = i;
    let repeats = 0;
    // A hop like the one before (a linked list's `.next`) is counted once, and not against `depth`.
    for (let hop = 0, steps = 0; hop < depth && steps < 100_000; steps++) {
      let best = -1;
      let bestEdge = 0;
      for (let r = retainerCount[at]!; r < retainerCount[at + 1]!; r++) {
        const from = retainerFrom[r]!;
        if (best === -1 || distance[from]! < distance[best]!) {
          best = from;
          bestEdge = retainerEdge[r]!;
        }
      }
      if (best <= 0) break;
      at = best;
      const text = `${label(best)}${edgeLabel(bestEdge)}`;
      if (text === hops[hops.length - 1]) {
        repeats++;
        continue;
      }
      if (repeats > 0) hops[hops.length - 1] += ` (x${repeats + 1})`;
      repeats = 0;
      hops.push(text);
      hop++;
    }
    if (repeats > 0) hops[hops.length - 1] += ` (x${repeats + 1})`;
    const path = hops.join(" <- ");
    const group = groups.get(path) ?? { path, buffers: 0, bytes: 0 };
    group.buffers++;
    group.bytes += bytes;
    groups.set(path, group);
  }
  return [...groups.values()].sort((a, b) => b.bytes - a.bytes);
}

/** The largest `top` groups as lines for a test message. */
export function describeBufferRetainers(file: string, top = 5): string {
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  return bufferRetainers(file)
    .slice(0, top)
    .map((g) => `${mib(g.bytes)} in ${g.buffers} buffers: ${g.path}`)
    .join("\n");
}
