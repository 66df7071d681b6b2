// The administration API in-process on both stacks: caches (settings, soft delete, restore, purge),
// tokens (list without secrets, immediate revocation, tenant scopes), signing keys (generate, import,
// rotate, retire; never a private key), paths (list, search, show, delete with referrers, pins), stats
// (last access and counters recorded in batches), and the OpenAPI document.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseNarInfo, parsePublicKey, verifyNarInfo } from "../../nix/index.ts";
import { createAccessLog } from "../../server/verbs/access-log.ts";
import { testTmp } from "../support/services.ts";
import { type AdminHarness, adminHarness, HARNESS_STACKS, hashOf } from "./support.ts";

for (const stack of HARNESS_STACKS) {
  describe(`admin API (${stack.db} + ${stack.storage})`, () => {
    let a: AdminHarness | undefined;
    before(async () => {
      a = await adminHarness(stack);
    });
    after(async () => a?.h.cleanup());

    it("creates, lists, updates, soft-deletes, restores and purges caches", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const created = await a.json("/api/v1/caches", {
        method: "POST",
        json: {
          name: "team",
          public: false,
          retentionSeconds: 86400,
          quotaBytes: 1 << 30,
          description: "team cache",
        },
        status: 201,
      });
      assert.equal(created.retentionSeconds, 86400);
      assert.equal(created.quotaBytes, 1 << 30);
      const list = await a.json<{ caches: { name: string }[] }>("/api/v1/caches");
      assert.deepEqual(
        list.caches.map((c) => c.name),
        ["main", "team"],
      );
      // Anonymous callers see only public caches.
      const anon = await a.json<{ caches: { name: string }[] }>("/api/v1/caches", { token: "" });
      assert.deepEqual(
        anon.caches.map((c) => c.name),
        ["main"],
      );
      const updated = await a.json("/api/v1/caches/team", {
        method: "PATCH",
        json: { priority: 10, retentionSeconds: null, public: true },
      });
      assert.equal(updated.priority, 10);
      assert.equal(updated.retentionSeconds, null);
      assert.equal(updated.public, true);
      assert.equal((await a.req("/api/v1/caches/team", { method: "PATCH", json: { bogus: 1 } })).status, 400);

      const path = await a.push("team", "in-team");
      // Deleting needs the name as confirmation; then the cache stops serving at once.
      assert.equal((await a.req("/api/v1/caches/team", { method: "DELETE" })).status, 400);
      await a.json("/api/v1/caches/team?confirm=team", { method: "DELETE" });
      assert.equal((await a.req(`/team/${hashOf(path)}.narinfo`, { token: "" })).status, 404);
      assert.equal((await a.req("/team/nix-cache-info", { token: "" })).status, 404);
      // Its name stays taken.
      assert.equal((await a.req("/api/v1/caches", { method: "POST", json: { name: "team" } })).status, 409);
      const withDeleted = await a.json<{ caches: { name: string; deletedAt: number | null }[] }>(
        "/api/v1/caches?deleted=true",
      );
      assert.ok(withDeleted.caches.find((c) => c.name === "team")?.deletedAt);
      await a.json("/api/v1/caches/team/restore", { method: "POST" });
      assert.equal((await a.req(`/team/${hashOf(path)}.narinfo`, { token: "" })).status, 200);

      // Purge: only of a soft-deleted cache, confirmed.
      assert.equal(
        (await a.req("/api/v1/caches/team?purge=true&confirm=team", { method: "DELETE" })).status,
        409,
      );
      await a.json("/api/v1/caches/team?confirm=team", { method: "DELETE" });
      const purged = await a.json("/api/v1/caches/team?purge=true&confirm=team", { method: "DELETE" });
      assert.equal(purged.purgedPaths, 1);
      assert.equal((await a.req("/api/v1/caches/team/restore", { method: "POST" })).status, 404);
      // The name is free again.
      await a.json("/api/v1/caches", { method: "POST", json: { name: "team" }, status: 201 });
    });

    it("lists tokens without secrets and revokes them immediately", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const pusher = await a.token(["pull", "push"]);
      assert.equal((await a.req("/api/v1/whoami", { token: pusher.token })).status, 200);
      const list = await a.json<{ tokens: Record<string, unknown>[] }>("/api/v1/tokens");
      const row = list.tokens.find((x) => x.id === pusher.id)!;
      assert.equal(row.prefix, pusher.token.slice(0, 10));
      assert.deepEqual(row.permissions, ["pull", "push"]);
      assert.equal(row.state, "active");
      assert.ok(!JSON.stringify(list).includes(pusher.token), "no secret in the list");
      assert.ok(!JSON.stringify(list).includes("secretHash"));
      await a.json(`/api/v1/tokens/${pusher.id}`, { method: "DELETE" });
      const after = await a.req("/api/v1/whoami", { token: pusher.token });
      assert.equal(after.status, 401);
      assert.match(await after.text(), /revoked/);
      assert.equal(
        (await a.req(`/main/nix-cache-info`, { token: pusher.token })).status,
        200,
        "public reads still work",
      );
      const all = await a.json<{ tokens: { id: number; state: string }[] }>("/api/v1/tokens?all=true");
      assert.equal(all.tokens.find((x) => x.id === pusher.id)?.state, "revoked");
      // The last server administrator cannot be revoked.
      const adminRow = all.tokens.find((x) => x.id === 1)!;
      assert.equal((await a.req(`/api/v1/tokens/${adminRow.id}`, { method: "DELETE" })).status, 409);
    });

    it("lets a tenant admin manage its own caches and tokens only", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const tenant = await a.token(["admin"], ["acme-*"]);
      const as = { token: tenant.token };
      await a.json("/api/v1/caches", { ...as, method: "POST", json: { name: "acme-ci" }, status: 201 });
      assert.equal(
        (await a.req("/api/v1/caches", { ...as, method: "POST", json: { name: "other-ci" } })).status,
        403,
      );
      const own = await a.json<{ token: string; id: number }>("/api/v1/tokens", {
        ...as,
        method: "POST",
        json: { name: "acme-push", caches: ["acme-ci"], permissions: ["push", "pull"] },
        status: 201,
      });
      assert.equal(
        (
          await a.req("/api/v1/tokens", {
            ...as,
            method: "POST",
            json: { name: "escalate", caches: ["*"], permissions: ["admin"] },
          })
        ).status,
        403,
      );
      const seen = await a.json<{ tokens: { id: number }[] }>("/api/v1/tokens", as);
      assert.deepEqual(seen.tokens.map((x) => x.id).sort(), [tenant.id, own.id].sort());
      // Tokens outside its scope look absent.
      assert.equal((await a.req("/api/v1/tokens/1", { ...as, method: "DELETE" })).status, 404);
      assert.equal((await a.req("/api/v1/caches/main/keys", as)).status, 403);
      await a.json("/api/v1/caches/acme-ci/keys", as);
    });

    it("generates, imports, rotates and retires keys, never returning a private key", async (t) => {
      if (!a) return t.skip("backend unavailable");
      await a.json("/api/v1/caches", { method: "POST", json: { name: "keys" }, status: 201 });
      const p1 = await a.push("keys", "k-dep");
      const p2 = await a.push("keys", "k-top", [p1]);
      const sigsOf = async (p: string) => {
        const text = await (await a!.req(`/keys/${hashOf(p)}.narinfo`)).text();
        return parseNarInfo(text).sigs.map((s) => s.slice(0, s.indexOf(":")));
      };
      assert.deepEqual(await sigsOf(p2), ["keys-1"]);
      const rotated = await a.json<{ key: { id: number; name: string; publicKey: string } }>(
        "/api/v1/caches/keys/keys/rotate",
        { method: "POST", json: {}, status: 201 },
      );
      assert.equal(rotated.key.name, "keys-2");
      // The background pass adds the new Sig beside the old one.
      for (let i = 0; i < 50 && (await sigsOf(p1)).length < 2; i++)
        await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual((await sigsOf(p1)).sort(), ["keys-1", "keys-2"]);
      const during = await a.push("keys", "k-during", [p1]);
      assert.deepEqual((await sigsOf(during)).sort(), ["keys-1", "keys-2"], "new pushes: both keys sign");

      // Import a key made by the real Nix.
      const dir = mkdtempSync(join(testTmp(), "key-"));
      execFileSync("nix-store", [
        "--generate-binary-cache-key",
        "imported-1",
        join(dir, "sk"),
        join(dir, "pk"),
      ]);
      const secret = readFileSync(join(dir, "sk"), "utf8");
      const imported = await a.json<{ key: { id: number; publicKey: string } }>("/api/v1/caches/keys/keys", {
        method: "POST",
        json: { secretKey: secret },
        status: 201,
      });
      assert.equal(imported.key.publicKey, readFileSync(join(dir, "pk"), "utf8").trim());
      assert.equal(
        (await a.req("/api/v1/caches/keys/keys", { method: "POST", json: { secretKey: secret } })).status,
        409,
      );
      assert.equal(
        (await a.req("/api/v1/caches/keys/keys", { method: "POST", json: { secretKey: "x:y" } })).status,
        400,
      );

      const listing = await a.json<{ keys: { id: number; name: string; state: string }[] }>(
        "/api/v1/caches/keys/keys",
      );
      const text = JSON.stringify(listing);
      assert.ok(!text.includes(secret.split(":")[1]!), "the imported secret never comes back");
      assert.ok(!/secret/i.test(text));
      const old = listing.keys.find((k) => k.name === "keys-1")!;
      const retired = await a.json(`/api/v1/caches/keys/keys/${old.id}/retire`, { method: "POST" });
      assert.ok((retired.stripped as number) >= 3);
      for (const p of [p1, p2, during]) assert.deepEqual((await sigsOf(p)).sort(), ["imported-1", "keys-2"]);
      // Every remaining Sig verifies under the remaining public keys.
      const keys = (
        await a.json<{ keys: { publicKey: string; state: string }[] }>("/api/v1/caches/keys/keys")
      ).keys
        .filter((k) => k.state === "active")
        .map((k) => parsePublicKey(k.publicKey));
      const info = parseNarInfo(await (await a.req(`/keys/${hashOf(p2)}.narinfo`)).text());
      assert.equal(verifyNarInfo(info, keys).length, 2);
      const after = await a.push("keys", "k-after", [p1]);
      assert.deepEqual((await sigsOf(after)).sort(), ["imported-1", "keys-2"]);
      // The last active key cannot be retired.
      const remaining = (
        await a.json<{ keys: { id: number; state: string }[] }>("/api/v1/caches/keys/keys")
      ).keys.filter((k) => k.state === "active");
      await a.json(`/api/v1/caches/keys/keys/${remaining[0]!.id}/retire`, { method: "POST" });
      assert.equal(
        (await a.req(`/api/v1/caches/keys/keys/${remaining[1]!.id}/retire`, { method: "POST" })).status,
        409,
      );
    });

    it("lists, searches, shows, pins and deletes paths without breaking closures", async (t) => {
      if (!a) return t.skip("backend unavailable");
      await a.json("/api/v1/caches", { method: "POST", json: { name: "paths" }, status: 201 });
      const dep = await a.push("paths", "lib-dep");
      const mid = await a.push("paths", "lib-mid", [dep]);
      const top = await a.push("paths", "app-top", [mid, dep]);
      const other = await a.push("paths", "app-other", [dep]);
      const page1 = await a.json<{ paths: { storePath: string }[]; next: string | null }>(
        "/api/v1/caches/paths/paths?limit=3",
      );
      assert.deepEqual(
        page1.paths.map((p) => p.storePath),
        [other, top, mid],
      );
      const page2 = await a.json<{ paths: { storePath: string }[]; next: string | null }>(
        `/api/v1/caches/paths/paths?limit=3&cursor=${page1.next}`,
      );
      assert.deepEqual(
        page2.paths.map((p) => p.storePath),
        [dep],
      );
      assert.equal(page2.next, null);
      const found = await a.json<{ paths: { storePath: string }[] }>("/api/v1/caches/paths/paths?q=LIB-");
      assert.deepEqual(found.paths.map((p) => p.storePath).sort(), [dep, mid].sort());

      const shown = await a.json<Record<string, unknown> & { narinfo: Record<string, unknown> }>(
        `/api/v1/caches/paths/paths/${hashOf(top)}`,
      );
      assert.equal(shown.storePath, top);
      assert.deepEqual(shown.narinfo.references, [mid, dep].map((p) => p.slice(11)).sort());
      assert.equal((shown.pushedBy as { name: string }).name, "admin");
      assert.equal(shown.lastAccessedAt, null);

      // dep is referenced: refused, naming the referrers.
      const refused = await a.req(`/api/v1/caches/paths/paths/${hashOf(dep)}`, { method: "DELETE" });
      assert.equal(refused.status, 409);
      assert.equal(((await refused.json()) as { referrers: string[] }).referrers.length, 3);
      // A pin on `other` protects dep even when asking for referrers.
      await a.json(`/api/v1/caches/paths/paths/${hashOf(other)}/pin`, { method: "PUT" });
      assert.equal(
        (await a.req(`/api/v1/caches/paths/paths/${hashOf(dep)}?referrers=true`, { method: "DELETE" }))
          .status,
        409,
      );
      // Deleting top alone is fine (nothing refers to it); mid and dep stay.
      const gone = await a.json<{ deleted: string[] }>(`/api/v1/caches/paths/paths/${hashOf(top)}`, {
        method: "DELETE",
      });
      assert.deepEqual(gone.deleted, [top]);
      await a.json(`/api/v1/caches/paths/paths/${hashOf(other)}/pin`, { method: "DELETE" });
      const cascade = await a.json<{ deleted: string[] }>(
        `/api/v1/caches/paths/paths/${hashOf(dep)}?referrers=true`,
        { method: "DELETE" },
      );
      assert.deepEqual([...cascade.deleted].sort(), [dep, mid, other].sort());
      assert.equal(cascade.deleted.at(-1), dep, "referrers go first");
      assert.equal((await a.req(`/paths/${hashOf(dep)}.narinfo`)).status, 404);
    });

    it("records last access and counts hits and downloads in batches", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const access = createAccessLog({
        repo: a.h.ctx.repo,
        clock: () => a!.h.ctx.clock(),
        onError: () => {},
        flushMs: 3_600_000,
      });
      a.h.ctx.access = access;
      try {
        await a.json("/api/v1/caches", { method: "POST", json: { name: "stats" }, status: 201 });
        const p = await a.push("stats", "counted", [], 5000);
        const q = await a.push("stats", "dedup-twin", [], 10);
        const narinfo = await (await a.req(`/stats/${hashOf(p)}.narinfo`, { token: "" })).text();
        assert.equal((await a.req(`/stats/${"0".repeat(32)}.narinfo`, { token: "" })).status, 404);
        const url = /^URL: (.*)$/m.exec(narinfo)![1]!;
        const nar = await a.req(`/stats/${url}`, { token: "" });
        const bytes = (await nar.arrayBuffer()).byteLength;
        // Nothing written yet: the access log batches.
        const before = await a.json<{ lastAccessedAt: number | null }>(
          `/api/v1/caches/stats/paths/${hashOf(p)}`,
        );
        assert.equal(before.lastAccessedAt, null);
        await access.flush();
        const shown = await a.json<{ lastAccessedAt: number | null }>(
          `/api/v1/caches/stats/paths/${hashOf(p)}`,
        );
        assert.ok(shown.lastAccessedAt && Math.abs(shown.lastAccessedAt - Date.now()) < 60_000);
        const untouched = await a.json<{ lastAccessedAt: number | null }>(
          `/api/v1/caches/stats/paths/${hashOf(q)}`,
        );
        assert.equal(untouched.lastAccessedAt, null);
        const stats = await a.json<Record<string, unknown> & { total: Record<string, number> }>(
          "/api/v1/caches/stats/stats?days=7",
        );
        assert.equal(stats.paths, 2);
        assert.ok((stats.narBytes as number) > 5000);
        assert.equal(stats.storedBytes, stats.fileBytes);
        assert.equal(stats.dedupSavings, 0);
        assert.equal(stats.total.narinfoHits, 1);
        assert.equal(stats.total.narinfoMisses, 1);
        assert.equal(stats.total.narDownloads, 1);
        assert.equal(stats.total.narBytes, bytes);
        assert.equal((stats.daily as unknown[]).length, 1);
      } finally {
        await access.stop();
        a.h.ctx.access = undefined;
      }
    });

    it("serves an OpenAPI document", async (t) => {
      if (!a) return t.skip("backend unavailable");
      const doc = await a.json<{ openapi: string; paths: Record<string, unknown> }>("/api/v1/openapi.json", {
        token: "",
      });
      assert.equal(doc.openapi, "3.1.0");
      assert.ok(doc.paths["/caches/{name}/gc"]);
    });
  });
}
