// The native push API and the substituter routes, in-process (app.request), on both stacks:
// SQLite + local directory, and PostgreSQL + Ceph RGW.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { compress as zstdCompress, decompress as zstdDecompress } from "zstd-napi";
import { parseNarInfo, parsePublicKey, parseStorePath, verifyNarInfo } from "../../nix/index.ts";
import { bootstrap } from "../../server/verbs/bootstrap.ts";
import { removeAbandonedUploads } from "../../server/verbs/cleanup.ts";
import { type BatchEntry, ingestBatch } from "../../server/verbs/ingest-batch.ts";
import { type Harness, makeHarness } from "../support/harness.ts";
import { fakeStorePath, hashOf, infoFor, narOf, type PathInfo } from "../support/nar.ts";

const testdata = join(import.meta.dirname, "../../nix/testdata/cache.nixos.org");

for (const stack of [
  { db: "sqlite", storage: "local" },
  { db: "postgres", storage: "s3" },
] as const) {
  describe(`push and serve (${stack.db} + ${stack.storage})`, () => {
    let h: Harness | undefined;
    let admin = "";
    let pushToken = "";
    let pullToken = "";

    const req = (path: string, init: RequestInit & { token?: string; basic?: string } = {}) => {
      const headers = new Headers(init.headers);
      if (init.token) headers.set("authorization", `Bearer ${init.token}`);
      if (init.basic)
        headers.set("authorization", `Basic ${Buffer.from(`nix:${init.basic}`).toString("base64")}`);
      return h!.app.request(path, { ...init, headers });
    };

    const push = (
      info: PathInfo & { upstream?: unknown[] },
      body: Buffer,
      opts: { token?: string; zstd?: boolean } = {},
    ) =>
      req(`/api/v1/caches/main/paths/${hashOf(info.storePath)}`, {
        method: "PUT",
        token: opts.token ?? pushToken,
        headers: {
          "x-nixstash-path-info": JSON.stringify(info),
          "content-type": "application/x-nix-nar",
          ...(opts.zstd ? { "content-encoding": "zstd" } : {}),
        },
        body,
      });

    const storedObjects = async () => {
      const keys: string[] = [];
      for await (const o of h!.ctx.storage.list("")) keys.push(o.key);
      return keys.sort();
    };

    const expectNothingLeft = async (before: string[], info: PathInfo) => {
      assert.equal((await req(`/main/${hashOf(info.storePath)}.narinfo`)).status, 404);
      assert.deepEqual(await storedObjects(), before);
      assert.deepEqual(await h!.ctx.repo.pendingUploadsOlderThan(Date.now() + 1000), []);
    };

    before(async () => {
      h = await makeHarness(stack);
      if (!h) return;
      const first = await bootstrap({ ctx: h.ctx, input: { defaultCache: "main", dataDir: h.dir } });
      admin = first.adminToken!;
      assert.equal(readFileSync(first.adminTokenFile!, "utf8").trim(), admin);
      const mk = async (permissions: string[]) => {
        const res = await req("/api/v1/tokens", {
          method: "POST",
          token: admin,
          body: JSON.stringify({ name: permissions.join("+"), caches: ["main"], permissions }),
        });
        assert.equal(res.status, 201);
        return ((await res.json()) as { token: string }).token;
      };
      pushToken = await mk(["pull", "push"]);
      pullToken = await mk(["pull"]);
    });
    after(async () => h?.cleanup());

    const dep = fakeStorePath("dep-1.0");
    const depNar = narOf({
      dir: { lib: { dir: { "libdep.so": Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251)) } } },
    });
    const app = fakeStorePath("app-1.0");
    const appNar = narOf({
      dir: {
        bin: { dir: { app: { executable: `#!/bin/sh\necho ${dep}\n` } } },
        share: { dir: { empty: "", link: { symlink: "../bin/app" }, nothing: { dir: {} } } },
      },
    });

    it("serves nix-cache-info and the cache description anonymously", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const info = await req("/main/nix-cache-info");
      assert.equal(info.status, 200);
      assert.equal(info.headers.get("content-type"), "text/x-nix-cache-info");
      assert.equal(await info.text(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
      const api = await req("/api/v1/caches/main");
      const body = (await api.json()) as Record<string, unknown>;
      assert.equal(body.name, "main");
      assert.match(String(body.publicKey), /^main-1:[A-Za-z0-9+/]{43}=$/);
      assert.equal(body.public, true);
      assert.equal(body.priority, 40);
      assert.equal(body.storeDir, "/nix/store");
    });

    it("refuses pushes without a token (401) and with a pull-only token (403)", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const info = infoFor(dep, depNar);
      const anonymous = await h.app.request(`/api/v1/caches/main/paths/${hashOf(dep)}`, {
        method: "PUT",
        headers: { "x-nixstash-path-info": JSON.stringify(info) },
        body: depNar,
      });
      assert.equal(anonymous.status, 401);
      assert.equal((await push(info, depNar, { token: pullToken })).status, 403);
      assert.equal((await push(info, depNar, { token: "nxs_not-a-real-token" })).status, 401);
      await expectNothingLeft(before, info);
    });

    it("refuses a path whose references are missing, naming them", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const info = infoFor(app, appNar, [dep, app]);
      const res = await push(info, appNar);
      assert.equal(res.status, 422);
      const body = (await res.json()) as { error: string; message: string };
      assert.equal(body.error, "missing_references");
      assert.match(body.message, new RegExp(dep.slice("/nix/store/".length)));
      await expectNothingLeft(before, info);
    });

    it("stores a plain NAR, then a zstd one referencing it, and serves signed narinfo, NAR and listing", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const depRes = await push(infoFor(dep, depNar), depNar);
      assert.equal(depRes.status, 201, await depRes.clone().text());
      assert.equal(((await depRes.json()) as { status: string }).status, "stored");
      const appInfo = {
        ...infoFor(app, appNar, [dep, app]),
        deriver: fakeStorePath("app-1.0.drv"),
        system: "x86_64-linux",
      };
      const appRes = await push(appInfo, zstdCompress(appNar), { zstd: true });
      assert.equal(appRes.status, 201, await appRes.clone().text());

      const key = ((await (await req("/api/v1/caches/main")).json()) as { publicKey: string }).publicKey;
      const res = await req(`/main/${hashOf(app)}.narinfo`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "text/x-nix-narinfo");
      const narinfo = parseNarInfo(await res.text());
      assert.equal(narinfo.storePath, app);
      assert.deepEqual(narinfo.references, [dep, app].map((p) => p.slice(11)).sort());
      assert.equal(narinfo.deriver, appInfo.deriver.slice(11));
      assert.equal(narinfo.system, "x86_64-linux");
      assert.equal(narinfo.narHash, appInfo.narHash);
      assert.equal(narinfo.narSize, appNar.length);
      assert.equal(narinfo.compression, "zstd");
      assert.equal(verifyNarInfo(narinfo, [parsePublicKey(key)]).length, 1, "signed by the cache key");
      const wrongKey = parsePublicKey("main-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=");
      assert.equal(verifyNarInfo(narinfo, [wrongKey]).length, 0);

      const head = await req(`/main/${hashOf(app)}.narinfo`, { method: "HEAD" });
      assert.equal(head.status, 200);
      assert.equal(await head.text(), "");

      const nar = await req(`/main/${narinfo.url}`);
      assert.equal(nar.status, 200);
      const file = Buffer.from(await nar.arrayBuffer());
      assert.equal(file.length, narinfo.fileSize);
      assert.deepEqual(zstdDecompress(file), appNar);
      const narHead = await req(`/main/${narinfo.url}`, { method: "HEAD" });
      assert.equal(narHead.headers.get("content-length"), String(narinfo.fileSize));
      const ranged = await req(`/main/${narinfo.url}`, { headers: { range: "bytes=4-9" } });
      assert.equal(ranged.status, 206);
      assert.equal(ranged.headers.get("content-range"), `bytes 4-9/${narinfo.fileSize}`);
      assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), file.subarray(4, 10));

      const ls = (await (await req(`/main/${hashOf(app)}.ls`)).json()) as {
        version: number;
        root: { entries: Record<string, { entries: Record<string, unknown> }> };
      };
      assert.equal(ls.version, 1);
      assert.deepEqual(ls.root.entries.share?.entries.link, { type: "symlink", target: "../bin/app" });
      const exe = ls.root.entries.bin?.entries.app as {
        type: string;
        executable: boolean;
        narOffset: number;
        size: number;
      };
      assert.equal(exe.executable, true);
      assert.equal(
        appNar.subarray(exe.narOffset, exe.narOffset + exe.size).toString(),
        `#!/bin/sh\necho ${dep}\n`,
      );
    });

    it("answers pushing the same path again without storing anything", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const res = await push(infoFor(dep, depNar), depNar);
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { status: string }).status, "already-present");
      assert.deepEqual(await storedObjects(), before);
    });

    it("stores identical NAR content once (deduplication)", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const twin = fakeStorePath("dep-1.0");
      const res = await push(infoFor(twin, depNar), depNar, { zstd: false });
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { status: string }).status, "deduplicated");
      assert.deepEqual(await storedObjects(), before);
      assert.equal((await req(`/main/${hashOf(twin)}.narinfo`)).status, 200);
    });

    it("refuses tampered uploads with a 4xx and leaves nothing behind", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const path = fakeStorePath("tampered");
      const nar = narOf({ dir: { a: "hello world\n", b: { executable: "x" } } });
      const good = infoFor(path, nar);
      const cases: [string, PathInfo, Buffer, boolean, number, RegExp][] = [
        [
          "wrong NarHash",
          { ...good, narHash: infoFor(path, depNar).narHash },
          nar,
          false,
          422,
          /NarHash mismatch/,
        ],
        [
          "NarSize too small",
          { ...good, narSize: nar.length - 8 },
          nar,
          false,
          422,
          /larger than the claimed NarSize/,
        ],
        ["NarSize too large", { ...good, narSize: nar.length + 8 }, nar, false, 422, /truncat|NarSize/i],
        [
          "corrupt NAR",
          good,
          Buffer.concat([nar.subarray(0, 40), Buffer.from("garbage!"), nar.subarray(48)]),
          false,
          422,
          /invalid NAR/,
        ],
        ["truncated body", good, nar.subarray(0, nar.length - 16), false, 422, /invalid NAR|truncat/i],
        [
          "trailing data",
          { ...good, narSize: nar.length + 8 },
          Buffer.concat([nar, Buffer.alloc(8)]),
          false,
          422,
          /invalid NAR|trailing/i,
        ],
        ["corrupt zstd", good, Buffer.from("this is not zstd at all"), true, 400, /not valid zstd/],
        ["truncated zstd", good, zstdCompress(nar).subarray(0, 20), true, 400, /zstd|invalid NAR|truncat/i],
      ];
      for (const [name, info, body, zstd, status, message] of cases) {
        const res = await push(info, body, { zstd });
        const text = await res.text();
        assert.equal(res.status, status, `${name}: ${text}`);
        assert.match(text, message, name);
        await expectNothingLeft(before, info);
      }
      const bad = await push({ ...good, storePath: "/nix/store/not-a-store-path" }, nar);
      assert.equal(bad.status, 400);
      const mismatch = await req(`/api/v1/caches/main/paths/${hashOf(dep)}`, {
        method: "PUT",
        token: pushToken,
        headers: { "x-nixstash-path-info": JSON.stringify(good) },
        body: nar,
      });
      assert.equal(mismatch.status, 400);
      await expectNothingLeft(before, good);
    });

    const batchBody = (entries: { info: PathInfo; body: Buffer; encoding?: string; bodySize?: number }[]) =>
      Buffer.concat(
        entries.flatMap(({ info, body, encoding, bodySize }) => [
          Buffer.from(
            `${JSON.stringify({ ...info, encoding: encoding ?? "zstd", bodySize: bodySize ?? body.length })}\n`,
          ),
          body,
        ]),
      );
    const pushBatch = (body: Buffer, opts: { token?: string; type?: string } = {}) =>
      req("/api/v1/caches/main/paths", {
        method: "POST",
        token: opts.token ?? pushToken,
        headers: { "content-type": opts.type ?? "application/x-nixstash-batch" },
        body,
      });

    it("takes many paths in one batch, in order, with a result per path", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const base = fakeStorePath("batch-base");
      const baseNar = narOf({ dir: { lib: { dir: { "libbase.so": Buffer.alloc(5000, 7) } } } });
      const mid = fakeStorePath("batch-mid");
      const midNar = narOf(Buffer.from(`uses ${base}\n`));
      const top = fakeStorePath("batch-top");
      const topNar = narOf({ dir: { bin: { dir: { top: { executable: `#!/bin/sh\n${mid} ${dep}\n` } } } } });
      const bad = fakeStorePath("batch-bad");
      const badNar = narOf(Buffer.from("the claim says otherwise\n"));
      const afterBad = fakeStorePath("batch-after-bad");
      const afterBadNar = narOf(Buffer.from(`needs ${bad}\n`));
      const orphan = fakeStorePath("batch-orphan");
      const orphanNar = narOf(Buffer.from("refers to a path nobody pushed\n"));
      const absent = fakeStorePath("never-pushed");
      // dep is in the cache already (pushed by an earlier test or just now).
      await push(infoFor(dep, depNar), depNar);
      const before = await storedObjects();

      const res = await pushBatch(
        batchBody([
          { info: infoFor(base, baseNar), body: baseNar, encoding: "none" },
          { info: infoFor(mid, midNar, [base]), body: zstdCompress(midNar) },
          { info: infoFor(top, topNar, [mid, dep, top]), body: zstdCompress(topNar) },
          {
            info: { ...infoFor(bad, badNar), narHash: infoFor(bad, midNar).narHash },
            body: zstdCompress(badNar),
          },
          { info: infoFor(afterBad, afterBadNar, [bad]), body: zstdCompress(afterBadNar) },
          { info: infoFor(orphan, orphanNar, [absent]), body: zstdCompress(orphanNar) },
          { info: infoFor(dep, depNar), body: zstdCompress(depNar) },
          {
            info: { ...infoFor(top, topNar), storePath: "/nix/store/not-a-store-path" },
            body: Buffer.alloc(0),
          },
        ]),
      );
      const text = await res.text();
      assert.equal(res.status, 200, text);
      const { results } = JSON.parse(text) as {
        results: { storePath: string; status?: string | number; error?: string; message?: string }[];
      };
      assert.deepEqual(
        results.map((r) => [r.storePath, r.error ?? r.status]),
        [
          [base, "stored"],
          [mid, "stored"],
          [top, "stored"],
          [bad, "hash_mismatch"],
          [afterBad, "missing_references"],
          [orphan, "missing_references"],
          [dep, "already-present"],
          ["/nix/store/not-a-store-path", "bad_request"],
        ],
      );
      assert.match(results[5]!.message!, new RegExp(absent.slice(11)));
      assert.equal(results[3]!.status, 422, "a refusal carries the status a single upload would get");

      // What was stored is served, signed, and the NAR decodes to what was pushed.
      const key = parsePublicKey(
        ((await (await req("/api/v1/caches/main")).json()) as { publicKey: string }).publicKey,
      );
      for (const [path, nar] of [
        [base, baseNar],
        [mid, midNar],
        [top, topNar],
      ] as const) {
        const narinfo = parseNarInfo(await (await req(`/main/${hashOf(path)}.narinfo`)).text());
        assert.equal(narinfo.narHash, infoFor(path, nar).narHash);
        assert.ok(verifyNarInfo(narinfo, [key]), `${path} is signed`);
        const stored = await req(`/main/${narinfo.url}`);
        assert.equal(stored.status, 200);
        assert.deepEqual(zstdDecompress(Buffer.from(await stored.arrayBuffer())), nar);
      }
      for (const path of [bad, afterBad, orphan])
        assert.equal((await req(`/main/${hashOf(path)}.narinfo`)).status, 404, path);
      // Only the three stored NARs are new in storage; no pending upload is left.
      assert.equal((await storedObjects()).filter((k) => !before.includes(k)).length, 3);
      assert.deepEqual(await h.ctx.repo.pendingUploadsOlderThan(Date.now() + 1000), []);
    });

    it("refuses a batch it cannot frame, or not allowed, and keeps nothing of it", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const path = fakeStorePath("batch-framing");
      const nar = narOf(Buffer.from("framed\n"));
      const body = zstdCompress(nar);
      const before = await storedObjects();
      const good = { info: infoFor(path, nar), body };
      const cases: [string, Buffer, number, RegExp][] = [
        [
          "body cut short",
          batchBody([good, { ...good, bodySize: body.length + 10 }]).subarray(0, -1),
          400,
          /entry 2: the body ends after/,
        ],
        ["no bodySize", Buffer.from(`${JSON.stringify(good.info)}\n`), 400, /entry 1: bodySize must be/],
        ["not JSON", Buffer.from("hello\n"), 400, /entry 1: the line is not valid JSON/],
        [
          "line cut short",
          Buffer.concat([batchBody([good]), Buffer.from('{"storePath"')]),
          400,
          /entry 2: the body ends inside its JSON line/,
        ],
        ["empty", Buffer.alloc(0), 400, /empty batch/],
      ];
      for (const [name, bytes, status, message] of cases) {
        const res = await pushBatch(bytes);
        const text = await res.text();
        assert.equal(res.status, status, `${name}: ${text}`);
        assert.match(text, message, name);
        await expectNothingLeft(before, good.info);
      }
      assert.equal((await pushBatch(batchBody([good]), { type: "application/json" })).status, 415);
      assert.equal((await pushBatch(batchBody([good]), { token: pullToken })).status, 403);
      await expectNothingLeft(before, good.info);
      const ok = await pushBatch(batchBody([good]));
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as { results: { status: string }[] }).results[0]!.status, "stored");
    });

    it("keeps the NARs of a batch's committed paths when it fails after committing", async (t) => {
      if (!h) return t.skip("backend unavailable");
      // A database read failing after the commit (here: the one a deduplicated path's result needs) fails
      // the request; the paths committed before it must keep their NARs. Injected: such a failure cannot be
      // timed for real.
      const cache = (await h.ctx.repo.cacheByName("main"))!;
      const twinNar = narOf(Buffer.from(`content shared by two paths ${Math.random()}\n`));
      const first = fakeStorePath("batch-twin-first");
      assert.equal((await push(infoFor(first, twinNar), twinNar)).status, 201);
      const entry = (path: string, nar: Buffer): BatchEntry => ({
        storePath: path,
        claim: {
          storePath: parseStorePath(path),
          narHash: infoFor(path, nar).narHash,
          narSize: nar.length,
          references: [],
          deriver: null,
          system: null,
          ca: null,
        },
        upstream: [],
        encoding: "none",
        body: nar,
      });
      const a = fakeStorePath("batch-kept-a");
      const aNar = narOf(Buffer.from(`a ${Math.random()}\n`));
      const c = fakeStorePath("batch-kept-c");
      const cNar = narOf(Buffer.from(`c ${Math.random()}\n`));
      const failing = Object.create(h.ctx.repo, {
        path: {
          value: async () => {
            throw new Error("the database went away");
          },
        },
      });
      await assert.rejects(
        ingestBatch({
          ctx: { ...h.ctx, repo: failing },
          input: {
            cache,
            entries: (async function* () {
              yield entry(a, aNar);
              yield entry(fakeStorePath("batch-twin-second"), twinNar);
              yield entry(c, cNar);
            })(),
            pushedBy: null,
          },
        }),
        /the database went away/,
      );
      for (const [path, nar] of [
        [a, aNar],
        [c, cNar],
      ] as const) {
        const narinfo = parseNarInfo(await (await req(`/main/${hashOf(path)}.narinfo`)).text());
        const stored = await req(`/main/${narinfo.url}`);
        assert.equal(stored.status, 200, `${path}'s NAR is still there`);
        assert.deepEqual(zstdDecompress(Buffer.from(await stored.arrayBuffer())), nar);
      }
      assert.deepEqual(await h.ctx.repo.pendingUploadsOlderThan(Date.now() + 1000), []);
    });

    it("accepts references proven by an upstream signature, and refuses forged proofs", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const upstream = parseNarInfo(
        readFileSync(`${testdata}/gdh8165b7rg4y53v64chjys7mbbw89f9.narinfo`, "utf8"),
      );
      const proof = {
        storePath: upstream.storePath,
        narHash: upstream.narHash,
        narSize: upstream.narSize,
        references: upstream.references,
        sigs: upstream.sigs,
      };
      const path = fakeStorePath("uses-upstream");
      const nar = narOf(`links against ${upstream.storePath}\n`);
      const info = infoFor(path, nar, [upstream.storePath]);
      const forged = await push({ ...info, upstream: [{ ...proof, narSize: proof.narSize + 1 }] }, nar);
      assert.equal(forged.status, 400);
      assert.match(await forged.text(), /no signature by a trusted upstream key/);
      const res = await push({ ...info, upstream: [proof] }, nar);
      assert.equal(res.status, 201, await res.clone().text());
    });

    it("answers the batch query for thousands of paths in one request", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const unknown = Array.from({ length: 3000 }, (_, i) => fakeStorePath(`p${i}`));
      const res = await req("/api/v1/caches/main/missing", {
        method: "POST",
        token: pullToken,
        body: JSON.stringify({ paths: [dep, ...unknown, hashOf(app)] }),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(((await res.json()) as { missing: string[] }).missing, unknown);
      const bad = await req("/api/v1/caches/main/missing", {
        method: "POST",
        body: JSON.stringify({ paths: ["nope"] }),
      });
      assert.equal(bad.status, 400);
    });

    it("stores build logs and realisations (both layouts) and serves them", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const drv = fakeStorePath("app-1.0.drv").slice(11);
      const log = "building app\nline two ✓\n";
      const put = await req(`/api/v1/caches/main/logs/${drv}`, {
        method: "PUT",
        token: pushToken,
        body: log,
      });
      assert.equal(put.status, 201);
      const got = await req(`/main/log/${drv}`);
      assert.equal(got.status, 200);
      assert.equal(got.headers.get("content-type"), "text/plain; charset=utf-8");
      assert.equal(await got.text(), log);
      assert.equal(
        (await req(`/api/v1/caches/main/logs/${drv}`, { method: "PUT", token: pullToken, body: "x" })).status,
        403,
      );
      assert.equal(
        (await req(`/api/v1/caches/main/logs/not-a-drv`, { method: "PUT", token: pushToken, body: "x" }))
          .status,
        400,
      );
      assert.equal((await req(`/main/log/${fakeStorePath("other.drv").slice(11)}`)).status, 404);

      const v1 = `sha256:${"ab".repeat(32)}!out`;
      const realisation = JSON.stringify({
        id: v1,
        outPath: app.slice(11),
        signatures: [],
        dependentRealisations: {},
      });
      assert.equal(
        (
          await req(`/api/v1/caches/main/realisations/${v1}`, {
            method: "PUT",
            token: pushToken,
            body: realisation,
          })
        ).status,
        201,
      );
      const r1 = await req(`/main/realisations/${v1}.doi`);
      assert.equal(r1.status, 200);
      assert.equal(r1.headers.get("content-type"), "application/json");
      assert.equal(await r1.text(), realisation);
      const v2 = `${drv}/out`;
      const trace = JSON.stringify({ outPath: app.slice(11), signatures: [] });
      assert.equal(
        (
          await req(`/api/v1/caches/main/realisations/${encodeURIComponent(v2)}`, {
            method: "PUT",
            token: pushToken,
            body: trace,
          })
        ).status,
        201,
      );
      assert.equal(await (await req(`/main/build-trace-v2/${drv}/out.doi`)).text(), trace);
      assert.equal((await req(`/main/build-trace-v2/${drv}/dev.doi`)).status, 404);
      const bad = await req(`/api/v1/caches/main/realisations/${v1}`, {
        method: "PUT",
        token: pushToken,
        body: "{}",
      });
      assert.equal(bad.status, 400);
    });

    it("removes uploads abandoned by a crash, and only those", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const before = await storedObjects();
      const key = "nar/abandoned-by-a-crash.nar.zst";
      await h.ctx.repo.addPendingUpload(key);
      await h.ctx.storage.put(key, Readable.from([Buffer.from("half an upload")]));
      const young = await removeAbandonedUploads({ ctx: h.ctx, input: {} });
      assert.deepEqual(young.removed, [], "a recent upload may still be running");
      const old = await removeAbandonedUploads({
        ctx: { ...h.ctx, clock: () => Date.now() + 7 * 3600_000 },
        input: {},
      });
      assert.deepEqual(old.removed, [key]);
      assert.deepEqual(await storedObjects(), before);
      assert.equal((await req(`/main/${hashOf(app)}.narinfo`)).status, 200, "committed paths untouched");
    });

    it("accepts the token as the Basic-auth password (netrc) and hides private caches from anonymous callers", async (t) => {
      if (!h) return t.skip("backend unavailable");
      const created = await req("/api/v1/caches", {
        method: "POST",
        token: admin,
        body: JSON.stringify({ name: "secret", public: false }),
      });
      assert.equal(created.status, 201);
      for (const path of [
        "/secret/nix-cache-info",
        `/secret/${hashOf(app)}.narinfo`,
        "/api/v1/caches/secret",
      ]) {
        assert.equal((await req(path)).status, 401, path);
        assert.equal(
          (await req(path, { basic: pushToken })).status,
          401,
          `${path} with a token for main only`,
        );
        assert.notEqual((await req(path, { basic: admin })).status, 401, `${path} as admin`);
      }
      assert.equal(
        (await req("/api/v1/caches", { method: "POST", basic: pushToken, body: "{}" })).status,
        403,
      );
      assert.equal((await req(`/main/${hashOf(app)}.narinfo`, { basic: pullToken })).status, 200);
    });
  });
}
