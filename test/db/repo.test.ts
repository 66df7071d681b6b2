// The repository, one suite, run against both databases: SQLite (embedded) and PostgreSQL (real server).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import BetterSqlite3 from "better-sqlite3";
import { and, eq } from "drizzle-orm";
import pg from "pg";
import { encodeNix32 } from "../../nix/index.ts";
import { DATA_VERSION_EVERY_MS, type Database, openDatabase } from "../../server/db/database.ts";
import { type CacheRow, createRepo, type NewNar, type NewPath, type Repo } from "../../server/db/repo.ts";
import { freshPostgres } from "../support/harness.ts";
import { testTmp } from "../support/services.ts";

const hash32 = () => encodeNix32(randomBytes(20));
const sha = () => `sha256:${encodeNix32(randomBytes(32))}`;

function narRow(overrides: Partial<NewNar> = {}): NewNar {
  return {
    narHash: sha(),
    narSize: 3 * 1024 ** 3, // above 2^31: sizes must survive as exact integers
    compression: "zstd",
    fileHash: sha(),
    fileSize: 1234,
    storageKey: `nar/${hash32()}.nar.zst`,
    listing: '{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}',
    ...overrides,
  };
}

for (const dialect of ["sqlite", "postgres"] as const) {
  describe(`repository (${dialect})`, () => {
    let database: Database | undefined;
    let repo: Repo;
    let cache: CacheRow;
    let other: CacheRow;
    let drop: (() => Promise<void>) | undefined;
    let sqliteFile = "";
    let databaseUrl = "";

    const pathRow = (name: string, overrides: Partial<NewPath> = {}): NewPath => {
      const hash = hash32();
      return {
        cacheId: cache.id,
        hash,
        storePath: `/nix/store/${hash}-${name}`,
        references: [],
        requiredHashes: [],
        deriver: null,
        system: null,
        ca: null,
        sigs: ["main-1:sig"],
        pushedBy: null,
        ...overrides,
      };
    };

    before(async () => {
      sqliteFile = join(mkdtempSync(join(testTmp(), "repo-")), "db.sqlite");
      let url = `sqlite:${sqliteFile}`;
      if (dialect === "postgres") {
        const fresh = await freshPostgres();
        if (!fresh) return;
        url = fresh.url;
        drop = fresh.drop;
      }
      databaseUrl = url;
      database = await openDatabase(url);
      // Opening again applies no migration twice.
      await (await openDatabase(url)).close();
      repo = createRepo(database);
      const key = { name: "k-1", publicKey: "k-1:pub", secretEncrypted: "v1:x" };
      const base = { public: true, priority: 40, storeDir: "/nix/store", description: "", upstreamKeys: "" };
      cache = (await repo.createCache({ name: "main", ...base }, key))!;
      other = (await repo.createCache({ name: "other", ...base, public: false }, key))!;
    });
    after(async () => {
      await database?.close();
      await drop?.();
    });

    it("creates caches once, with their signing key", async (t) => {
      if (!database) return t.skip("database unavailable");
      const key = { name: "k-1", publicKey: "k-1:pub", secretEncrypted: "v1:x" };
      const again = await repo.createCache(
        {
          name: "main",
          public: true,
          priority: 1,
          storeDir: "/nix/store",
          description: "",
          upstreamKeys: "",
        },
        key,
      );
      assert.equal(again, undefined);
      assert.deepEqual(
        (await repo.listCaches()).map((c) => c.name),
        ["main", "other"],
      );
      assert.equal((await repo.cacheByName("other"))?.public, false);
      assert.equal((await repo.signingKeys(cache.id)).length, 1);
      assert.equal(await repo.countCaches(), 2);
    });

    it("reuses a cache row by name for a second; its own writes are seen at once, a replica's within it", async (t) => {
      if (!database) return t.skip("database unavailable");
      const key = { name: "memo-1", publicKey: "memo-1:pub", secretEncrypted: "v1:x" };
      const base = { public: true, priority: 40, storeDir: "/nix/store", description: "", upstreamKeys: "" };
      assert.equal(await repo.cacheByName("memo"), undefined, "a miss is remembered too");
      const replica = createRepo(database);
      const created = (await replica.createCache({ name: "memo", ...base }, key))!;
      assert.equal(
        await replica.cacheByName("memo").then((c) => c?.id),
        created.id,
        "the writer sees it at once",
      );
      assert.equal(await repo.cacheByName("memo"), undefined, "the other replica within its second");
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal((await repo.cacheByName("memo"))?.public, true, "and after it");
      await replica.updateCache(created.id, { public: false });
      assert.equal((await replica.cacheByName("memo"))?.public, false);
      assert.equal((await repo.cacheByName("memo"))?.public, true);
      await repo.updateCache(created.id, { deletedAt: Date.now() });
      assert.equal(await repo.cacheByName("memo"), undefined, "a soft delete through this replica: at once");
      await repo.purgeCache(created.id, Date.now());
    });

    it("commits a path with its NAR and listing, exact sizes included", async (t) => {
      if (!database) return t.skip("database unavailable");
      const nar = narRow();
      await repo.addPendingUpload(nar.storageKey);
      const path = pathRow("a", { deriver: "x.drv", system: "x86_64-linux", ca: "fixed:r:sha256:abc" });
      const outcome = await repo.commitPath(path, nar);
      assert.equal(outcome.kind, "committed");
      const record = await repo.path(cache.id, path.hash);
      assert.equal(record?.narSize, 3 * 1024 ** 3);
      assert.equal(record?.storageKey, nar.storageKey);
      assert.equal(record?.deriver, "x.drv");
      assert.equal(record?.ca, "fixed:r:sha256:abc");
      assert.equal(await repo.listing(cache.id, path.hash), nar.listing);
      assert.equal((await repo.narByFileHash(cache.id, nar.fileHash))?.id, record?.narId);
      assert.equal(
        await repo.narByFileHash(other.id, nar.fileHash),
        undefined,
        "other caches do not serve it",
      );
      assert.deepEqual(await repo.pendingUploadsOlderThan(Date.now() + 60_000), [], "pending upload cleared");
    });

    it("a path read also answers the read of its NAR by FileHash, from memory, for the memo's second", async (t) => {
      if (!database) return t.skip("database unavailable");
      const db = database;
      const nar = narRow();
      const path = pathRow("prewarm");
      assert.equal((await repo.commitPath(path, nar)).kind, "committed");
      const fromDb = await createRepo(db).narByFileHash(cache.id, nar.fileHash);
      assert.ok(fromDb, "the NAR is served by this cache");
      const reader = createRepo(db);
      assert.equal((await reader.path(cache.id, path.hash))?.narId, fromDb.id);
      // The path goes behind the reader's back (as through another replica): only a row the reader
      // remembers from its path read can still answer for the NAR.
      await db.transaction(async (tx) => {
        await tx
          .delete(db.t.paths)
          .where(and(eq(db.t.paths.cacheId, cache.id), eq(db.t.paths.hash, path.hash)));
      });
      assert.equal(
        await createRepo(db).narByFileHash(cache.id, nar.fileHash),
        undefined,
        "gone for a fresh reader",
      );
      assert.deepEqual(
        await reader.narByFileHash(cache.id, nar.fileHash),
        fromDb,
        "the same row, remembered",
      );
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal(
        await reader.narByFileHash(cache.id, nar.fileHash),
        undefined,
        "and forgotten after the second",
      );
    });

    it("keeps a row past its second while nothing commits, and knows absent paths until something does", async (t) => {
      if (!database) return t.skip("database unavailable");
      const db = database;
      const reader = createRepo(db);
      const path = pathRow("revision");
      const absent = pathRow("revision-absent");
      assert.equal((await repo.commitPath(path, narRow())).kind, "committed");
      const first = await reader.path(cache.id, path.hash);
      assert.ok(first);
      assert.equal(await reader.path(cache.id, absent.hash), undefined);
      await reader.recordAccess({
        at: Date.now(),
        narinfos: new Map([[cache.id, new Set([path.hash])]]),
        nars: new Map(),
        counters: [],
      });
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal(typeof db.revision(), "number");
      // Same object: not read again (a read makes a new one), through a last-access flush too.
      assert.equal(await reader.path(cache.id, path.hash), first, "kept: nothing committed since");
      assert.equal(reader.peekPath(cache.id, absent.hash), null, "known absent, without a query");
      if (db.dialect === "sqlite") {
        // A commit by another connection to the file (as by another process on it).
        const other = new BetterSqlite3(sqliteFile);
        other.prepare("UPDATE paths SET sigs = 'main-1:other' WHERE hash = ?").run(path.hash);
        other.close();
        // Within a millisecond (data_version is asked at most that often).
        await new Promise((r) => setTimeout(r, 2 * DATA_VERSION_EVERY_MS));
        assert.equal(
          reader.peekPath(cache.id, absent.hash),
          undefined,
          "another process committed: not known",
        );
      } else {
        // A commit through another replica (its own pool and listener): heard through its notification.
        const replica = await openDatabase(databaseUrl);
        try {
          await replica.transaction(async (tx) => {
            await tx
              .update(replica.t.paths)
              .set({ sigs: "main-1:other" })
              .where(eq(replica.t.paths.hash, path.hash));
          });
        } finally {
          await replica.close();
        }
        const heard = Date.now() + 2000;
        while (reader.peekPath(cache.id, absent.hash) === null && Date.now() < heard)
          await new Promise((r) => setTimeout(r, 10));
        assert.equal(
          reader.peekPath(cache.id, absent.hash),
          undefined,
          "another replica committed: not known",
        );
      }
      // The row was checked above, and holds a second from then (as long as one read then would).
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal((await reader.path(cache.id, path.hash))?.sigs, "main-1:other", "read again");
      // Either way, a path committed through this process (or a replica sharing the database) is seen at once.
      assert.equal((await repo.commitPath(absent, narRow())).kind, "committed");
      assert.equal(
        (await reader.path(cache.id, absent.hash))?.storePath,
        absent.storePath,
        "a push is seen at once",
      );
    });

    /** A statement run as psql would run it: its own connection, no notification. */
    const byHand = async (text: string, values: unknown[]) => {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        await client.query(text, values);
      } finally {
        await client.end();
      }
    };

    /** Runs fn on a database of its own that looks for unannounced writers every `ms`, then closes it. */
    const withLooksEvery = async (ms: number, fn: (db: Database, reader: Repo) => Promise<void>) => {
      const db = await openDatabase(databaseUrl, { revisionMaxAgeMs: ms });
      try {
        await fn(db, createRepo(db));
      } finally {
        await db.close();
      }
    };

    // SQLite sees such a change at once (the test above: another connection to the file).
    if (dialect === "postgres")
      it("sees a change made by hand within the revision's longest age", async (t) => {
        if (!database) return t.skip("database unavailable");
        await withLooksEvery(500, async (_db, reader) => {
          const absent = pathRow("by-hand");
          assert.equal(await reader.path(cache.id, absent.hash), undefined);
          assert.equal(reader.peekPath(cache.id, absent.hash), null, "known absent");
          await byHand(
            `INSERT INTO paths (cache_id, hash, store_path, nar_id, "references", sigs)
             SELECT $1, $2, $3, id, '', 'main-1:sig' FROM nars LIMIT 1`,
            [cache.id, absent.hash, absent.storePath],
          );
          await new Promise((r) => setTimeout(r, 700));
          assert.equal((await reader.path(cache.id, absent.hash))?.storePath, absent.storePath, "seen");
        });
      });

    // The looks for unannounced writers (every revisionMaxAgeMs) turn the revision only when someone else
    // wrote: a quiet database, or one where only this process's last-access flushes committed, keeps it.
    if (dialect === "postgres")
      it("keeps its revision across looks when only its own last-access flushes committed", async (t) => {
        if (!database) return t.skip("database unavailable");
        await withLooksEvery(150, async (db, reader) => {
          const path = pathRow("quiet");
          assert.equal((await repo.commitPath(path, narRow())).kind, "committed");
          const flush = () =>
            reader.recordAccess({
              at: Date.now(),
              narinfos: new Map([[cache.id, new Set([path.hash])]]),
              nars: new Map(),
              counters: [],
            });
          // The first look turns it (nothing to compare with yet).
          await new Promise((r) => setTimeout(r, 400));
          // A window of several looks with two flushes in it, and nothing else written on purpose. The
          // server's own background writers (autovacuum's analyze) can turn it in a window: one window of
          // three in which it held is the behaviour; turning at every look fails all three.
          const held: boolean[] = [];
          for (let attempt = 0; attempt < 3 && !held.includes(true); attempt++) {
            const revision = db.revision();
            assert.equal(typeof revision, "number");
            await flush();
            await new Promise((r) => setTimeout(r, 350));
            await flush();
            await new Promise((r) => setTimeout(r, 350));
            held.push(db.revision() === revision);
          }
          assert.ok(held.includes(true), `turned in every window: ${held.join(", ")}`);
          // Someone else's commit (by hand, as psql: no notification) turns it at the next look.
          const revision = db.revision();
          await byHand("UPDATE paths SET sigs = 'main-1:hand' WHERE hash = $1", [path.hash]);
          await new Promise((r) => setTimeout(r, 400));
          assert.notEqual(db.revision(), revision, "another writer's commit turned it");
        });
      });

    it("reads of many paths at once (grouped on PostgreSQL) each get their own row, or none", async (t) => {
      if (!database) return t.skip("database unavailable");
      const committed: NewPath[] = [];
      for (let i = 0; i < 12; i++) {
        const path = pathRow(`many-${i}`, i % 3 === 0 ? { cacheId: other.id } : {});
        assert.equal((await repo.commitPath(path, narRow())).kind, "committed");
        committed.push(path);
      }
      const asked = [
        ...committed.map((p) => ({ cacheId: p.cacheId, hash: p.hash, storePath: p.storePath })),
        // The same hashes in the other cache: present only where committed.
        ...committed.map((p) => ({
          cacheId: p.cacheId === cache.id ? other.id : cache.id,
          hash: p.hash,
          storePath: undefined,
        })),
        ...Array.from({ length: 6 }, () => ({ cacheId: cache.id, hash: hash32(), storePath: undefined })),
      ];
      // A fresh repository (nothing remembered), every read asked for before any is answered, twice over.
      const reader = createRepo(database);
      const reads = [...asked, ...asked].map((a) => reader.path(a.cacheId, a.hash));
      const rows = await Promise.all(reads);
      rows.forEach((row, i) => {
        const want = asked[i % asked.length]!;
        assert.equal(row?.storePath, want.storePath, `read ${i} (${want.hash} in cache ${want.cacheId})`);
      });
    });

    it("refuses a path whose required references are absent, and commits nothing", async (t) => {
      if (!database) return t.skip("database unavailable");
      const missing = hash32();
      const nar = narRow();
      const path = pathRow("b", { requiredHashes: [missing], references: [`${missing}-dep`] });
      assert.deepEqual(await repo.commitPath(path, nar), { kind: "missing-references", missing: [missing] });
      assert.equal(await repo.path(cache.id, path.hash), undefined);
      assert.equal(await repo.narByNarHash(nar.narHash), undefined);
    });

    it("deduplicates NARs by NarHash across paths and caches, and reports already-present paths", async (t) => {
      if (!database) return t.skip("database unavailable");
      const nar = narRow();
      const first = pathRow("c");
      assert.equal((await repo.commitPath(first, nar)).kind, "committed");
      const twin = await repo.commitPath(
        { ...pathRow("d"), cacheId: other.id },
        { ...nar, storageKey: "nar/other.nar.zst" },
      );
      assert.equal(twin.kind, "committed");
      assert.ok(twin.kind === "committed" && twin.deduplicated);
      assert.deepEqual(await repo.commitPath(first, narRow()), {
        kind: "already-present",
        narHash: nar.narHash,
      });
    });

    it("keeps one NAR row when the same content is committed concurrently", async (t) => {
      if (!database) return t.skip("database unavailable");
      // Many rounds: on PostgreSQL the race (a conflict on FileHash, which the insert did not expect) showed
      // in about one commit in sixty.
      for (let round = 0; round < 40; round++) {
        const nar = narRow();
        const outcomes = await Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            repo.commitPath(pathRow(`e${i}`), { ...nar, storageKey: `nar/c${round}-${i}.nar.zst` }),
          ),
        );
        assert.ok(outcomes.every((o) => o.kind === "committed"));
        assert.equal(outcomes.filter((o) => o.kind === "committed" && !o.deduplicated).length, 1);
      }
    });

    it("commits a batch in order, each path with its outcome; a path may refer to one before it", async (t) => {
      if (!database) return t.skip("database unavailable");
      const base = pathRow("batch-base");
      const onBase = pathRow("batch-on-base", {
        requiredHashes: [base.hash],
        references: [`${base.hash}-x`],
      });
      const absent = hash32();
      const orphan = pathRow("batch-orphan", { requiredHashes: [absent], references: [`${absent}-x`] });
      const twinNar = narRow();
      const twin1 = pathRow("batch-twin-1");
      const twin2 = pathRow("batch-twin-2");
      const items = [
        { path: base, nar: narRow() },
        { path: onBase, nar: narRow({ listing: '{"version":1,"root":{"type":"symlink","target":"x"}}' }) },
        { path: orphan, nar: narRow() },
        { path: twin1, nar: twinNar },
        { path: twin2, nar: { ...twinNar, storageKey: `nar/${hash32()}.nar.zst` } },
        { path: base, nar: narRow() },
      ];
      await repo.addPendingUploads(items.map(({ nar }) => nar.storageKey));
      const outcomes = await repo.commitPaths(items);
      assert.deepEqual(
        outcomes.map((o) =>
          o.kind === "committed" ? `committed${o.deduplicated ? " (dedup)" : ""}` : o.kind,
        ),
        ["committed", "committed", "missing-references", "committed", "committed (dedup)", "already-present"],
      );
      assert.deepEqual(outcomes[2], { kind: "missing-references", missing: [absent] });
      assert.deepEqual(outcomes[5], { kind: "already-present", narHash: items[0]!.nar.narHash });
      assert.ok(await repo.path(cache.id, onBase.hash));
      assert.equal(await repo.listing(cache.id, onBase.hash), items[1]!.nar.listing);
      assert.equal(await repo.path(cache.id, orphan.hash), undefined);
      // The twins share one NAR row; the NARs stored are no longer pending, those not kept still are.
      const [one, two] = [await repo.path(cache.id, twin1.hash), await repo.path(cache.id, twin2.hash)];
      assert.equal(one?.narId, two?.narId);
      assert.equal(two?.storageKey, twinNar.storageKey);
      const pending = (await repo.pendingUploadsOlderThan(Number.MAX_SAFE_INTEGER)).map((r) => r.storageKey);
      assert.deepEqual(pending.sort(), [2, 4, 5].map((i) => items[i]!.nar.storageKey).sort());
    });

    it("commits batches at once whatever order their paths lock references and insert in", async (t) => {
      if (!database) return t.skip("database unavailable");
      // One batch refers to r1 then r2, the other to r2 then r1; then both insert x and y, in opposite orders.
      // On PostgreSQL, locking references path by path deadlocked the first (a failed batch after the 1 s
      // deadlock timeout); references are now locked up front in one order. The second can still deadlock,
      // and is then committed path by path (which also hides the first case's deadlock from this test: it
      // fails only when neither holds).
      const r1 = pathRow("r1");
      const r2 = pathRow("r2");
      assert.deepEqual(
        (
          await repo.commitPaths([
            { path: r1, nar: narRow() },
            { path: r2, nar: narRow() },
          ])
        ).map((o) => o.kind),
        ["committed", "committed"],
      );
      const on = (name: string, ref: NewPath) =>
        pathRow(name, { requiredHashes: [ref.hash], references: [ref.storePath.slice(11)] });
      for (let round = 0; round < 3; round++) {
        const batches = [
          [on("a1", r1), on("a2", r2)],
          [on("b1", r2), on("b2", r1)],
        ];
        const outcomes = await Promise.all(
          batches.map((paths) => repo.commitPaths(paths.map((path) => ({ path, nar: narRow() })))),
        );
        assert.deepEqual(
          outcomes.map((list) => list.map((o) => o.kind)),
          [
            ["committed", "committed"],
            ["committed", "committed"],
          ],
          `round ${round}`,
        );
      }
      const x = pathRow("x");
      const y = pathRow("y");
      const nx = narRow();
      const ny = narRow();
      const [first, second] = await Promise.all([
        repo.commitPaths([
          { path: x, nar: nx },
          { path: y, nar: ny },
        ]),
        repo.commitPaths([
          { path: y, nar: { ...ny, storageKey: `nar/${hash32()}.nar.zst` } },
          { path: x, nar: { ...nx, storageKey: `nar/${hash32()}.nar.zst` } },
        ]),
      ]);
      // Each path is committed once; the other batch learns it is there (or reuses its NAR).
      for (const [i, path] of [x, y].entries()) {
        const kinds = [first![i]!.kind, second![1 - i]!.kind].sort();
        assert.ok(
          kinds.includes("committed") && kinds.every((k) => k === "committed" || k === "already-present"),
          `${path.storePath}: ${kinds}`,
        );
        assert.ok(await repo.path(cache.id, path.hash));
      }
    });

    it("rolls a failed transaction back wholly, and its connection goes on committing", async (t) => {
      if (!database) return t.skip("database unavailable");
      const db = database;
      const thrown = `nar/${hash32()}.nar.zst`;
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.insert(db.t.pendingUploads).values({ storageKey: thrown });
          throw new Error("boom");
        }),
        /boom/,
      );
      // A statement that fails inside a transaction (the storage key is unique) rolls it back too.
      const twice = `nar/${hash32()}.nar.zst`;
      await repo.addPendingUpload(twice);
      await assert.rejects(repo.addPendingUpload(twice));
      const known = await repo.knownStorageKeys();
      assert.ok(!known.has(thrown));
      assert.ok(known.has(twice));
      // Transactions at once run on several pooled connections (PostgreSQL), each preparing the commit's
      // statements once and reusing them in the next rounds.
      for (let round = 0; round < 3; round++) {
        const paths = Array.from({ length: 12 }, (_, i) => pathRow(`r${round}-${i}`));
        const nars = paths.map(() => narRow());
        const outcomes = await Promise.all(paths.map((path, i) => repo.commitPath(path, nars[i]!)));
        assert.ok(outcomes.every((o) => o.kind === "committed" && !o.deduplicated));
        for (const [i, path] of paths.entries()) {
          const stored = await repo.path(cache.id, path.hash);
          assert.equal(stored?.narHash, nars[i]!.narHash);
          assert.equal(stored?.storePath, path.storePath);
          assert.equal(await repo.listing(cache.id, path.hash), nars[i]!.listing);
        }
      }
    });

    it("answers presence, and commits with required references, for lists of every short length", async (t) => {
      if (!database) return t.skip("database unavailable");
      // Short lists run on statements prepared per length (up to 16), longer ones are built per call.
      const stored = Array.from({ length: 20 }, (_, i) => pathRow(`len-${i}`));
      for (const path of stored) await repo.commitPath(path, narRow());
      for (let n = 1; n <= 20; n++) {
        const have = stored.slice(0, Math.ceil(n / 2)).map((s) => s.hash);
        const lack = Array.from({ length: n - have.length }, hash32);
        const query = [...lack, ...have];
        assert.deepEqual([...(await repo.presentHashes(cache.id, query))].sort(), [...have].sort(), `${n}`);
        assert.equal((await repo.presentHashes(other.id, query)).size, 0);
        const needs = stored.slice(0, n).map((s) => s.hash);
        const committed = await repo.commitPath(pathRow(`needs-${n}`, { requiredHashes: needs }), narRow());
        assert.equal(committed.kind, "committed", `${n} required references present`);
        const missing = await repo.commitPath(
          pathRow(`lacks-${n}`, { requiredHashes: [...needs.slice(1), hash32()] }),
          narRow(),
        );
        assert.equal(missing.kind, "missing-references", `${n} required, one absent`);
      }
    });

    it("answers presence for thousands of hashes", async (t) => {
      if (!database) return t.skip("database unavailable");
      const present = pathRow("f");
      await repo.commitPath(present, narRow());
      const query = [...Array.from({ length: 2500 }, hash32), present.hash];
      const found = await repo.presentHashes(cache.id, query);
      assert.deepEqual([...found], [present.hash]);
      assert.equal((await repo.presentHashes(other.id, [present.hash])).size, 0);
    });

    it("stores tokens by hash and records their use", async (t) => {
      if (!database) return t.skip("database unavailable");
      const row = await repo.createToken({
        name: "t",
        secretHash: "ab".repeat(32),
        prefix: "nxs_abc",
        caches: "main",
        permissions: "pull",
        expiresAt: null,
      });
      assert.equal((await repo.tokenBySecretHash("ab".repeat(32)))?.id, row.id);
      assert.equal(await repo.tokenBySecretHash("cd".repeat(32)), undefined);
      await repo.touchToken(row.id, 1234);
      assert.equal((await repo.tokenBySecretHash("ab".repeat(32)))?.lastUsedAt, 1234);
    });

    it("replaces build logs and returns the previous object to delete", async (t) => {
      if (!database) return t.skip("database unavailable");
      assert.equal(await repo.putLog(cache.id, "x.drv", "log/1", 10), undefined);
      assert.equal(await repo.putLog(cache.id, "x.drv", "log/2", 20), "log/1");
      assert.deepEqual(await repo.log(cache.id, "x.drv"), { storageKey: "log/2", size: 20 });
      assert.equal(await repo.log(other.id, "x.drv"), undefined);
    });

    it("stores realisations per cache", async (t) => {
      if (!database) return t.skip("database unavailable");
      await repo.putRealisation(cache.id, "sha256:00!out", '{"outPath":"a"}');
      await repo.putRealisation(cache.id, "sha256:00!out", '{"outPath":"b"}');
      assert.equal(await repo.realisation(cache.id, "sha256:00!out"), '{"outPath":"b"}');
      assert.equal(await repo.realisation(other.id, "sha256:00!out"), undefined);
    });

    it("commits a single write on its own, even beside an open transaction that then fails", async (t) => {
      if (!database) return t.skip("database unavailable");
      // On SQLite both would run on the one writer connection: the single write must wait for the
      // transaction's end instead of joining it (and being rolled back with it).
      let opened!: () => void;
      const isOpen = new Promise<void>((resolve) => {
        opened = resolve;
      });
      let release!: () => void;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      const failing = database.transaction(async (tx) => {
        await tx.insert(database!.t.pendingUploads).values({ storageKey: "single/rolled-back" });
        opened();
        await held;
        throw new Error("boom");
      });
      await isOpen;
      const single = repo.inlineObjects.put("single/kept", Buffer.from("kept"));
      release();
      await assert.rejects(failing, /boom/);
      await single;
      const row = await repo.inlineObjects.get("single/kept");
      assert.ok(row?.bytes.equals(Buffer.from("kept")), "the single write was committed");
      assert.deepEqual(
        (await repo.pendingUploadsOlderThan(Date.now() + 60_000)).filter(
          (p) => p.storageKey === "single/rolled-back",
        ),
        [],
      );
    });

    it("stores small objects put at once, each with its bytes, the same key last put winning", async (t) => {
      if (!database) return t.skip("database unavailable");
      // On PostgreSQL the puts that gather while one is written go in one statement (grouped-writes.ts).
      const keys = Array.from({ length: 20 }, (_, i) => `grouped/${i}`);
      await Promise.all([
        ...keys.map((key) => repo.inlineObjects.put(key, Buffer.from(`bytes of ${key}`))),
        repo.inlineObjects.put("grouped/same", Buffer.from("first")),
        repo.inlineObjects.put("grouped/same", Buffer.from("second")),
      ]);
      for (const key of keys) {
        const row = await repo.inlineObjects.get(key);
        assert.equal(row?.bytes.toString(), `bytes of ${key}`, key);
      }
      assert.equal((await repo.inlineObjects.get("grouped/same"))?.bytes.toString(), "second");
      // Put over, at once again: replaced.
      await Promise.all(keys.map((key) => repo.inlineObjects.put(key, Buffer.from(`new ${key}`))));
      for (const key of keys)
        assert.equal((await repo.inlineObjects.get(key))?.bytes.toString(), `new ${key}`);
      assert.deepEqual(await repo.inlineObjects.present([...keys, "grouped/none"]), new Set(keys));
    });

    it("rolls a failed transaction back entirely", async (t) => {
      if (!database) return t.skip("database unavailable");
      await assert.rejects(
        database.transaction(async (tx) => {
          await tx.insert(database!.t.pendingUploads).values({ storageKey: "rollback/me" });
          throw new Error("boom");
        }),
        /boom/,
      );
      assert.deepEqual(
        (await repo.pendingUploadsOlderThan(Date.now() + 60_000)).filter(
          (p) => p.storageKey === "rollback/me",
        ),
        [],
      );
    });
  });
}
