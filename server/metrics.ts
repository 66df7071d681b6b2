// Prometheus metrics, in the text exposition format 0.0.4 that Prometheus, VictoriaMetrics and Grafana Agent
// scrape (https://prometheus.io/docs/instrumenting/exposition_formats/):
//
//   # HELP nixstash_http_requests_total Requests answered, by method, route pattern and status.
//   # TYPE nixstash_http_requests_total counter
//   nixstash_http_requests_total{method="GET",route="/:cache/<hash>.narinfo",status="200"} 1027
//
// Why our own ~200 lines rather than a client library: the server needs counters, gauges and histograms with
// labels and nothing else, and a registry that is a plain value handed around in the Context (no process-wide
// default registry: two servers in one test process must not share counts).
//
// Naming follows the Prometheus conventions Grafana dashboards expect: a `nixstash_` prefix, base units
// (seconds, bytes), `_total` on counters, labels with bounded values only (route *patterns*, never raw paths;
// cache names, which an admin creates; error codes from the closed ErrorCode set).
//
// Ratios are left to PromQL, e.g. the narinfo hit ratio over 5 minutes:
//   sum(rate(nixstash_narinfo_requests_total{result="hit"}[5m])) / sum(rate(nixstash_narinfo_requests_total[5m]))
import { monitorEventLoopDelay } from "node:perf_hooks";
import process from "node:process";

export type Labels = Record<string, string>;

interface Metric {
  readonly name: string;
  render(): string;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

function labelText(labelNames: readonly string[], values: readonly string[], extra?: string): string {
  const parts = labelNames.map((n, i) => `${n}="${escapeLabel(values[i] ?? "")}"`);
  if (extra) parts.push(extra);
  return parts.length > 0 ? `{${parts.join(",")}}` : "";
}

function header(name: string, help: string, type: string): string {
  return `# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`;
}

/** Label values in the declared order; a missing label is the empty string (as Prometheus reads it). */
function keyOf(labelNames: readonly string[], labels: Labels | undefined): string[] {
  return labelNames.map((n) => labels?.[n] ?? "");
}

abstract class Series<V> implements Metric {
  protected readonly series = new Map<string, { values: string[]; value: V }>();
  constructor(
    readonly name: string,
    protected readonly help: string,
    protected readonly labelNames: readonly string[],
  ) {}
  protected entry(labels: Labels | undefined, init: () => V) {
    const values = keyOf(this.labelNames, labels);
    const key = values.join("\u0000");
    let found = this.series.get(key);
    if (!found) {
      found = { values, value: init() };
      this.series.set(key, found);
    }
    return found;
  }
  abstract render(): string;
}

/** One labelled series of a counter, its labels resolved once (for the per-request hot path). */
export interface BoundCounter {
  inc(amount?: number): void;
}

/** One labelled series of a histogram, its labels resolved once. */
export interface BoundHistogram {
  observe(value: number): void;
}

export class Counter extends Series<number> {
  inc(labels?: Labels, amount = 1): void {
    this.#add(
      this.entry(labels, () => 0),
      amount,
    );
  }
  /** The series for these labels, created now (exported from here on, as after a first inc of 0). */
  bind(labels?: Labels): BoundCounter {
    const e = this.entry(labels, () => 0);
    return { inc: (amount = 1) => this.#add(e, amount) };
  }
  #add(e: { value: number }, amount: number): void {
    if (!(amount >= 0)) throw new Error(`counter ${this.name} can only go up (got ${amount})`);
    e.value += amount;
  }
  get(labels?: Labels): number {
    return this.series.get(keyOf(this.labelNames, labels).join("\u0000"))?.value ?? 0;
  }
  render(): string {
    let out = header(this.name, this.help, "counter");
    // An unlabelled counter is exported as 0 before its first increment, so rate() has a starting point.
    if (this.labelNames.length === 0 && this.series.size === 0) out += `${this.name} 0\n`;
    for (const { values, value } of this.series.values())
      out += `${this.name}${labelText(this.labelNames, values)} ${formatValue(value)}\n`;
    return out;
  }
}

export class Gauge extends Series<number> {
  set(labels: Labels | undefined, value: number): void {
    this.entry(labels, () => 0).value = value;
  }
  inc(labels?: Labels, amount = 1): void {
    this.entry(labels, () => 0).value += amount;
  }
  dec(labels?: Labels, amount = 1): void {
    this.entry(labels, () => 0).value -= amount;
  }
  get(labels?: Labels): number {
    return this.series.get(keyOf(this.labelNames, labels).join("\u0000"))?.value ?? 0;
  }
  render(): string {
    let out = header(this.name, this.help, "gauge");
    if (this.labelNames.length === 0 && this.series.size === 0) out += `${this.name} 0\n`;
    for (const { values, value } of this.series.values())
      out += `${this.name}${labelText(this.labelNames, values)} ${formatValue(value)}\n`;
    return out;
  }
}

