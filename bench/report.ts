// Statistics and the results table: each cell is the median of the runs with [min–max], and the ratio to
// the baseline peer's median from the same run (or, for a row whose every sample has the baseline timed
// next to it, the median of those paired ratios); written into BENCHMARKS.md between two markers (the rest
// of the file, the human analysis, is left as it is).
import { existsSync, readFileSync, writeFileSync } from "node:fs";

export interface Row {
  measure: string;
  peer: string;
  unit: string;
  values: number[];
  /** Whether a smaller number is better (times, latencies) or a larger one (rates). */
  lowerIsBetter: boolean;
  /** Peer whose median this row is compared with (same measure), shown as "x.xx×"; none for the baseline. */
  baseline?: string;
  /** A second comparison (e.g. nixstash on S3 against RGW serving the static files). */
  baseline2?: string;
  /** This row is the baseline others compare with. */
  isBaseline?: boolean;
  /**
   * The baseline's own sample taken next to each of `values` (same index, same unit). When every value has
   * one, the ratio to `baseline` is the median of the paired ratios: the machine's speed drifts from minute
   * to minute (the yardstick of measure 6 took 3.0 s or 4.3 s in one run), and a ratio of two medians taken
   * minutes apart measures that drift as much as the peer.
   */
  pairs?: number[];
  target?: { text: string; ok: (row: Row, ratio: number | undefined, ratio2: number | undefined) => boolean };
  note?: string;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  return a >= 1000 ? n.toFixed(0) : a >= 100 ? n.toFixed(1) : a >= 10 ? n.toFixed(2) : n.toFixed(3);
}

/** Time-like ratio: peer / baseline for lower-is-better, baseline / peer for rates (so >1 is always slower). */
export function ratioOf(rows: Row[], row: Row, baselinePeer: string | undefined): number | undefined {
  if (!baselinePeer || row.values.length === 0) return undefined;
  if (isPaired(row, baselinePeer)) {
    return median(row.values.map((v, i) => (row.lowerIsBetter ? v / row.pairs![i]! : row.pairs![i]! / v)));
  }
  const base = baselineRow(rows, row, baselinePeer);
  if (!base || base.values.length === 0) return undefined;
  const b = median(base.values);
  const v = median(row.values);
  return row.lowerIsBetter ? v / b : b / v;
}

/**
 * Pairs each row of the given measures with its baseline's samples by position: for measures that take, in
 * every run, each peer's samples in the same order and seconds after the baseline's, sample i of a peer and
 * sample i of the baseline come from the same run (and the same pass within it). A row gets pairs only when
 * it has as many samples as its baseline and none yet; others keep the ratio of medians.
 */
export function pairByPosition(rows: Row[], measures: (measure: string) => boolean): void {
  for (const row of rows) {
    if (!row.baseline || row.pairs || !measures(row.measure)) continue;
    const base = baselineRow(rows, row, row.baseline);
    if (base && base.values.length === row.values.length && row.values.length > 0)
      row.pairs = [...base.values];
  }
}

/** The row of baselinePeer that `row` is compared with: the same measure and unit. */
function baselineRow(rows: Row[], row: Row, baselinePeer: string): Row | undefined {
  return rows.find((r) => r.measure === row.measure && r.peer === baselinePeer && r.unit === row.unit);
}

/** Whether the ratio to baselinePeer is the median of paired ratios (the row's own baseline only). */
function isPaired(row: Row, baselinePeer: string): boolean {
  return baselinePeer === row.baseline && row.pairs !== undefined && row.pairs.length === row.values.length;
}

export function renderTable(unsorted: Row[]): string {
  // Grouped by measure (in the order measures first appear), peers in the order they first appear.
  const measures = [...new Set(unsorted.map((r) => r.measure))].sort(
    (a, b) => Number.parseInt(a, 10) - Number.parseInt(b, 10),
  );
  const rows = measures.flatMap((m) => unsorted.filter((r) => r.measure === m));
  const lines = [
    "| measure | peer | median | [min – max] | n | vs baseline | target | met |",
    "| --- | --- | ---: | --- | ---: | ---: | --- | :---: |",
  ];
  for (const row of rows) {
    if (row.values.length === 0) continue;
    const ratio = ratioOf(rows, row, row.baseline);
    const ratio2 = ratioOf(rows, row, row.baseline2);
    const min = Math.min(...row.values);
    const max = Math.max(...row.values);
    const vs = [
      ratio !== undefined
        ? `${ratio.toFixed(2)}× ${shortName(row.baseline!)}${isPaired(row, row.baseline!) ? " (paired)" : ""}`
        : row.isBaseline
          ? "baseline"
          : "",
      ratio2 !== undefined ? `${ratio2.toFixed(2)}× ${shortName(row.baseline2!)}` : "",
    ]
      .filter(Boolean)
      .join("; ");
    const met = row.target ? (row.target.ok(row, ratio, ratio2) ? "yes" : "**no**") : "";
    lines.push(
      `| ${row.measure} | ${row.peer}${row.note ? ` (${row.note})` : ""} | ${fmt(median(row.values))} ${row.unit} | ${fmt(min)} – ${fmt(max)} | ${row.values.length} | ${vs} | ${row.target?.text ?? ""} | ${met} |`,
    );
  }
  return lines.join("\n");
}

function shortName(peer: string): string {
  if (peer.startsWith("nginx")) return "nginx";
  if (peer.startsWith("Ceph RGW")) return "RGW";
  if (peer.startsWith("node:http")) return "node floor";
  if (peer.startsWith("node raw")) return "node raw floor";
  if (peer.startsWith("nix copy --to file://")) return "file://";
  if (peer.startsWith("S3 streaming floor")) return "S3 streaming floor";
  return peer;
}

export const BEGIN = "<!-- bench:results:begin (written by bench/main.ts; edits inside are overwritten) -->";
export const END = "<!-- bench:results:end -->";

/** Replaces the generated section of the file (creating the file with a skeleton when missing). */
export function writeGeneratedSection(file: string, section: string): void {
  const block = `${BEGIN}\n${section.trim()}\n${END}`;
  let text = existsSync(file) ? readFileSync(file, "utf8") : "";
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  if (a >= 0 && b > a) text = `${text.slice(0, a)}${block}${text.slice(b + END.length)}`;
  else
    text = `# Benchmarks\n\nHow to run: see README, section "Benchmarks".\n\n## Latest results\n\n${block}\n\n## Analysis\n\n(to be written)\n${text ? `\n${text}` : ""}`;
  writeFileSync(file, text);
}
