// The permission matrix: every endpoint of the native API (as listed in the OpenAPI table, so none can be
// forgotten) under every kind of caller — none, pull, push, delete, admin (on the cache), admin on the wrong
// cache, expired, revoked, server admin — against a private cache, with the exact status each must get.
// "Allowed" requests are shaped to answer a fixed status without changing what later rows rely on.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ENDPOINTS, type Requirement } from "../../server/routes/openapi.ts";
import { fakeStorePath } from "../support/nar.ts";
import { type AdminHarness, adminHarness, HARNESS_STACKS, hashOf } from "./support.ts";

const CALLERS = [
  "none",
  "pull",
  "push",
  "delete",
  "admin",
  "wrong-cache",
  "expired",
  "revoked",
  "server-admin",
] as const;
type CallerKind = (typeof CALLERS)[number];

interface Probe {
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
  rawBody?: string;
  /** Status when the caller is allowed. */
  ok: number;
  /** Overrides of the generic rule, per caller. */
  special?: Partial<Record<CallerKind, number>>;
}

/** The status a caller gets from an endpoint with this requirement on a private cache, when refused. */
function refusal(requirement: Requirement, kind: CallerKind): number | undefined {
  if (kind === "none") return requirement === "none" ? undefined : 401;
  if (kind === "expired" || kind === "revoked") return 401;
  if (kind === "server-admin") return undefined;
  switch (requirement) {
    case "none":
    case "token":
      return undefined;
    case "server-admin":
      return 403;
    case "pull":
    case "push":
    case "delete":
    case "admin": {
      // A token that cannot read a private cache is told 401, so its contents cannot be probed.
      if (kind === "wrong-cache") return 401;
      if (kind === "admin") return undefined;
      const allowed = requirement === kind || (requirement === "pull" && kind === "pull");
      if (allowed) return undefined;
      // Only admin implies the other permissions: a push-only or delete-only token cannot read this
      // private cache, so it is told 401; a pull token that lacks the permission is told 403.
      return kind === "pull" ? 403 : 401;
    }
  }
}