interface HistogramValue {
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram extends Series<HistogramValue> {
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    private readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
  }
  observe(labels: Labels | undefined, value: number): void {
    this.#add(this.entry(labels, this.#empty).value, value);
  }
  /** The series for these labels, created now (exported from here on with zero counts). */
  bind(labels?: Labels): BoundHistogram {
    const e = this.entry(labels, this.#empty);
    return { observe: (value) => this.#add(e.value, value) };
  }
  readonly #empty = (): HistogramValue => ({ counts: this.buckets.map(() => 0), sum: 0, count: 0 });
  #add(h: HistogramValue, value: number): void {
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) h.counts[i]!++;
    h.sum += value;
    h.count++;
  }
  count(labels?: Labels): number {
    return this.series.get(keyOf(this.labelNames, labels).join("\u0000"))?.value.count ?? 0;
  }
  render(): string {
    let out = header(this.name, this.help, "histogram");
    for (const { values, value } of this.series.values()) {
      this.buckets.forEach((le, i) => {
        out += `${this.name}_bucket${labelText(this.labelNames, values, `le="${formatValue(le)}"`)} ${value.counts[i]}\n`;
      });
      out += `${this.name}_bucket${labelText(this.labelNames, values, 'le="+Inf"')} ${value.count}\n`;
      out += `${this.name}_sum${labelText(this.labelNames, values)} ${formatValue(value.sum)}\n`;
      out += `${this.name}_count${labelText(this.labelNames, values)} ${value.count}\n`;
    }
    return out;
  }
}

