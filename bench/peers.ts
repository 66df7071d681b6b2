// The peers a benchmark run compares, all on 127.0.0.1 and all serving the same workload:
// - nginx serving the directory `nix copy --to file://…?compression=zstd` wrote (the yardstick);
// - nixstash on SQLite + a local directory;
// - nixstash on PostgreSQL + Ceph RGW (NAR downloads answered with a 302 to a presigned URL, the default);
// - Ceph RGW serving the same static cache directly from a public-read bucket (the S3 row);
// - a bare node:http server serving the same files (bench/node-static.ts), a Node peer for measures 1-4;
// - narinfos and small NARs from memory, large NARs by sendfile, over raw sockets (bench/node-raw.ts): the floor
//   of one Node process, measures 1-3.
// Each is a real separate process (nixstash exactly as `npm start` runs it), started and stopped here.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { Client, type ClientOptions } from "minio";
import { freshPostgres, freshS3 } from "../test/support/harness.ts";
import { type ServerProcess, startServerProcess } from "../test/support/server-process.ts";

const execFileP = promisify(execFile);
export const ROOT = join(import.meta.dirname, "..");
/**
 * The builder-side command as `npm run build` bundled it when the run began (bench/run.sh builds first), run
 * by node directly: `[NIXSTASH_CLI, ...NIXSTASH_CLI_ARGS, command, ...]`. Not hook/bin/nixstash, which runs
 * the TypeScript sources through tsx whenever one is newer than the bundle: an edit made in the checkout
 * while the benchmark ran would have been measured, compiled on the fly (it was, once: measure 6 took 2 CPU
 * seconds more).
 */
export const NIXSTASH_CLI = process.execPath;
export const NIXSTASH_CLI_ARGS = ["--enable-source-maps", join(ROOT, "hook/cli.mjs")];

export interface Peer {
  name: string;
  /** Base URL of the cache (narinfo at `${base}/<hash>.narinfo`). */
  base: string;
  /** The key a Nix client must trust to substitute from it. */
  publicKey: string;
  /** The server's process on this machine (with its worker children, for nginx): memory and CPU are read
   * from /proc. Absent for Ceph RGW, which serves other peers too. */
  pid?: number;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

async function waitForHttp(url: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${url} did not answer in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const NGINX_WORKERS = "auto";

/** nginx in the foreground with its own config, serving `root` as static files. */
export async function startNginx(root: string, dir: string): Promise<Peer> {
  mkdirSync(join(dir, "logs"), { recursive: true });
  const port = await freePort();
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `daemon off;
${process.getuid?.() === 0 ? "user root root; # workers must read the private (0700) scratch dir\n" : ""}worker_processes ${NGINX_WORKERS};
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp-body;
  proxy_temp_path ${dir}/tmp-proxy;
  fastcgi_temp_path ${dir}/tmp-fastcgi;
  uwsgi_temp_path ${dir}/tmp-uwsgi;
  scgi_temp_path ${dir}/tmp-scgi;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }
  server {
    listen 127.0.0.1:${port};
    root ${root};
  }
}
`,
  );
  const child = spawn("nginx", ["-p", dir, "-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(`${base}/nix-cache-info`);
  } catch (error) {
    await stopChild(child);
    throw new Error(`nginx did not start: ${(error as Error).message}\n${stderr}`);
  }
  return {
    name: "nginx (static files)",
    base,
    publicKey: "",
    pid: child.pid!,
    stop: () => stopChild(child, "SIGQUIT"),
  };
}

/** A Node server of bench/ (`node bench/SCRIPT ROOT PORT`) serving the static cache at root. */
async function startNodePeer(script: string, name: string, root: string): Promise<Peer> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(ROOT, "bench", script), root, String(port)],
    {
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  const base = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(`${base}/nix-cache-info`);
  } catch (error) {
    await stopChild(child);
    throw new Error(`${script} did not start: ${(error as Error).message}`);
  }
  return { name, base, publicKey: "", pid: child.pid!, stop: () => stopChild(child) };
}

/** bench/node-static.ts: a bare node:http static file server, a file read per request (measures 1-4). */
export const startNodeStatic = (root: string) => startNodePeer("node-static.ts", NODE_FLOOR, root);
export const NODE_FLOOR = "node:http (static files)";

/** bench/node-raw.ts: the floor of one Node process over raw sockets (measures 1-3; see its header). */
export const startNodeRaw = (root: string) => startNodePeer("node-raw.ts", NODE_RAW, root);
export const NODE_RAW = "node raw socket (floor)";

export interface NixstashPeer extends Peer {
  server: ServerProcess;
  dataDir: string;
  token: string;
  /** Stops the server and starts it again on the same backends, with extra environment (e.g. NODE_OPTIONS). */
  restart(extraEnv: Record<string, string>): Promise<NixstashPeer>;
  cleanupBackends(): Promise<void>;
}

export type Stack = "sqlite+local" | "postgres+s3";

