// /healthz, /readyz and /metrics, request ids and access logs, in-process (app.request) on both stacks:
// SQLite + local directory, and PostgreSQL + Ceph RGW. The metrics are read back from the Prometheus text
// the server exposes, after real pushes, downloads and refusals; readiness is checked against a database
// that was closed, storage that cannot be reached, and a server that is draining; the access log is
// searched for the tokens the requests carried.
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { createApp } from "../../server/app.ts";
import { createLifecycle } from "../../server/lifecycle.ts";
import { createServerMetrics, recordGcRun } from "../../server/metrics.ts";
import { createS3Storage } from "../../server/storage/s3.ts";
import { bootstrap } from "../../server/verbs/bootstrap.ts";
import { type Harness, makeHarness } from "../support/harness.ts";
import { fakeStorePath, hashOf, infoFor, narOf, type PathInfo } from "../support/nar.ts";

/** Parses the exposition text into "name{labels}" → value (HELP/TYPE lines checked for every family). */
function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  const typed = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line);
    if (type) {
      typed.add(type[1]!);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(sample, `not a valid sample line: ${line}`);
    const family = sample[1]!.replace(/_(bucket|sum|count)$/, "");
    assert.ok(typed.has(sample[1]!) || typed.has(family), `sample before its TYPE line: ${line}`);
    values.set(`${sample[1]}${sample[2] ?? ""}`, Number(sample[3]));
  }
  return values;
}

