// First start: a default cache with a fresh key, and an admin token printed once and written to
// <data dir>/admin-token (mode 0600). Later starts find both and do nothing.
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Context } from "../context.ts";
import { AppError } from "../errors.ts";
import { createCache } from "./caches.ts";
import { createToken } from "./tokens.ts";

export interface BootstrapResult {
  createdCache: string | undefined;
  adminToken: string | undefined;
  adminTokenFile: string | undefined;
}

export async function bootstrap({
  ctx,
  input,
}: {
  ctx: Context;
  input: { defaultCache: string; dataDir: string };
}) {
  const result: BootstrapResult = {
    createdCache: undefined,
    adminToken: undefined,
    adminTokenFile: undefined,
  };
  if ((await ctx.repo.countCaches()) === 0) {
    try {
      await createCache({ ctx, input: { name: input.defaultCache } });
      result.createdCache = input.defaultCache;
    } catch (error) {
      // A replica starting at the same moment created it first: that is the state we wanted.
      if (!(error instanceof AppError && error.code === "conflict")) throw error;
    }
  }
  if ((await ctx.repo.countTokens()) === 0) {
    const token = await createToken({ ctx, input: { name: "admin", caches: ["*"], permissions: ["admin"] } });
    const file = join(input.dataDir, "admin-token");
    writeFileSync(file, `${token.token}\n`, { mode: 0o600 });
    chmodSync(file, 0o600);
    result.adminToken = token.token;
    result.adminTokenFile = file;
  }
  return result;
}