/** A set of metrics rendered together; `beforeRender` hooks refresh gauges sampled at scrape time. */
export class Registry {
  readonly #metrics = new Map<string, Metric>();
  readonly #beforeRender: (() => void)[] = [];
  add<M extends Metric>(metric: M): M {
    if (this.#metrics.has(metric.name)) throw new Error(`metric ${metric.name} registered twice`);
    this.#metrics.set(metric.name, metric);
    return metric;
  }
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.add(new Counter(name, help, labelNames));
  }
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.add(new Gauge(name, help, labelNames));
  }
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[],
    buckets: readonly number[],
  ): Histogram {
    return this.add(new Histogram(name, help, labelNames, buckets));
  }
  beforeRender(hook: () => void): void {
    this.#beforeRender.push(hook);
  }
  render(): string {
    for (const hook of this.#beforeRender) hook();
    return [...this.#metrics.values()].map((m) => m.render()).join("");
  }
}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Seconds; from a cache hit (sub-millisecond) to a multi-GiB NAR streamed over a slow link. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** The server's instruments, created once per server and reached through `ctx.metrics`. */
export function createServerMetrics(build: { version: string; database: string; storage: string }) {
  const registry = new Registry();
  const m = {
    registry,
    httpRequests: registry.counter(
      "nixstash_http_requests_total",
      "HTTP requests answered, by method, route pattern and status code.",
      ["method", "route", "status"],
    ),
    httpDuration: registry.histogram(
      "nixstash_http_request_duration_seconds",
      "Time from the request's arrival until its response was fully sent, by method, route pattern and status code.",
      ["method", "route", "status"],
      DURATION_BUCKETS,
    ),
    httpInFlight: registry.gauge("nixstash_http_requests_in_flight", "HTTP requests being handled now."),
    fastLaneHandoffs: registry.counter(
      "nixstash_fast_lane_handoffs_total",
      "Connections the fast lane (narinfo and nix-cache-info reads) handed to the full HTTP server, by reason.",
      ["reason"],
    ),
    narServedBytes: registry.counter(
      "nixstash_nar_served_bytes_total",
      "NAR bytes sent to clients by this server (redirected downloads are counted in nixstash_nar_redirects_total).",
      ["cache"],
    ),
    narRedirects: registry.counter(
      "nixstash_nar_redirects_total",
      "NAR downloads answered with a redirect to a presigned storage URL.",
      ["cache"],
    ),
    responseBytes: registry.counter(
      "nixstash_http_response_body_bytes_total",
      "Response body bytes sent, by route pattern.",
      ["route"],
    ),
    narinfoRequests: registry.counter(
      "nixstash_narinfo_requests_total",
      "narinfo lookups by cache and result (hit: served, miss: not in the cache).",
      ["cache", "result"],
    ),
    ingestReceivedBytes: registry.counter(
      "nixstash_ingest_received_bytes_total",
      "NAR upload bytes received (as sent, compressed or not), accepted or not.",
    ),
    ingestStoredBytes: registry.counter(
      "nixstash_ingest_stored_bytes_total",
      "Bytes of verified NAR uploads written to storage.",
    ),
    ingestPaths: registry.counter(
      "nixstash_ingest_paths_total",
      "Store paths committed by pushes, by result (stored, deduplicated, already-present).",
      ["result"],
    ),
    ingestFailures: registry.counter(
      "nixstash_ingest_failures_total",
      "Refused or failed uploads (native paths, paths of a batch, nix copy NARs and narinfos), by API and reason (error code).",
      ["api", "reason"],
    ),
    uploadsInFlight: registry.gauge(
      "nixstash_uploads_in_flight",
      "Uploads (NAR bodies and narinfos) being received now, by API.",
      ["api"],
    ),
    gcRuns: registry.counter(
      "nixstash_gc_runs_total",
      "Garbage collections run by this server, by result (ok, failed) and mode (dry, real).",
      ["result", "mode"],
    ),
    gcFreedBytes: registry.counter(
      "nixstash_gc_freed_bytes_total",
      "Storage bytes freed by garbage collection on this server.",
    ),
    gcDeletedPaths: registry.counter(
      "nixstash_gc_deleted_paths_total",
      "Store paths removed by garbage collection on this server.",
    ),
    gcLastRun: registry.gauge(
      "nixstash_gc_last_run_timestamp_seconds",
      "When this server last finished a garbage collection (Unix time).",
    ),
  };

  registry
    .gauge("nixstash_build_info", "Constant 1, labelled with the version and the backends in use.", [
      "version",
      "database",
      "storage",
    ])
    .set(build, 1);

  // Process health, sampled at scrape time.
  const startTime = registry.gauge("process_start_time_seconds", "Start time of the process (Unix time).");
  startTime.set(undefined, Math.round((Date.now() - process.uptime() * 1000) / 1000));
  const rss = registry.gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
  const heap = registry.gauge("nodejs_heap_used_bytes", "V8 heap in use, bytes.");
  const external = registry.gauge(
    "nodejs_external_memory_bytes",
    "Memory held outside the V8 heap (buffers), bytes.",
  );
  const lag = registry.gauge(
    "nodejs_eventloop_delay_p99_seconds",
    "99th percentile of the event loop delay since the previous scrape.",
  );
  const delay = monitorEventLoopDelay({ resolution: 20 });
  delay.enable();
  registry.beforeRender(() => {
    const memory = process.memoryUsage();
    rss.set(undefined, memory.rss);
    heap.set(undefined, memory.heapUsed);
    external.set(undefined, memory.external);
    lag.set(undefined, delay.count > 0 ? delay.percentile(99) / 1e9 : 0);
    delay.reset();
  });
  return {
    ...m,
    /** Stops sampling the event loop (the server is closing). */
    stop: () => delay.disable(),
  };
}

export type ServerMetrics = ReturnType<typeof createServerMetrics>;

/**
 * The S3 disk cache's state (storage/disk-cache.ts), sampled at scrape time: `sample` returns the bytes and
 * number of copies held, and the copies made and failed since start.
 */
export function watchDiskCache(
  metrics: ServerMetrics,
  sample: () => { bytes: number; copies: number; made: number; failed: number },
): void {
  const { registry } = metrics;
  const bytes = registry.gauge("nixstash_s3_disk_cache_bytes", "Bytes of NAR copies on this server's disk.");
  const copies = registry.gauge("nixstash_s3_disk_cache_copies", "NAR copies on this server's disk.");
  const made = registry.counter(
    "nixstash_s3_disk_cache_copies_made_total",
    "Objects copied from the bucket to this server's disk.",
  );
  const failed = registry.counter(
    "nixstash_s3_disk_cache_copy_failures_total",
    "Copies from the bucket to this server's disk that failed.",
  );
  let seen = { made: 0, failed: 0 };
  registry.beforeRender(() => {
    const now = sample();
    bytes.set(undefined, now.bytes);
    copies.set(undefined, now.copies);
    made.inc(undefined, now.made - seen.made);
    failed.inc(undefined, now.failed - seen.failed);
    seen = now;
  });
}

/** What a garbage collection reports to the metrics (dry runs count as runs and free nothing). */
export interface GcRunFacts {
  freedBytes: number;
  deletedPaths?: number | undefined;
  dryRun?: boolean | undefined;
  failed?: boolean | undefined;
}

/**
 * For the garbage collector: call once per finished run, e.g. `recordGcRun(ctx, { freedBytes, deletedPaths })`.
 * A server without metrics (tests building bare contexts) ignores it.
 */
export function recordGcRun(
  ctx: { metrics?: ServerMetrics | undefined; clock: () => number },
  run: GcRunFacts,
): void {
  const m = ctx.metrics;
  if (!m) return;
  m.gcRuns.inc({ result: run.failed ? "failed" : "ok", mode: run.dryRun ? "dry" : "real" });
  if (!run.dryRun && !run.failed) {
    m.gcFreedBytes.inc(undefined, Math.max(0, run.freedBytes));
    m.gcDeletedPaths.inc(undefined, Math.max(0, run.deletedPaths ?? 0));
  }
  m.gcLastRun.set(undefined, ctx.clock() / 1000);
}
