// docker-compose.yml and the Dockerfile, without a container engine (none runs here): Debian's
// `docker-compose config` must accept the file (and reject a broken one, so the check checks something);
// the nixstash service's environment must parse with server/config.ts and name only documented variables;
// and the same configuration — PostgreSQL + S3, redirects off, the same timeouts — must run: the server
// process is started with the compose environment, only the service addresses pointed at the test's
// PostgreSQL and Ceph RGW, and serves a push. The Dockerfile must copy every directory the server imports.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { parseConfig } from "../../server/config.ts";
import { freshPostgres, freshS3 } from "../support/harness.ts";
import { fakeStorePath, hashOf, infoFor, narOf } from "../support/nar.ts";
import { startEnvironment, startNodeOptions, startServerProcess } from "../support/server-process.ts";
import { testTmp } from "../support/services.ts";

const execFileP = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");
const composeFile = join(root, "docker-compose.yml");

async function composeConfig(file: string, env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await execFileP("docker-compose", ["-f", file, "config"], {
      cwd: root,
      env: { PATH: process.env.PATH ?? "", HOME: testTmp(), ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** The `environment:` map of one service in `docker-compose config`'s normalised output. */
function serviceEnvironment(normalised: string, service: string): Record<string, string> {
  const lines = normalised.split("\n");
  const start = lines.indexOf(`  ${service}:`);
  assert.ok(start >= 0, `service ${service} in the normalised config`);
  const env: Record<string, string> = {};
  let inEnv = false;
  for (const line of lines.slice(start + 1)) {
    if (/^ {2}\S/.test(line) || /^\S/.test(line)) break; // next service or section
    if (line === "    environment:") {
      inEnv = true;
      continue;
    }
    if (inEnv) {
      const m = /^ {6}([A-Z0-9_]+): ?(.*)$/.exec(line);
      if (!m) {
        inEnv = false;
        continue;
      }
      let value = m[2]!;
      if (value.startsWith("'")) value = value.slice(1, -1).replace(/''/g, "'");
      else if (value.startsWith('"')) value = JSON.parse(value) as string;
      env[m[1]!] = value;
    }
  }
  return env;
}

describe("docker-compose.yml and Dockerfile", () => {
  it("passes docker-compose config, which fails on a broken file", async () => {
    const ok = await composeConfig(composeFile);
    assert.equal(ok.code, 0, ok.stderr);
    for (const service of ["nixstash", "postgres", "minio", "minio-init"])
      assert.match(ok.stdout, new RegExp(`^ {2}${service}:$`, "m"));
    const broken = join(mkdtempSync(join(testTmp(), "compose-")), "docker-compose.yml");
    writeFileSync(
      broken,
      readFileSync(composeFile, "utf8").replace(
        "condition: service_healthy",
        "condition: when_it_feels_like_it",
      ),
    );
    const bad = await composeConfig(broken);
    assert.notEqual(bad.code, 0, "a bad depends_on condition is rejected");
  });

  it("gives every service a health check or a completion condition, and data a named volume", async () => {
    const { stdout } = await composeConfig(composeFile);
    for (const service of ["nixstash", "postgres", "minio"]) {
      const block = stdout.split(`\n  ${service}:\n`)[1]!.split(/\n {2}\S/)[0]!;
      assert.match(block, /\n {4}healthcheck:\n/, `${service} has a health check`);
      assert.match(
        block,
        /\n {4}volumes:\n {4}- [a-z-]+-data:/,
        `${service} keeps its data in a named volume`,
      );
    }
    assert.match(stdout, /minio-init:\n\s+condition: service_completed_successfully/);
    assert.match(stdout, /mc mb --ignore-existing local\/nixstash/);
  });

  it("configures the server with documented variables that config.ts accepts", async () => {
    const { stdout } = await composeConfig(composeFile, { NIXSTASH_SECRET: "x".repeat(48) });
    const env = serviceEnvironment(stdout, "nixstash");
    const readme = readFileSync(join(root, "README.md"), "utf8");
    for (const name of Object.keys(env))
      assert.ok(readme.includes(`\`${name}\``), `${name} is in the README table`);
    const config = parseConfig(env);
    assert.equal(config.storage.kind, "s3");
    assert.match(config.databaseUrl, /^postgres:\/\/nixstash:[^@]+@postgres:5432\/nixstash$/);
    assert.equal(config.listen.host, "0.0.0.0");
    assert.equal(config.storage.kind === "s3" && config.storage.redirect, false);
    assert.equal(
      config.storage.kind === "s3" && config.storage.diskCache?.root,
      "/var/lib/nixstash/s3-cache",
    );
    assert.equal(config.secret, "x".repeat(48));
    // Without NIXSTASH_SECRET the empty value counts as unset (the server generates one in its volume).
    const unset = serviceEnvironment((await composeConfig(composeFile)).stdout, "nixstash");
    assert.equal(parseConfig(unset).secret, undefined);
  });

  it("runs the compose configuration against real PostgreSQL and S3, addresses swapped", async (t) => {
    const pg = await freshPostgres();
    const s3 = await freshS3();
    if (!pg || !s3) return t.skip("backend unavailable");
    const { stdout } = await composeConfig(composeFile);
    const env = serviceEnvironment(stdout, "nixstash");
    const dataDir = mkdtempSync(join(testTmp(), "compose-data-"));
    const server = await startServerProcess({
      ...env,
      // Where the containers would find each other, the test's services are instead:
      NIXSTASH_LISTEN: "127.0.0.1:0",
      NIXSTASH_PUBLIC_URL: "",
      NIXSTASH_DATA_DIR: dataDir,
      NIXSTASH_S3_DISK_CACHE: join(dataDir, "s3-cache"),
      NIXSTASH_DATABASE_URL: pg.url,
      NIXSTASH_STORAGE: s3.env.NIXSTASH_STORAGE!,
      NIXSTASH_S3_ENDPOINT: s3.env.NIXSTASH_S3_ENDPOINT!,
      NIXSTASH_S3_ACCESS_KEY: s3.env.NIXSTASH_S3_ACCESS_KEY!,
      NIXSTASH_S3_SECRET_KEY: s3.env.NIXSTASH_S3_SECRET_KEY!,
      NIXSTASH_S3_REGION: s3.env.NIXSTASH_S3_REGION!,
      NIXSTASH_LOG_LEVEL: "warn",
    });
    try {
      const ready = await fetch(`${server.url}/readyz`);
      assert.equal(ready.status, 200, await ready.text());
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /nixstash_build_info\{version="[^"]+",database="postgres",storage="s3"\} 1/);

      const path = fakeStorePath("compose");
      const nar = narOf({ dir: { hello: "from compose\n" } });
      const put = await fetch(`${server.url}/api/v1/caches/main/paths/${hashOf(path)}`, {
        method: "PUT",
        headers: {
          authorization: `Bearer ${server.adminToken}`,
          "x-nixstash-path-info": JSON.stringify(infoFor(path, nar)),
        },
        body: nar,
      });
      assert.equal(put.status, 201, await put.text());
      const narinfo = await (await fetch(`${server.url}/main/${hashOf(path)}.narinfo`)).text();
      const nar2 = await fetch(`${server.url}/main/${/^URL: (.*)$/m.exec(narinfo)![1]}`, {
        redirect: "manual",
      });
      assert.equal(nar2.status, 200, "NIXSTASH_S3_REDIRECT=false: the server streams the NAR itself");
    } finally {
      await server.stop();
      await pg.drop();
    }
  });

  it("builds an image that holds every directory the server imports", () => {
    const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
    const copied = [...dockerfile.matchAll(/^COPY (?!--from)(\S+) /gm)].map((m) => m[1]!);
    for (const source of copied) assert.ok(existsSync(join(root, source)), `COPY ${source} exists`);
    // The image runs what `npm start` runs: the bundle `npm run build` writes, built in the first stage.
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
      scripts: Record<string, string>;
    };
    // The bundle of server/main.ts: --outfile, or main<out-extension> in --outdir (several entry points).
    const build = pkg.scripts["build:server"] ?? "";
    const outdir = /--outdir=(\S+)/.exec(build)?.[1];
    const extension = /--out-extension:\.js=(\S+)/.exec(build)?.[1] ?? ".js";
    const outfile =
      /--outfile=(\S+)/.exec(build)?.[1] ??
      (outdir && build.includes("server/main.ts") ? `${outdir}/main${extension}` : undefined);
    assert.ok(
      outfile,
      "package.json has a build:server script with an --outfile or an --outdir for server/main.ts",
    );
    // The image holds no hook/ (the builder side): it builds the server alone, as npm start does.
    assert.match(dockerfile, /^RUN npm run build:server/m);
    assert.match(pkg.scripts.start ?? "", /^npm run build:server\b/);
    assert.match(
      pkg.scripts.build ?? "",
      /npm run build:server\b/,
      "npm run build includes the server bundle",
    );
    assert.ok(
      dockerfile.includes(`COPY --from=deps /opt/nixstash/${dirname(outfile)} ./${dirname(outfile)}`),
    );
    // Our addons (server/native) are built by the install script that npm ci runs in the first stage, which
    // needs their sources then, and the runtime stage takes every built module from there.
    assert.match(pkg.scripts.install ?? "", /node-gyp rebuild --directory=server\/native\b/);
    assert.match(dockerfile, /^COPY server\/native \.\/server\/native\nRUN npm ci/m);
    const gyp = JSON.parse(readFileSync(join(root, "server/native/binding.gyp"), "utf8")) as {
      targets: { target_name: string }[];
    };
    const addonCopy = /^COPY --from=deps (.+) \.\/server\/native\/build\/Release\/$/m.exec(dockerfile);
    assert.ok(addonCopy, "the runtime stage copies the built addons");
    assert.deepEqual(
      addonCopy[1]!.split(" ").sort(),
      gyp.targets.map((t) => `/opt/nixstash/server/native/build/Release/${t.target_name}.node`).sort(),
      "every addon binding.gyp builds, and nothing else",
    );
    const cmd = /^CMD (\["node",.*\])$/m.exec(dockerfile);
    assert.ok(cmd, "the Dockerfile has a CMD that runs node");
    const argv = JSON.parse(cmd[1]!) as string[];
    assert.equal(argv.at(-1), outfile, "CMD runs the bundle");
    assert.deepEqual(argv.slice(1, -1), startNodeOptions(), "CMD gives node the options npm start gives it");
    assert.equal(startEnvironment().MALLOC_ARENA_MAX, "2", "npm start caps glibc's malloc arenas (README)");
    for (const [name, value] of Object.entries(startEnvironment()))
      assert.match(
        dockerfile,
        new RegExp(`^\\s*(ENV )?${name}=${value}\\b`, "m"),
        `the image sets ${name} as npm start does`,
      );
    assert.ok(pkg.scripts.start?.includes(outfile), "npm start runs the same bundle");
    const copiedDirs = new Set(copied.filter((c) => statSync(join(root, c)).isDirectory()));
    const walk = (dir: string): string[] =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
      );
    for (const file of walk(join(root, "server")).filter((f) => !f.endsWith(".test.ts"))) {
      for (const m of readFileSync(file, "utf8").matchAll(/from "(\.{1,2}\/[^"]+)"/g)) {
        const top = relative(root, resolve(file, "..", m[1]!)).split("/")[0]!;
        assert.ok(copiedDirs.has(top), `${relative(root, file)} imports ${m[1]}, outside the image`);
      }
    }
    assert.match(dockerfile, /^HEALTHCHECK .*\n.*\/readyz/m);
    assert.match(dockerfile, /^STOPSIGNAL SIGTERM$/m);
  });
});
