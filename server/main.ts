// `npm start`: the server on the configuration in the environment (see config.ts for every variable).
import process from "node:process";
import { ConfigError, parseConfig } from "./config.ts";
import { startServer } from "./start.ts";
import { describeCache, findCache } from "./verbs/caches.ts";

async function main(): Promise<void> {
  let config: ReturnType<typeof parseConfig>;
  try {
    config = parseConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`nixstash: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const running = await startServer(config);
  const { ctx } = running;
  const cache = await describeCache({
    ctx,
    input: { cache: await findCache({ ctx, input: { name: config.defaultCache } }) },
  });
  const lines = [
    `nixstash listening on ${running.url} (database: ${ctx.database.dialect}, storage: ${ctx.storage.kind})`,
    "",
    `Substitute from cache "${cache.name}" — add to nix.conf:`,
    `  substituters = ${cache.url}`,
    `  trusted-public-keys = ${cache.publicKey}`,
  ];
  if (running.bootstrap.adminToken) {
    lines.push(
      "",
      "Admin token (shown once; also written to the file below, mode 0600):",
      `  ${running.bootstrap.adminToken}`,
      `  ${running.bootstrap.adminTokenFile}`,
    );
  }
  process.stdout.write(`${lines.join("\n")}\n\n`);

  // SIGTERM/SIGINT drain (see RunningServer.close): in-flight requests get NIXSTASH_SHUTDOWN_TIMEOUT, then
  // are cut; exit 0 either way, since nothing is left half-committed. A second signal exits at once, and a
  // backstop exits 1 should closing itself hang (a database that does not answer).
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      ctx.log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    ctx.log.info({ signal }, "shutting down");
    const backstop = setTimeout(() => process.exit(1), config.shutdownTimeoutMs + 30_000);
    backstop.unref();
    try {
      await running.close();
    } catch (error) {
      ctx.log.error({ err: error }, "error while shutting down");
      process.exit(1);
    }
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((error) => {
  process.stderr.write(`nixstash: cannot start: ${(error as Error).message}\n`);
  process.exit(1);
});
