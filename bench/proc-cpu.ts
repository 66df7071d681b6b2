// CPU seconds from /proc (clock ticks of 1/100 s), for the bench and push-profile: of this process's finished
// children, of a running process (and its direct children), and of the services the postgres+s3 stack
// stores into.
import { readdirSync, readFileSync } from "node:fs";

/** Fields of /proc/PID/stat from the third (state) on. */
export function statFields(pid: string): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

export function childrenCpuSeconds(): number {
  const fields = statFields("self");
  return (Number(fields[13]) + Number(fields[14])) / 100; // cutime, cstime
}

export function processCpuSeconds(pid: number): number {
  const fields = statFields(String(pid));
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime
}

/** CPU seconds of a process and its direct children (nginx's workers). */
export function serverCpuSeconds(pid: number): number {
  let seconds = processCpuSeconds(pid);
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (Number(statFields(entry)[1]) === pid) seconds += processCpuSeconds(Number(entry));
    } catch {} // gone since the listing
  }
  return seconds;
}

/**
 * CPU seconds used so far by the services the postgres+s3 stack stores into (Ceph RGW, its OSD and monitor,
 * PostgreSQL), by process name. On this machine they share the two cores with client and server, so a push
 * to that stack pays for their work too. Every process of those names on the machine counts (the bench's own
 * services are the only ones here), with its own time and that of the children it has reaped (PostgreSQL's
 * backends exit with their connections).
 */
export function servicesCpuByName(): Map<string, number> {
  const out = new Map<string, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const comm = readFileSync(`/proc/${entry}/comm`, "utf8").trim();
      if (!/^(radosgw|ceph-osd|ceph-mon|postgres)$/.test(comm)) continue;
      const f = statFields(entry);
      out.set(
        comm,
        (out.get(comm) ?? 0) + (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100,
      );
    } catch {} // gone since the listing
  }
  return out;
}

/** The services' CPU seconds so far, all together (see servicesCpuByName). */
export function servicesCpuSeconds(): number {
  let seconds = 0;
  for (const s of servicesCpuByName().values()) seconds += s;
  return seconds;
}
