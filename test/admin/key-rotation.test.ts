// Key rotation with real Nix 2.8 clients, on both stacks: one client trusts only the old key, one only the
// new key. Both substitute everything — paths pushed before the rotation and during it — while both keys
// are active; after the old key is retired only the new-key client does, and it still gets every path.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createClient } from "../../hook/client.ts";
import { dumpPath, pathInfos } from "../../hook/local-store.ts";
import { buildClosure, type NixEnv, nixEnv } from "../support/nix-client.ts";
import { type AdminHarness, adminHarness, HARNESS_STACKS, serveHarness, substituteFresh } from "./support.ts";

for (const stack of HARNESS_STACKS) {
  describe(`key rotation with real Nix clients (${stack.db} + ${stack.storage})`, () => {
    let a: AdminHarness | undefined;
    let server: { url: string; close(): Promise<void> } | undefined;
    let client: NixEnv;

    before(async () => {
      a = await adminHarness(stack);
      if (!a) return;
      server = await serveHarness(a.h);
      client = nixEnv();
    });
    after(async () => {
      await server?.close();
      await a?.h.cleanup();
    });

    const pushClosure = async () => {
      const closure = await buildClosure(client);
      const c = createClient({ server: server!.url, cache: "main", token: a!.admin });
      for (const info of await pathInfos([closure.top], { closure: true }))
        await c.upload(
          { storePath: info.path, narHash: info.narHash, narSize: info.narSize, references: info.references },
          dumpPath(info.path),
        );
      return closure.top;
    };
    const substitute = async (path: string, key: string) => {
      const r = await substituteFresh(client, { url: `${server!.url}/main`, path, key });
      return r.code === 0 ? "ok" : r.stderr;
    };

    it("keeps old-key and new-key clients working through a rotation; after retirement only the new key", async (t) => {
      if (!a || !server) return t.skip("backend unavailable");
      const before = await pushClosure();
      const keys0 = await a.json<{ keys: { id: number; publicKey: string }[] }>("/api/v1/caches/main/keys");
      const oldKey = keys0.keys[0]!;
      assert.equal(await substitute(before, oldKey.publicKey), "ok");

      const rotated = await a.json<{ key: { id: number; publicKey: string } }>(
        "/api/v1/caches/main/keys/rotate",
        {
          method: "POST",
          status: 201,
        },
      );
      const newKey = rotated.key.publicKey;
      // Wait for the background pass to sign the existing paths with the new key.
      for (let i = 0; i < 100; i++) {
        const list = await a.json<{ paths: number; keys: { id: number; signedPaths: number }[] }>(
          "/api/v1/caches/main/keys",
        );
        if (list.keys.find((k) => k.id === rotated.key.id)!.signedPaths === list.paths) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const during = await pushClosure();
      const description = await a.json<{ publicKeys: string[] }>("/api/v1/caches/main");
      assert.deepEqual(
        description.publicKeys.sort(),
        [oldKey.publicKey, newKey].sort(),
        "both keys are published",
      );
      for (const path of [before, during]) {
        assert.equal(await substitute(path, oldKey.publicKey), "ok", `old key, ${path}`);
        assert.equal(await substitute(path, newKey), "ok", `new key, ${path}`);
      }

      await a.json(`/api/v1/caches/main/keys/${oldKey.id}/retire`, { method: "POST" });
      const afterRetire = await pushClosure();
      for (const path of [before, during, afterRetire]) {
        assert.equal(await substitute(path, newKey), "ok", `new key, ${path}`);
        assert.match(
          await substitute(path, oldKey.publicKey),
          /not signed by any of the keys/,
          `old key, ${path}`,
        );
      }
      const description2 = await a.json<{ publicKey: string; publicKeys: string[] }>("/api/v1/caches/main");
      assert.deepEqual(description2.publicKeys, [newKey]);
      assert.equal(description2.publicKey, newKey);
    });
  });
}
