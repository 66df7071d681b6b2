// Graceful shutdown of the real server process on both stacks. On SIGTERM the server stops accepting
// connections at once, lets an upload that is still streaming in and a NAR that is still streaming out
// finish (up to NIXSTASH_SHUTDOWN_TIMEOUT), then exits 0; an upload that outlives the deadline is cut, and
// leaves no path behind and no stored object that is not tracked for clean-up.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { type IncomingMessage, request } from "node:http";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { formatHash } from "../../nix/index.ts";
import { openDatabase } from "../../server/db/database.ts";
import { createRepo } from "../../server/db/repo.ts";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";
import { type RunningStack, STACKS, startStack } from "../support/stack.ts";

const exited = (s: RunningStack) =>
  new Promise<number | null>((resolve) => {
    if (s.server.child.exitCode !== null) return resolve(s.server.child.exitCode);
    s.server.child.once("exit", (code) => resolve(code));
  });

/** Starts a chunked upload and sends the first `head` bytes; the caller sends the rest (or not). */
function startUpload(s: RunningStack, token: string, storePath: string, nar: Buffer, head: number) {
  const url = new URL(`${s.server.url}/api/v1/caches/main/paths/${hashOf(storePath)}`);
  const req = request(url, {
    method: "PUT",
    agent: false,
    headers: {
      authorization: `Bearer ${token}`,
      "x-nixstash-path-info": JSON.stringify(infoFor(storePath, nar)),
      "content-type": "application/x-nix-nar",
    },
  });
  const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.once("response", (res: IncomingMessage) => {
      let body = "";
      res.on("data", (d: Buffer) => {
        body += d.toString();
      });
      res.once("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.once("error", reject);
    });
    req.once("error", reject);
  });
  response.catch(() => {});
  req.write(nar.subarray(0, head));
  return { req, response, rest: () => req.end(nar.subarray(head)) };
}

async function refusesConnections(url: string): Promise<boolean> {
  try {
    await fetch(`${url}/healthz`);
    return false;
  } catch (error) {
    return /ECONNREFUSED/.test(String((error as Error & { cause?: Error }).cause?.message ?? error));
  }
}

async function pathIsCommitted(s: RunningStack, storePath: string): Promise<boolean> {
  const db = await openDatabase(s.databaseUrl);
  try {
    const repo = createRepo(db);
    const cache = await repo.cacheByName("main");
    return (await repo.path(cache!.id, hashOf(storePath))) !== undefined;
  } finally {
    await db.close();
  }
}

for (const stack of STACKS) {
  describe(`graceful shutdown on SIGTERM (${stack})`, () => {
    it("finishes the upload and the download in flight, refuses new connections, exits 0", async (t) => {
      const s = await startStack(stack, { NIXSTASH_SHUTDOWN_TIMEOUT: "60", NIXSTASH_S3_REDIRECT: "false" });
      if (!s) return t.skip("backend unavailable");
      try {
        const token = await s.token(["pull", "push"]);
        // A NAR big enough that the download cannot sit in socket buffers while the client does not read.
        const bigPath = fakeStorePath("shutdown-download");
        const bigNar = narOf({ dir: { blob: randomBytes(48 * 1024 * 1024) } });
        const put = startUpload(s, token, bigPath, bigNar, 0);
        put.rest();
        assert.equal((await put.response).status, 201, "pushed the NAR to download");
        const narinfo = await (await fetch(`${s.server.url}/main/${hashOf(bigPath)}.narinfo`)).text();
        const narUrl = `${s.server.url}/main/${/^URL: (.*)$/m.exec(narinfo)![1]}`;
        const fileSize = Number(/^FileSize: (\d+)$/m.exec(narinfo)![1]);
        const fileHash = /^FileHash: sha256:(.*)$/m.exec(narinfo)![1]!;

        // The download: response headers arrive, then the client stops reading.
        const download = await new Promise<IncomingMessage>((resolve, reject) =>
          request(narUrl, { agent: false }, resolve).once("error", reject).end(),
        );
        assert.equal(download.statusCode, 200);
        download.pause();

        // The upload: half of its body sent.
        const path = fakeStorePath("shutdown-upload");
        const nar = narOf({ dir: { data: randomBytes(2 * 1024 * 1024) } });
        const upload = startUpload(s, token, path, nar, nar.length / 2);
        await sleep(300);

        const exit = exited(s);
        s.server.child.kill("SIGTERM");
        await sleep(300);
        assert.equal(await refusesConnections(s.server.url), true, "no new connections once draining");
        assert.equal(s.server.child.exitCode, null, "still running while requests are in flight");

        upload.rest();
        const answer = await upload.response;
        assert.equal(answer.status, 201, answer.body);
        const hash = createHash("sha256");
        let received = 0;
        download.on("data", (chunk: Buffer) => {
          hash.update(chunk);
          received += chunk.length;
        });
        download.resume();
        await new Promise((resolve) => download.once("end", resolve));
        assert.equal(received, fileSize, "the whole NAR arrived");
        assert.equal(formatHash(hash.digest()), `sha256:${fileHash}`, "and intact");

        assert.equal(await exit, 0);
        assert.equal(await pathIsCommitted(s, path), true, "the finished upload is committed");
      } finally {
        await s.stop();
      }
    });

    it("cuts an upload that outlives NIXSTASH_SHUTDOWN_TIMEOUT: nothing half-committed, exit 0", async (t) => {
      const s = await startStack(stack, { NIXSTASH_SHUTDOWN_TIMEOUT: "1" });
      if (!s) return t.skip("backend unavailable");
      try {
        const token = await s.token(["pull", "push"]);
        const before = await s.objects();
        const path = fakeStorePath("shutdown-cut");
        const nar = narOf({ dir: { data: randomBytes(1024 * 1024) } });
        const upload = startUpload(s, token, path, nar, nar.length / 2);
        await sleep(300);
        const exit = exited(s);
        const killedAt = Date.now();
        s.server.child.kill("SIGTERM");
        await assert.rejects(upload.response, "the upload is cut");
        assert.equal(await exit, 0);
        const took = Date.now() - killedAt;
        assert.ok(took >= 900 && took < 15_000, `exited ${took} ms after SIGTERM`);
        assert.match(s.server.stdout, /shutdown timeout: cutting the requests still in flight/);

        assert.equal(await pathIsCommitted(s, path), false, "no path from a cut upload");
        const pending = new Set(await s.pending());
        const leftover = (await s.objects()).filter((k) => !before.includes(k) && !pending.has(k));
        assert.deepEqual(leftover, [], "every new object is tracked for clean-up (or gone)");
      } finally {
        await s.stop();
      }
    });
  });
}
