// Any stock Nix client can push: `nix copy --to http://…/main?compression=…` with the token in netrc, in
// every compression Nix 2.8 writes, plus `nix store copy-log`, realisations of content-addressed
// derivations, `nix store sign` and `nix store verify` against the cache. Then the refusals: lying
// narinfos, a lying Content-Length, a narinfo for a NAR never uploaded, writes without or with a
// pull-only token — each a 4xx, after which the cache serves exactly what it served before.
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { formatNarInfo, type NarInfo, parseNarInfo } from "../../nix/index.ts";
import { buildClosure, type NixEnv, nix, nixEnv, substitute } from "../support/nix-client.ts";
import { type RunningStack, STACKS, startStack } from "../support/stack.ts";

const COMPRESSIONS = ["zstd", "xz", "none", "bzip2", "br"] as const;

for (const stack of STACKS) {
  describe(`nix copy --to the server (${stack})`, () => {
    let s: RunningStack | undefined;
    let pusher: NixEnv;
    let reader: NixEnv;
    const closures: Record<string, Awaited<ReturnType<typeof buildClosure>>> = {};

    before(async () => {
      s = await startStack(stack);
      if (!s) return;
      pusher = nixEnv({ token: await s.token(["pull", "push"]) });
      reader = nixEnv();
      for (const compression of COMPRESSIONS) closures[compression] = await buildClosure(pusher);
    });
    after(async () => s?.stop());

    const cacheUrl = () => `${s!.server.url}/main`;
    const narinfo = async (path: string) => fetch(`${cacheUrl()}/${path.slice(11, 43)}.narinfo`);
    const served = async (paths: string[]) =>
      Promise.all(
        paths.map(async (p) => `${p} ${(await narinfo(p)).status} ${await (await narinfo(p)).text()}`),
      );

    for (const compression of COMPRESSIONS) {
      it(`pushes a closure with compression=${compression} and substitutes it into a fresh store`, async (t) => {
        if (!s) return t.skip("backend unavailable");
        const c = closures[compression]!;
        const push = await nix(pusher, "nix", [
          "copy",
          "--to",
          `${cacheUrl()}?compression=${compression}`,
          c.top,
        ]);
        assert.equal(push.code, 0, push.stderr);
        const info = parseNarInfo(await (await narinfo(c.dep)).text());
        assert.equal(
          info.compression,
          compression === "none" ? "zstd" : compression,
          "stored as sent, or zstd",
        );
        assert.equal(info.sigs.length, 1);
        assert.match(info.sigs[0]!, /^main-1:/);
        const ls = await fetch(`${cacheUrl()}/${c.dep.slice(11, 43)}.ls`);
        assert.equal(ls.status, 200);

        const store = `${reader.dir}/store-${compression}`;
        const got = await substitute(reader, {
          store,
          path: c.top,
          cache: cacheUrl(),
          key: s.server.publicKey,
        });
        assert.equal(got.code, 0, got.stderr);
        const verify = await nix(reader, "nix", [
          "store",
          "verify",
          "--store",
          store,
          "-r",
          c.top,
          "--no-trust",
        ]);
        assert.equal(verify.code, 0, verify.stderr);
      });
    }

    it("passes nix store verify and shows the server's signature in nix path-info", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const c = closures.zstd!;
      const verify = await nix(reader, "nix", [
        "store",
        "verify",
        "--store",
        cacheUrl(),
        "-r",
        c.top,
        "--option",
        "trusted-public-keys",
        s.server.publicKey,
      ]);
      assert.equal(verify.code, 0, verify.stderr);
      const info = await nix(reader, "nix", ["path-info", "--store", cacheUrl(), "--sigs", c.top]);
      assert.equal(info.code, 0, info.stderr);
      assert.match(info.stdout, new RegExp(`${c.top}\\s.*main-1:`));
    });

    it("takes build logs from nix store copy-log and serves them to nix log", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const c = closures.xz!;
      const drv = (await nix(pusher, "nix-store", ["--query", "--deriver", c.dep])).stdout.trim();
      const copy = await nix(pusher, "nix", ["store", "copy-log", "--to", cacheUrl(), drv]);
      assert.equal(copy.code, 0, copy.stderr);
      const log = await nix(reader, "nix", ["log", "--store", cacheUrl(), c.dep]);
      assert.equal(log.code, 0, log.stderr);
      assert.match(log.stdout, new RegExp(`building dep ${c.nonce}`));
    });

    it("takes realisations of content-addressed derivations", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const c = closures.bzip2!;
      const built = await nix(pusher, "nix-build", [c.expr, "-A", "ca", "--no-out-link"]);
      assert.equal(built.code, 0, built.stderr);
      const push = await nix(pusher, "nix", ["copy", "--to", cacheUrl(), "--file", c.expr, "ca"]);
      assert.equal(push.code, 0, push.stderr);
      // The realisation's id (the derivation's hash modulo) as the local store recorded it at build time.
      const info = await nix(pusher, "nix", ["realisation", "info", "--file", c.expr, "ca", "--json"]);
      assert.equal(info.code, 0, info.stderr);
      const [realisation] = JSON.parse(info.stdout) as { id: string; outPath: string }[];
      assert.match(realisation!.id, /^sha256:[0-9a-f]{64}!out$/);
      const doi = await fetch(`${cacheUrl()}/realisations/${realisation!.id}.doi`);
      assert.equal(doi.status, 200);
      assert.equal(
        ((await doi.json()) as { outPath: string }).outPath,
        realisation!.outPath.replace(/^\/nix\/store\//, ""),
      );
    });

    it("survives nix store sign against the cache without loosening anything", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const c = closures.zstd!;
      const before = await (await narinfo(c.top)).text();
      const keygen = await nix(pusher, "nix-store", [
        "--generate-binary-cache-key",
        "someone-1",
        `${pusher.dir}/sk`,
        `${pusher.dir}/pk`,
      ]);
      assert.equal(keygen.code, 0);
      const sign = await nix(pusher, "nix", [
        "store",
        "sign",
        "--store",
        cacheUrl(),
        "--key-file",
        `${pusher.dir}/sk`,
        c.top,
      ]);
      assert.equal(sign.code, 0, sign.stderr);
      assert.equal(await (await narinfo(c.top)).text(), before, "a signature by an unknown key is not added");
    });

    it("refuses lying narinfos, lying Content-Length, missing NARs and unauthorised writes, changing nothing", async (t) => {
      if (!s) return t.skip("backend unavailable");
      const fresh = await buildClosure(pusher);
      const known = Object.values(closures).flatMap((c) => [c.dep, c.mid, c.top]);
      const before = await served([...known, fresh.dep, fresh.top]);
      const objectsBefore = await s.objects();
      const real = parseNarInfo(await (await narinfo(closures.zstd!.dep)).text());
      const auth = (token: string) => ({
        authorization: `Basic ${Buffer.from(`nix:${token}`).toString("base64")}`,
      });
      const pushToken = await s.token(["push"]);
      const pullToken = await s.token(["pull"]);
      const put = (path: string, body: string | Buffer, token = pushToken) =>
        fetch(`${cacheUrl()}/${path}`, { method: "PUT", headers: auth(token), body });

      // A real NAR for the fresh dep, staged the way nix copy would (HEAD then PUT).
      const dump = await nix(pusher, "nix", [
        "copy",
        "--to",
        `file://${pusher.dir}/filecache?compression=xz`,
        fresh.dep,
      ]);
      assert.equal(dump.code, 0, dump.stderr);
      const fileInfo = parseNarInfo(
        await (await import("node:fs/promises")).readFile(
          `${pusher.dir}/filecache/${fresh.dep.slice(11, 43)}.narinfo`,
          "utf8",
        ),
      );
      const narBytes = await (await import("node:fs/promises")).readFile(
        `${pusher.dir}/filecache/${fileInfo.url}`,
      );
      const narinfoPath = `${fresh.dep.slice(11, 43)}.narinfo`;
      const lie = (change: Partial<NarInfo>) => formatNarInfo({ ...fileInfo, sigs: [], ...change });

      assert.equal((await put(fileInfo.url, narBytes, pullToken)).status, 403, "pull-only token");
      assert.equal(
        (await fetch(`${cacheUrl()}/${fileInfo.url}`, { method: "PUT", body: narBytes })).status,
        401,
        "no token",
      );
      assert.equal((await put(narinfoPath, lie({}))).status, 404, "narinfo for a NAR never uploaded");
      const staged = await put(fileInfo.url, narBytes);
      assert.equal(staged.status, 200, await staged.text());
      const cases: [string, string, RegExp][] = [
        ["wrong NarHash", lie({ narHash: real.narHash }), /NarHash mismatch/],
        ["wrong NarSize", lie({ narSize: fileInfo.narSize + 8 }), /NarSize mismatch/],
        ["wrong FileSize", lie({ fileSize: (fileInfo.fileSize ?? 0) + 1 }), /FileSize mismatch/],
        ["wrong FileHash", lie({ fileHash: real.fileHash! }), /FileHash mismatch/],
        ["wrong Compression", lie({ compression: "bzip2" }), /Compression mismatch/],
        ["missing references", lie({ references: [fresh.mid.slice(11)] }), /references not in cache/],
        ["different store path", lie({ storePath: fresh.top }), /PUT at/],
      ];
      for (const [name, text, message] of cases) {
        const res = await put(narinfoPath, text);
        const body = await res.text();
        assert.ok(res.status >= 400 && res.status < 500, `${name}: ${res.status} ${body}`);
        assert.match(body, message, name);
      }
      assert.equal((await put(narinfoPath, lie({}), pullToken)).status, 403);
      assert.equal(
        (await put(`${real.storePath.slice(11, 43)}.narinfo`, lie({ storePath: real.storePath }))).status,
        409,
      );
      const garbage = await put(`nar/${fileInfo.fileHash!.slice(7)}.nar.xz`, Buffer.from("not xz"));
      assert.equal(garbage.status, 400);

      // A Content-Length that promises more than is sent: the server never commits the partial NAR.
      await new Promise<void>((resolve) => {
        const url = new URL(`${cacheUrl()}/${fileInfo.url}`);
        const socket = connect(Number(url.port), url.hostname, () => {
          socket.write(
            `PUT ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\n${Object.entries(auth(pushToken))
              .map(([k, v]) => `${k}: ${v}`)
              .join("\r\n")}\r\nContent-Length: ${narBytes.length + 1000}\r\n\r\n`,
          );
          socket.write(narBytes);
          setTimeout(() => socket.destroy(), 300);
        });
        socket.on("close", () => resolve());
        socket.on("error", () => resolve());
      });

      assert.deepEqual(
        await served([...known, fresh.dep, fresh.top]),
        before,
        "the cache serves what it served",
      );
      for (let i = 0; i < 50 && (await s.pending()).length > 1; i++)
        await new Promise((r) => setTimeout(r, 100));
      // What is left is the one staged NAR, waiting for an honest narinfo (or for cleanup).
      assert.equal((await s.pending()).length, 1);
      assert.equal((await s.objects()).length, objectsBefore.length + 1);
      // The honest narinfo still goes through afterwards.
      const honest = await put(narinfoPath, lie({}));
      assert.equal(honest.status, 200, await honest.text());
      assert.deepEqual(await s.pending(), []);
    });
  });
}