for (const stack of [
  { db: "sqlite", storage: "local" },
  { db: "postgres", storage: "s3" },
] as const) {
  describe(`health, readiness, metrics and request logs (${stack.db} + ${stack.storage})`, () => {
    let h: Harness | undefined;
    let pushToken = "";
    let admin = "";

    before(async () => {
      h = await makeHarness(stack);
      if (!h) return;
      admin = (await bootstrap({ ctx: h.ctx, input: { defaultCache: "main", dataDir: h.dir } })).adminToken!;
      const res = await h.app.request("/api/v1/tokens", {
        method: "POST",
        headers: { authorization: `Bearer ${admin}` },
        body: JSON.stringify({ name: "pusher", caches: ["main"], permissions: ["pull", "push"] }),
      });
      pushToken = ((await res.json()) as { token: string }).token;
    });
    after(async () => h?.cleanup());

    const push = (info: PathInfo, body: Buffer) =>
      h!.app.request(`/api/v1/caches/main/paths/${hashOf(info.storePath)}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${pushToken}`, "x-nixstash-path-info": JSON.stringify(info) },
        body,
      });
    const metrics = async () => {
      const res = await h!.app.request("/metrics");
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      return parseMetrics(await res.text());
    };

    it("answers /healthz and /readyz", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const health = await h.app.request("/healthz");
      assert.equal(health.status, 200);
      assert.equal(await health.text(), "ok\n");
      const ready = await h.app.request("/readyz");
      assert.equal(ready.status, 200);
      const body = (await ready.json()) as { ready: boolean; checks: Record<string, { ok: boolean }> };
      assert.equal(body.ready, true);
      assert.equal(body.checks.database!.ok, true);
      assert.equal(body.checks.storage!.ok, true);
    });

    it("is not ready while draining, nor when storage or the database cannot be reached", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const lifecycle = createLifecycle();
      lifecycle.startDraining();
      const draining = await createApp(h.ctx, { lifecycle }).request("/readyz");
      assert.equal(draining.status, 503);
      assert.equal(((await draining.json()) as { draining: boolean }).draining, true);
      assert.equal(draining.headers.get("connection"), "close");

      // Storage on a port nothing listens on (S3 client: no connection is made until the check).
      const unreachable = await createS3Storage({
        endPoint: "http://127.0.0.1:9",
        accessKey: "x",
        secretKey: "y",
        region: "us-east-1",
        bucket: "nowhere",
        pathStyle: true,
        createBucket: false,
      });
      const noStorage = await createApp({ ...h.ctx, storage: unreachable }).request("/readyz");
      assert.equal(noStorage.status, 503);
      const s = (await noStorage.json()) as { checks: { storage: { ok: boolean; error: string } } };
      assert.equal(s.checks.storage.ok, false);
      assert.ok(s.checks.storage.error.length > 0);

      const closedDb = await makeHarness(stack);
      assert.ok(closedDb);
      await closedDb.ctx.database.close();
      const noDb = await closedDb.app.request("/readyz");
      assert.equal(noDb.status, 503);
      assert.equal(
        ((await noDb.json()) as { checks: { database: { ok: boolean } } }).checks.database.ok,
        false,
      );
      assert.equal((await closedDb.app.request("/healthz")).status, 200, "alive all the same");
      await closedDb.cleanup().catch(() => {});
    });

    it("counts requests by route pattern, bytes in and out, narinfo hits and misses, and refusals by reason", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const dep = fakeStorePath("metrics-dep");
      const nar = narOf({ dir: { file: "x".repeat(5000), bin: { executable: "#!/bin/sh\n" } } });
      const info = infoFor(dep, nar);
      const before = await metrics();
      const ingested = before.get("nixstash_ingest_received_bytes_total") ?? 0;

      assert.equal((await push(info, nar)).status, 201);
      assert.equal((await push(info, nar)).status, 200, "already present");
      const liar = fakeStorePath("metrics-liar");
      assert.equal(
        (await push({ ...infoFor(liar, nar), narHash: infoFor(dep, narOf("other")).narHash }, nar)).status,
        422,
      );
      assert.equal(
        (await push(infoFor(fakeStorePath("metrics-orphan"), nar, [fakeStorePath("absent")]), nar)).status,
        422,
      );
      const noToken = await h.app.request(`/api/v1/caches/main/paths/${hashOf(dep)}`, {
        method: "PUT",
        body: nar,
      });
      assert.equal(noToken.status, 401);

      const narinfo = await h.app.request(`/main/${hashOf(dep)}.narinfo`);
      assert.equal(narinfo.status, 200);
      const url = /^URL: (.*)$/m.exec(await narinfo.text())![1]!;
      assert.equal((await h.app.request(`/main/${hashOf(fakeStorePath("nothing"))}.narinfo`)).status, 404);
      assert.equal((await h.app.request(`/nosuchcache/${hashOf(dep)}.narinfo`)).status, 404);
      const download = await h.app.request(`/main/${url}`);
      assert.equal(download.status, 200);
      const served = (await download.arrayBuffer()).byteLength;

      const m = await metrics();
      const delta = (key: string) => (m.get(key) ?? 0) - (before.get(key) ?? 0);
      assert.equal(delta('nixstash_narinfo_requests_total{cache="main",result="hit"}'), 1);
      assert.equal(delta('nixstash_narinfo_requests_total{cache="main",result="miss"}'), 1);
      assert.equal(m.get('nixstash_narinfo_requests_total{cache="nosuchcache",result="miss"}'), undefined);
      assert.equal(delta('nixstash_ingest_paths_total{result="stored"}'), 1);
      assert.equal(delta('nixstash_ingest_paths_total{result="already-present"}'), 1);
      assert.equal(delta('nixstash_ingest_failures_total{api="native",reason="hash_mismatch"}'), 1);
      assert.equal(delta('nixstash_ingest_failures_total{api="native",reason="missing_references"}'), 1);
      assert.equal(delta('nixstash_ingest_failures_total{api="native",reason="unauthorized"}'), 1);
      assert.ok((m.get("nixstash_ingest_received_bytes_total") ?? 0) - ingested >= nar.length * 2);
      assert.ok(delta("nixstash_ingest_stored_bytes_total") > 0);
      // In-process requests have no socket: bytes come from the declared Content-Length of the NAR.
      assert.equal(delta('nixstash_nar_served_bytes_total{cache="main"}'), served);
      assert.equal(
        delta(
          'nixstash_http_requests_total{method="PUT",route="/api/v1/caches/:name/paths/:hash",status="201"}',
        ),
        1,
      );
      assert.equal(
        delta('nixstash_http_requests_total{method="GET",route="/:cache/<hash>.narinfo",status="200"}'),
        1,
      );
      assert.equal(
        delta('nixstash_http_requests_total{method="GET",route="/:cache/nar/:file",status="200"}'),
        1,
      );
      assert.ok(
        delta(
          'nixstash_http_request_duration_seconds_count{method="GET",route="/:cache/nar/:file",status="200"}',
        ) === 1,
      );
      assert.equal(m.get('nixstash_uploads_in_flight{api="native"}'), 0, "all uploads done");
      assert.equal(m.get("nixstash_http_requests_in_flight"), 1, "only the scrape itself");
      const text = await (await h.app.request("/metrics")).text();
      assert.ok(!text.includes(hashOf(dep)), "no raw paths in labels");
      assert.match(
        text,
        /nixstash_build_info\{version="test",database="(sqlite|postgres)",storage="(local|s3)"\} 1/,
      );
    });

    it("exposes garbage collection runs reported through recordGcRun", async (t) => {
      if (!h) return t.skip("backend unavailable");
      recordGcRun(h.ctx, { freedBytes: 4096, deletedPaths: 3 });
      recordGcRun(h.ctx, { freedBytes: 999, dryRun: true });
      const m = await metrics();
      assert.equal(m.get('nixstash_gc_runs_total{result="ok",mode="real"}'), 1);
      assert.equal(m.get('nixstash_gc_runs_total{result="ok",mode="dry"}'), 1);
      assert.equal(m.get("nixstash_gc_freed_bytes_total"), 4096);
      assert.equal(m.get("nixstash_gc_deleted_paths_total"), 3);
      assert.ok((m.get("nixstash_gc_last_run_timestamp_seconds") ?? 0) > 1_600_000_000);
    });

    it("puts a request id on every log line and on error responses, and never logs a token", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const lines: Record<string, unknown>[] = [];
      let raw = "";
      const sink = new Writable({
        write(chunk, _encoding, done) {
          raw += chunk.toString();
          for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l));
          done();
        },
      });
      const log = pino({ level: "debug" }, sink);
      const ctx = {
        ...h.ctx,
        log,
        metrics: createServerMetrics({ version: "t", database: "d", storage: "s" }),
      };
      const app = createApp(ctx);
      const basic = `Basic ${Buffer.from(`nix:${pushToken}`).toString("base64")}`;

      const given = await app.request("/main/nix-cache-info", {
        headers: { "x-request-id": "lb-1234", authorization: basic },
      });
      assert.equal(given.headers.get("x-request-id"), "lb-1234");
      const fresh = await app.request("/main/nix-cache-info", {
        headers: { "x-request-id": "not an id: <script>" },
      });
      assert.match(fresh.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);

      // An API error: the id in the body, the header, and on the error's log line (debug).
      const refused = await app.request("/api/v1/tokens", {
        method: "POST",
        headers: { authorization: `Bearer ${pushToken}`, "x-request-id": "req-err-1" },
        body: JSON.stringify({ name: "x", caches: ["*"], permissions: ["admin"] }),
      });
      assert.equal(refused.status, 403);
      assert.equal(((await refused.json()) as { requestId: string }).requestId, "req-err-1");
      const unknown = await app.request("/api/v1/caches/main", {
        headers: { authorization: `Bearer nxs_${"A".repeat(43)}` },
      });
      assert.equal(unknown.status, 401);
      assert.match(((await unknown.json()) as { requestId: string }).requestId, /^[0-9a-f-]{36}$/);

      // A verb's own log line ("cache created") gets the id: handlers pass verbs the request's context, whose
      // logger is bound to it.
      const created = await app.request("/api/v1/caches", {
        method: "POST",
        headers: { authorization: `Bearer ${admin}`, "x-request-id": "req-verb-1" },
        body: JSON.stringify({ name: `logged-${stack.db}` }),
      });
      assert.equal(created.status, 201);

      await new Promise((resolve) => setImmediate(resolve));
      const access = lines.filter((l) => l.msg === "request");
      assert.equal(access.length, 5);
      assert.deepEqual(
        access.map((l) => [l.reqId, l.route, l.status]),
        [
          ["lb-1234", "/:cache/nix-cache-info", 200],
          [fresh.headers.get("x-request-id"), "/:cache/nix-cache-info", 200],
          ["req-err-1", "/api/v1/tokens", 403],
          [unknown.headers.get("x-request-id"), "/api/v1/caches/:name", 401],
          ["req-verb-1", "/api/v1/caches", 201],
        ],
      );
      assert.ok(
        lines.find((l) => l.msg === "cache created" && l.reqId === "req-verb-1"),
        `the verb's line carries the request id: ${raw}`,
      );
      assert.ok(
        lines.find((l) => l.msg !== "request" && l.reqId === "req-err-1"),
        "so does the error's",
      );
      for (const secret of [pushToken, admin, basic.slice("Basic ".length), "A".repeat(43)]) {
        assert.ok(!raw.includes(secret), "a token or credential reached the log");
      }
      assert.ok(!/authorization/i.test(raw), "no Authorization header in the log");
    });
  });
}
