// Whether anyone else committed a write on a PostgreSQL server between two looks at it, from two
// `txid_current_snapshot()` values and the transaction ids of this process's own writes.
//
// A snapshot's text is `xmin:xmax:xip_list` (PostgreSQL docs, "Transaction ID and Snapshot Information
// Functions"): every transaction id below xmin is finished, every one from xmax on is not yet assigned,
// and xip_list names those between them still in progress (top-level ids; comma-separated, possibly empty).
// Only transactions that write get an id, so reads never show here. The ids are 64-bit (epoch and xid).
//
// Between an earlier snapshot `before` and a later one `after`, the transactions that finished are those
// that were in progress at `before` (in its xip_list) or not yet started (from its xmax on), and that at
// `after` are below its xmax and no longer in progress. If every one of those is this process's own, no
// other writer committed anything in between: what this process read since `before` still holds, as far
// as others are concerned. Conservative by construction: an aborted transaction, or a write to another
// database of the same server, counts as someone else's commit.

export interface Snapshot {
  xmin: bigint;
  xmax: bigint;
  /** In progress at the snapshot. */
  inProgress: Set<bigint>;
}

const SNAPSHOT = /^(\d+):(\d+):((?:\d+(?:,\d+)*)?)$/;

/** A `txid_current_snapshot()` (or `pg_current_snapshot()`) value; throws on anything else. */
export function parseSnapshot(text: string): Snapshot {
  const m = SNAPSHOT.exec(text.trim());
  if (!m) throw new Error(`not a PostgreSQL snapshot: ${JSON.stringify(text)}`);
  const xmin = BigInt(m[1]!);
  const xmax = BigInt(m[2]!);
  if (xmin > xmax) throw new Error(`not a PostgreSQL snapshot (xmin above xmax): ${text}`);
  const inProgress = new Set(m[3] ? m[3].split(",").map((x) => BigInt(x)) : []);
  return { xmin, xmax, inProgress };
}

/**
 * Whether a transaction that is not in `own` finished between `before` and `after` (committed or not:
 * either way it counts). Forgets the ids of `own` that are finished at `after`: accounted for now, or
 * finished before `before` and of no further use.
 */
export function othersFinished(before: Snapshot, after: Snapshot, own: Set<bigint>): boolean {
  try {
    if (after.xmax < before.xmax) return true; // not the same server, or not a later look
    // More new ids than could be this process's own or still running: someone else's, without counting.
    if (after.xmax - before.xmax > BigInt(own.size + after.inProgress.size)) return true;
    const finished = (id: bigint) => !after.inProgress.has(id);
    for (const id of before.inProgress) if (finished(id) && !own.has(id)) return true;
    for (let id = before.xmax; id < after.xmax; id++) if (finished(id) && !own.has(id)) return true;
    return false;
  } finally {
    for (const id of own) if (id < after.xmax && !after.inProgress.has(id)) own.delete(id);
  }
}