/** A nixstash server process on a fresh, empty stack. */
export async function startNixstash(
  stack: Stack,
  tmp: string,
  extraEnv: Record<string, string> = {},
): Promise<NixstashPeer> {
  const dataDir = mkdtempSync(join(tmp, `nixstash-${stack.replace("+", "-")}-`));
  const env: Record<string, string> = { NIXSTASH_DATA_DIR: dataDir, NIXSTASH_LOG_LEVEL: "warn", ...extraEnv };
  const cleanups: (() => Promise<void>)[] = [];
  if (stack === "postgres+s3") {
    const pg = await freshPostgres();
    const s3 = await freshS3();
    if (!pg || !s3) throw new Error("PostgreSQL and Ceph RGW are needed for the postgres+s3 stack");
    env.NIXSTASH_DATABASE_URL = pg.url;
    Object.assign(env, s3.env);
    // As production would run it: copies of the NARs read from the bucket on the server's own disk.
    env.NIXSTASH_S3_DISK_CACHE = join(dataDir, "s3-disk-cache");
    cleanups.push(async () => {
      for await (const o of s3.storage.list("")) await s3.storage.delete(o.key);
      await bucketClient().removeBucket(s3.bucket);
    });
    cleanups.push(pg.drop);
  }
  const server = await startServerProcess({ ...env, ...extraEnv });
  const cleanupBackends = async () => {
    for (const f of cleanups) await f().catch(() => {});
    rmSync(dataDir, { recursive: true, force: true });
  };
  const peerOf = (server: ServerProcess): NixstashPeer => ({
    name: `nixstash ${stack}`,
    base: `${server.url}/main`,
    publicKey: server.publicKey,
    pid: server.child.pid!,
    server,
    dataDir,
    token: server.adminToken,
    stop: () => server.stop(),
    restart: async (more) => {
      await server.stop();
      const port = new URL(server.url).port;
      return peerOf(await startServerProcess({ ...env, NIXSTASH_LISTEN: `127.0.0.1:${port}`, ...more }));
    },
    cleanupBackends,
  });
  return peerOf(server);
}

/** `nixstash push` of a closure (the builder-side command, as a user runs it). */
export async function nixstashPush(peer: NixstashPeer, paths: string[], jobs = 4): Promise<void> {
  const url = peer.server.url;
  await execFileP(
    NIXSTASH_CLI,
    [
      ...NIXSTASH_CLI_ARGS,
      "push",
      "--server",
      url,
      "--cache",
      "main",
      "--token",
      peer.token,
      "--jobs",
      String(jobs),
      ...paths,
    ],
    { maxBuffer: 1 << 26, env: { ...process.env, NIXSTASH_LOG_LEVEL: "warn" } },
  );
}

export function bucketClient(): Client {
  return new Client(bucketOptions());
}

/** How the bench reaches the test RGW (also handed, as JSON, to bench/relay-floor.mjs). */
export function bucketOptions(): ClientOptions {
  const endpoint = new URL(process.env.NIXSTASH_TEST_S3_ENDPOINT ?? "http://127.0.0.1:7480");
  return {
    endPoint: endpoint.hostname,
    port: Number(endpoint.port || 80),
    useSSL: endpoint.protocol === "https:",
    accessKey: process.env.NIXSTASH_TEST_S3_ACCESS_KEY ?? "",
    secretKey: process.env.NIXSTASH_TEST_S3_SECRET_KEY ?? "",
    region: process.env.NIXSTASH_TEST_S3_REGION ?? "us-east-1",
    pathStyle: true,
  };
}

export function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath ?? e.path, e.name));
}

/** A bucket of its own on the test RGW, named `<prefix>-<random>`. */
export async function freshBucket(client: Client, prefix: string): Promise<string> {
  const bucket = `${prefix}-${randomBytes(4).toString("hex")}`;
  await client.makeBucket(bucket, process.env.NIXSTASH_TEST_S3_REGION ?? "us-east-1");
  return bucket;
}

/** Undoes putFiles and freshBucket: the files' objects, 500 a request, then the bucket. */
export async function removeFilesAndBucket(client: Client, bucket: string, dir: string, files: string[]) {
  const names = files.map((f) => relative(dir, f));
  for (let i = 0; i < names.length; i += 500) await client.removeObjects(bucket, names.slice(i, i + 500));
  await client.removeBucket(bucket).catch(() => {});
}

/** PUTs files into bucket (named by their path under dir), `atOnce` at a time. */
export async function putFiles(client: Client, bucket: string, dir: string, files: string[], atOnce: number) {
  let next = 0;
  await Promise.all(
    Array.from({ length: atOnce }, async () => {
      while (next < files.length) {
        const file = files[next++]!;
        await client.fPutObject(bucket, relative(dir, file), file, {});
      }
    }),
  );
}

/** The name of the peer startRgwStatic starts (its rows in the table). */
export const RGW_STATIC = "Ceph RGW (static files)";

/** Ceph RGW serving the static cache directly: a public-read bucket holding the file:// cache's files. */
export async function startRgwStatic(cacheDir: string): Promise<Peer> {
  const client = bucketClient();
  const bucket = await freshBucket(client, "bench-static");
  await client.setBucketPolicy(
    bucket,
    JSON.stringify({
      Version: "2012-10-17",
      Statement: [
        {
          Effect: "Allow",
          Principal: { AWS: ["*"] },
          Action: ["s3:GetObject"],
          Resource: [`arn:aws:s3:::${bucket}/*`],
        },
      ],
    }),
  );
  const files = filesUnder(cacheDir);
  await putFiles(client, bucket, cacheDir, files, 8);
  const endpoint = (process.env.NIXSTASH_TEST_S3_ENDPOINT ?? "").replace(/\/$/, "");
  return {
    name: RGW_STATIC,
    base: `${endpoint}/${bucket}`,
    publicKey: "",
    stop: () => removeFilesAndBucket(client, bucket, cacheDir, files),
  };
}
