// The daemon's durable queue on a real SQLite file: transitions, due times, crash recovery (reopening the
// file as a restarted daemon would), the one-daemon claim, and the backoff schedule.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { backoffDelay } from "./backoff.ts";
import { openQueue, QueueLockedError } from "./queue.ts";

const A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
const B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
const C = "/nix/store/cccccccccccccccccccccccccccccccc-c";

const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

function fresh() {
  const dir = mkdtempSync(join(tmpdir(), "nixstash-queue-"));
  made.push(dir);
  const file = join(dir, "state", "queue.db");
  let now = 1_000_000;
  const clock = () => now;
  return {
    file,
    queue: openQueue(file, { clock }),
    reopen: () => openQueue(file, { clock }),
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
  };
}

describe("queue", () => {
  it("queues roots once and hands them out oldest first", () => {
    const { queue, advance } = fresh();
    assert.equal(queue.enqueue([B]), 1);
    advance(10);
    assert.equal(queue.enqueue([A, B]), 1, "B is already waiting: unchanged");
    assert.deepEqual(queue.due(10), [B, A]);
    assert.deepEqual(queue.due(1), [B]);
    assert.deepEqual(queue.due(10, new Set([B])), [A]);
    assert.equal(queue.get(A)?.state, "waiting");
    assert.equal(queue.get(A)?.root, true);
  });

  it("marks done and failed, and queues them again when asked again", () => {
    const { queue } = fresh();
    queue.enqueue([A, B]);
    queue.markUploading(A, 100);
    assert.equal(queue.get(A)?.state, "uploading");
    assert.deepEqual(queue.due(10), [B], "an uploading root is not due");
    queue.markDone(A, "stored");
    queue.markFailed(B, "hash_mismatch", "NarHash mismatch for B");
    assert.deepEqual(queue.due(10), []);
    const status = queue.status();
    assert.deepEqual(status.counts, { waiting: 0, uploading: 0, done: 1, failed: 1 });
    assert.equal(status.failed[0]?.reason, "NarHash mismatch for B");
    assert.equal(status.failed[0]?.outcome, "hash_mismatch");
    assert.equal(queue.get(A)?.narSize, 100);

    assert.equal(queue.enqueue([A, B]), 2, "a rebuild asks again");
    assert.deepEqual(queue.due(10).sort(), [A, B]);
    assert.equal(queue.get(B)?.reason, null);
    assert.equal(queue.get(B)?.attempts, 0);
  });

  it("keeps closure members apart from roots", () => {
    const { queue } = fresh();
    queue.enqueue([A]);
    queue.markUploading(C, 5);
    assert.equal(queue.get(C)?.root, false);
    queue.releaseUploading(C, "server went away");
    assert.equal(queue.get(C), undefined, "an interrupted member is forgotten; its root drives the retry");
    queue.markUploading(C, 5);
    queue.markDone(C, "stored");
    assert.equal(queue.get(C)?.state, "done");
    assert.deepEqual(queue.due(10), [A], "members are never handed out");
    queue.enqueue([C]);
    assert.equal(queue.get(C)?.root, true, "asking for a member makes it a root");
  });

  it("reschedules with a due time and counts attempts", () => {
    const { queue, advance, now } = fresh();
    queue.enqueue([A, B]);
    queue.reschedule(A, now() + 5000, "cannot reach http://127.0.0.1:1");
    assert.deepEqual(queue.due(10), [B]);
    assert.equal(queue.nextDueAt(new Set([B])), now() + 5000);
    assert.equal(queue.get(A)?.attempts, 1);
    assert.equal(queue.get(A)?.reason, "cannot reach http://127.0.0.1:1");
    advance(5000);
    assert.deepEqual(queue.due(10), [B, A], "never-tried first, then by due time");
  });

  it("after a crash, what was uploading is waiting again (roots) or forgotten (members)", () => {
    const { queue, reopen } = fresh();
    queue.enqueue([A, B]);
    queue.markUploading(A, 1);
    queue.markUploading(C, 1);
    queue.markDone(B, "stored");
    // No close, no unlock: the process is gone. A new one opens the same file.
    const after = reopen();
    assert.equal(after.recover(), 2);
    assert.equal(after.get(A)?.state, "waiting");
    assert.equal(after.get(C), undefined);
    assert.equal(after.get(B)?.state, "done", "done stays done: never uploaded twice");
    assert.deepEqual(after.due(10), [A]);
    after.close();
    queue.close();
  });

  it("retries or forgets failures on request, prunes old done entries", () => {
    const { queue, advance, now } = fresh();
    queue.enqueue([A, B]);
    queue.markFailed(A, "invalid_nar", "bad");
    queue.markDone(B, "stored");
    advance(1000);
    queue.markDone(C, "stored");
    assert.equal(queue.prune(now() - 500), 1);
    assert.equal(queue.get(B), undefined);
    assert.equal(queue.get(C)?.state, "done");
    assert.equal(queue.retryFailed(), 1);
    assert.deepEqual(queue.due(10), [A]);
    queue.markFailed(A, "invalid_nar", "bad");
    assert.equal(queue.forgetFailed(), 1);
    assert.equal(queue.get(A), undefined);
  });

  it("admits one daemon at a time, and takes over from a dead one", () => {
    const { queue, reopen } = fresh();
    queue.lock(111, () => true);
    const other = reopen();
    assert.throws(() => other.lock(222, () => true), QueueLockedError);
    other.lock(222, (pid) => pid !== 111);
    assert.equal(other.status().daemon?.pid, 222);
    other.unlock(111);
    assert.equal(other.status().daemon?.pid, 222, "only the owner releases its claim");
    other.unlock(222);
    assert.equal(other.status().daemon, undefined);
    other.close();
    queue.close();
  });
});

describe("backoff", () => {
  it("doubles from the base up to the cap, with jitter in the upper half", () => {
    const opts = { baseMs: 1000, maxMs: 60_000 };
    assert.equal(backoffDelay(1, { ...opts, random: () => 0 }), 500);
    assert.equal(backoffDelay(1, { ...opts, random: () => 1 }), 1000);
    assert.equal(backoffDelay(4, { ...opts, random: () => 1 }), 8000);
    assert.equal(backoffDelay(4, { ...opts, random: () => 0 }), 4000);
    assert.equal(backoffDelay(30, { ...opts, random: () => 1 }), 60_000);
    assert.equal(backoffDelay(1000, { ...opts, random: () => 0.5 }), 45_000);
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, opts)));
    assert.ok(spread.size > 10, "jitter spreads retries");
    for (const d of spread) assert.ok(d >= 2000 && d <= 4000);
  });
});