for (const stack of HARNESS_STACKS) {
  describe(`permission matrix (${stack.db} + ${stack.storage})`, () => {
    let a: AdminHarness | undefined;
    const tokens: Partial<Record<CallerKind, string>> = {};
    let pathHash = "";

    before(async () => {
      a = await adminHarness(stack);
      if (!a) return;
      await a.json("/api/v1/caches", { method: "POST", json: { name: "priv", public: false }, status: 201 });
      await a.json("/api/v1/caches", { method: "POST", json: { name: "other", public: false }, status: 201 });
      pathHash = hashOf(await a.push("priv", "matrix-path"));
      for (const p of ["pull", "push", "delete", "admin"] as const)
        tokens[p] = (await a.token([p], ["priv"])).token;
      tokens["wrong-cache"] = (await a.token(["admin"], ["other"])).token;
      tokens.expired = (await a.token(["admin"], ["priv"], { expiresAt: Date.now() + 1500 })).token;
      const revoked = await a.token(["admin"], ["priv"]);
      tokens.revoked = revoked.token;
      await a.json(`/api/v1/tokens/${revoked.id}`, { method: "DELETE" });
      tokens["server-admin"] = a.admin;
      await new Promise((r) => setTimeout(r, 1600));
    });
    after(async () => a?.h.cleanup());

    const probes = (kind: CallerKind): Record<string, Probe> => ({
      "get /whoami": { path: "/whoami", ok: 200 },
      "get /caches": { path: "/caches", ok: 200 },
      "post /caches": {
        path: "/caches",
        body: { name: `m-${kind}` },
        ok: 201,
        // Creating a cache needs admin on a pattern matching its name: "priv" or "other" do not match.
        special: { admin: 403, "wrong-cache": 403, pull: 403, push: 403, delete: 403 },
      },
      "get /caches/{name}": { path: "/caches/priv", ok: 200 },
      "patch /caches/{name}": { path: "/caches/priv", body: { description: "matrix" }, ok: 200 },
      "delete /caches/{name}": { path: "/caches/priv", ok: 400 },
      "post /caches/{name}/restore": { path: "/caches/priv/restore", ok: 409 },
      "get /caches/{name}/keys": { path: "/caches/priv/keys", ok: 200 },
      "post /caches/{name}/keys": { path: "/caches/priv/keys", body: { secretKey: "bad" }, ok: 400 },
      "post /caches/{name}/keys/rotate": {
        path: "/caches/priv/keys/rotate",
        body: { secretKey: "bad" },
        ok: 400,
      },
      "post /caches/{name}/keys/{id}/retire": { path: "/caches/priv/keys/999999/retire", ok: 404 },
      "get /caches/{name}/paths": { path: "/caches/priv/paths", ok: 200 },
      "get /caches/{name}/paths/{hash}": { path: `/caches/priv/paths/${pathHash}`, ok: 200 },
      "delete /caches/{name}/paths/{hash}": {
        path: `/caches/priv/paths/${hashOf(fakeStorePath("absent"))}`,
        ok: 404,
      },
      "put /caches/{name}/paths/{hash}/pin": { path: `/caches/priv/paths/${pathHash}/pin`, ok: 200 },
      "delete /caches/{name}/paths/{hash}/pin": { path: `/caches/priv/paths/${pathHash}/pin`, ok: 200 },
      "get /caches/{name}/stats": { path: "/caches/priv/stats", ok: 200 },
      "post /caches/{name}/gc": { path: "/caches/priv/gc", body: { dryRun: true }, ok: 200 },
      "get /caches/{name}/gc/runs": { path: "/caches/priv/gc/runs", ok: 200 },
      "post /gc": { path: "/gc", body: { dryRun: true }, ok: 200 },
      "get /gc/runs": { path: "/gc/runs", ok: 200 },
      "get /tokens": {
        path: "/tokens",
        ok: 200,
        // Any admin may list (what it sees is limited to its scope).
        special: { "wrong-cache": 200, pull: 403, push: 403, delete: 403 },
      },
      "post /tokens": {
        path: "/tokens",
        body: { name: "matrix", caches: ["priv"], permissions: ["pull"] },
        ok: 201,
        special: { "wrong-cache": 403, pull: 403, push: 403, delete: 403 },
      },
      "delete /tokens/{id}": {
        path: "/tokens/999999",
        ok: 404,
        special: { "wrong-cache": 404, pull: 403, push: 403, delete: 403 },
      },
      "post /caches/{name}/missing": { path: "/caches/priv/missing", body: { paths: [] }, ok: 200 },
      "put /caches/{name}/paths/{hash}": {
        path: `/caches/priv/paths/${hashOf(fakeStorePath("x"))}`,
        ok: 400,
      },
      // Allowed callers get past the permission check to the content type's.
      "post /caches/{name}/paths": { path: "/caches/priv/paths", rawBody: "", ok: 415 },
      "put /caches/{name}/logs/{drv}": {
        path: `/caches/priv/logs/${hashOf(fakeStorePath("x"))}-matrix.drv`,
        rawBody: "a log\n",
        ok: 201,
      },
      "put /caches/{name}/realisations/{id}": {
        path: "/caches/priv/realisations/not-an-id",
        rawBody: "{}",
        ok: 400,
      },
      "get /openapi.json": {
        path: "/openapi.json",
        ok: 200,
        special: { expired: 200, revoked: 200 },
      },
    });

    it("covers every documented endpoint", (t) => {
      if (!a) return t.skip("backend unavailable");
      const documented = ENDPOINTS.map((e) => `${e.method} ${e.path}`).sort();
      assert.deepEqual(Object.keys(probes("none")).sort(), documented);
    });

    it("answers each caller with the right status on every endpoint", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const failures: string[] = [];
      let checked = 0;
      for (const kind of CALLERS) {
        const table = probes(kind);
        for (const endpoint of ENDPOINTS) {
          const key = `${endpoint.method} ${endpoint.path}`;
          const probe = table[key]!;
          const expected = probe.special?.[kind] ?? refusal(endpoint.permission, kind) ?? probe.ok;
          const headers: Record<string, string> = {};
          if (kind !== "none") headers.authorization = `Bearer ${tokens[kind]}`;
          const res = await a.h.app.request(`/api/v1${probe.path}`, {
            method: endpoint.method.toUpperCase(),
            headers,
            ...(probe.body !== undefined ? { body: JSON.stringify(probe.body) } : {}),
            ...(probe.rawBody !== undefined ? { body: probe.rawBody } : {}),
          });
          checked++;
          if (res.status !== expected)
            failures.push(`${kind} ${key}: got ${res.status}, want ${expected}: ${await res.text()}`);
        }
      }
      assert.deepEqual(failures, []);
      assert.equal(checked, CALLERS.length * ENDPOINTS.length);
    });
  });
}
