// A server process on one of the two stacks the end-to-end suites cover, with handles on its backends so
// a test can look behind the HTTP surface (stored objects, pending uploads).
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { createLocalStorage } from "../../server/storage/local.ts";
import type { Storage } from "../../server/storage/storage.ts";
import { freshPostgres, freshS3 } from "./harness.ts";
import { type ServerProcess, startServerProcess } from "./server-process.ts";
import { testTmp } from "./services.ts";

export const STACKS = ["sqlite+local", "postgres+s3"] as const;
export type Stack = (typeof STACKS)[number];

export interface RunningStack {
  server: ServerProcess;
  storage: Storage;
  databaseUrl: string;
  dataDir: string;
  /** Keys of every stored object, sorted. */
  objects(): Promise<string[]>;
  /** Storage keys of uploads not (yet) owned by any row. */
  pending(): Promise<string[]>;
  /** Mints a token on the server with the admin token. */
  token(permissions: string[], caches?: string[]): Promise<string>;
  stop(): Promise<void>;
}

/** Undefined when the stack's services are not running (the services module says so loudly). */
export async function startStack(
  stack: Stack,
  env: Record<string, string> = {},
): Promise<RunningStack | undefined> {
  const dataDir = mkdtempSync(join(testTmp(), `stack-${stack}-`));
  const full: Record<string, string> = { NIXSTASH_DATA_DIR: dataDir };
  const cleanups: (() => Promise<void>)[] = [];
  let storage: Storage;
  let databaseUrl: string;
  if (stack === "postgres+s3") {
    const pg = await freshPostgres();
    const s3 = await freshS3();
    if (!pg || !s3) return undefined;
    cleanups.push(pg.drop);
    Object.assign(full, s3.env, { NIXSTASH_DATABASE_URL: pg.url });
    storage = s3.storage;
    databaseUrl = pg.url;
  } else {
    storage = createLocalStorage({ root: join(dataDir, "storage") });
    databaseUrl = `sqlite:${join(dataDir, "nixstash.db")}`;
  }
  const server = await startServerProcess({ ...full, ...env });
  return {
    server,
    storage,
    databaseUrl,
    dataDir,
    async objects() {
      const keys: string[] = [];
      for await (const o of storage.list("")) keys.push(o.key);
      return keys.sort();
    },
    async pending() {
      const db = await openDatabase(databaseUrl);
      try {
        return (await createRepo(db).pendingUploadsOlderThan(Date.now() + 60_000)).map((p) => p.storageKey);
      } finally {
        await db.close();
      }
    },
    async token(permissions, caches = ["main"]) {
      const res = await fetch(`${server.url}/api/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.adminToken}` },
        body: JSON.stringify({ name: permissions.join("+"), caches, permissions }),
      });
      if (res.status !== 201) throw new Error(`cannot create a token: ${res.status} ${await res.text()}`);
      return ((await res.json()) as { token: string }).token;
    },
    async stop() {
      await server.stop();
      for (const f of cleanups) await f();
    },
  };
}
