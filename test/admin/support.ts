// Shared set-up of the admin and garbage-collection suites: a harness (both stacks), the bootstrap admin
// token, token minting, and pushes of small fake closures through the native API.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { bootstrap } from "../../server/verbs/bootstrap.ts";
import { type Harness, makeHarness } from "../support/harness.ts";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";

export const HARNESS_STACKS = [
  { db: "sqlite", storage: "local" },
  { db: "postgres", storage: "s3" },
] as const;

export interface AdminHarness {
  h: Harness;
  admin: string;
  req(path: string, init?: RequestInit & { token?: string; json?: unknown }): Promise<Response>;
  json<T = Record<string, unknown>>(
    path: string,
    init?: RequestInit & { token?: string; json?: unknown; status?: number },
  ): Promise<T>;
  token(
    permissions: string[],
    caches?: string[],
    extra?: Record<string, unknown>,
  ): Promise<{ token: string; id: number }>;
  /** Pushes a fake path with the given references (store paths) into a cache; its NAR holds `size` random bytes. */
  push(cache: string, name: string, references?: string[], size?: number, token?: string): Promise<string>;
  storedBytes(): Promise<number>;
  storedKeys(): Promise<string[]>;
}

export async function adminHarness(
  stack: (typeof HARNESS_STACKS)[number],
): Promise<AdminHarness | undefined> {
  const h = await makeHarness(stack);
  if (!h) return undefined;
  const first = await bootstrap({ ctx: h.ctx, input: { defaultCache: "main", dataDir: h.dir } });
  const admin = first.adminToken!;
  const req = (path: string, init: RequestInit & { token?: string; json?: unknown } = {}) => {
    const headers = new Headers(init.headers);
    const token = init.token ?? admin;
    if (token) headers.set("authorization", `Bearer ${token}`);
    const body = init.json !== undefined ? JSON.stringify(init.json) : init.body;
    if (init.json !== undefined) headers.set("content-type", "application/json");
    return Promise.resolve(
      h.app.request(path, { ...init, headers, ...(body !== undefined ? { body } : {}) }),
    );
  };
  const json = async <T>(
    path: string,
    init: RequestInit & { token?: string; json?: unknown; status?: number } = {},
  ) => {
    const res = await req(path, init);
    const text = await res.text();
    assert.equal(res.status, init.status ?? 200, `${init.method ?? "GET"} ${path}: ${text}`);
    return JSON.parse(text) as T;
  };
  return {
    h,
    admin,
    req,
    json,
    async token(permissions, caches = ["main"], extra = {}) {
      const body = await json<{ token: string; id: number }>("/api/v1/tokens", {
        method: "POST",
        json: { name: `${permissions.join("+")}@${caches.join(",")}`, caches, permissions, ...extra },
        status: 201,
      });
      return body;
    },
    async push(cache, name, references = [], size = 2000, token = admin) {
      const storePath = fakeStorePath(name);
      const nar = narOf({ dir: { data: randomBytes(size), refs: references.join("\n") } });
      const res = await req(`/api/v1/caches/${cache}/paths/${hashOf(storePath)}`, {
        method: "PUT",
        token,
        headers: { "x-nixstash-path-info": JSON.stringify(infoFor(storePath, nar, references)) },
        body: nar,
      });
      assert.ok(res.status === 201 || res.status === 200, `push ${name}: ${res.status} ${await res.text()}`);
      return storePath;
    },
    async storedBytes() {
      let total = 0;
      for await (const o of h.ctx.storage.list("")) total += o.size;
      return total;
    },
    async storedKeys() {
      const keys: string[] = [];
      for await (const o of h.ctx.storage.list("")) keys.push(o.key);
      return keys.sort();
    },
  };
}

export { hashOf };

/** Serves the harness's app over HTTP on a free loopback port, for real Nix clients. */
export async function serveHarness(h: Harness): Promise<{ url: string; close(): Promise<void> }> {
  const { serve } = await import("@hono/node-server");
  return new Promise((resolve) => {
    const server = serve({ fetch: h.app.fetch, hostname: "127.0.0.1", port: 0 }, (info) => {
      resolve({
        url: `http://127.0.0.1:${info.port}`,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
          }),
      });
    });
  });
}

/** Substitutes a store path into a fresh chroot store with a real Nix client trusting only `key`. */
export async function substituteFresh(
  env: import("../support/nix-client.ts").NixEnv,
  opts: { url: string; path: string; key: string },
) {
  const { mkdtempSync } = await import("node:fs");
  const { join } = await import("node:path");
  const { nix } = await import("../support/nix-client.ts");
  const { testTmp } = await import("../support/services.ts");
  const store = mkdtempSync(join(testTmp(), "store-"));
  const result = await nix(env, "nix-store", [
    "--store",
    store,
    "--realise",
    opts.path,
    "--option",
    "substituters",
    opts.url,
    "--option",
    "trusted-public-keys",
    opts.key,
  ]);
  return { ...result, store };
}
