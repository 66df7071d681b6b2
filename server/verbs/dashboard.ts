// What the web dashboard shows: the caches a caller may read — size, path count, recent pushes, and the
// nix.conf and netrc lines to use each — and a store-path search inside one of them.
//
// Visibility follows the Nix routes exactly: public caches for everyone, a private cache only for a token
// that may pull from it. A private cache the caller may not read is left out of the list altogether (its
// name is not shown), and a search in it answers 401 as its narinfos would. A token that is unknown,
// revoked or expired is an error rather than silently "anonymous", so the page can say so.
import type { Context } from "../context.ts";
import { createDashboardQueries, type PathSummary } from "../db/dashboard-queries.ts";
import { unauthorized } from "../errors.ts";
import { allows, authorize, type Caller } from "./auth.ts";
import { describeCache, findCache } from "./caches.ts";

const RECENT_PUSHES = 8;
export const SEARCH_LIMIT = 50;

export interface DashboardCache {
  name: string;
  url: string;
  public: boolean;
  priority: number;
  description: string;
  publicKeys: string[];
  paths: number;
  narBytes: number;
  fileBytes: number;
  lastPushAt: number | null;
  recent: PathSummary[];
  snippets: { nixConf: string; netrc: string | null };
}

function refuseBadToken(caller: Caller): void {
  if (!caller.principal && "problem" in caller && caller.problem)
    throw unauthorized(`${caller.problem}: check the token`);
}

/** The nix.conf lines (and, for a private cache, the netrc entry) a machine needs to substitute from it. */
export function snippetsFor(cache: { url: string; public: boolean; publicKeys: string[] }) {
  const host = new URL(cache.url).hostname;
  const nixConf = [
    `extra-substituters = ${cache.url}`,
    `extra-trusted-public-keys = ${cache.publicKeys.join(" ")}`,
    ...(cache.public ? [] : ["netrc-file = /etc/nix/netrc"]),
  ].join("\n");
  const netrc = cache.public ? null : `machine ${host}\npassword <a token with pull on this cache>`;
  return { nixConf, netrc };
}

export async function dashboardCaches({
  ctx,
  input,
}: {
  ctx: Context;
  input: { caller: Caller };
}): Promise<{ signedInAs: string | null; caches: DashboardCache[] }> {
  refuseBadToken(input.caller);
  const principal = input.caller.principal;
  const queries = createDashboardQueries(ctx.database);
  const summaries = (await queries.caches()).filter(
    (s) => s.public || (principal !== null && allows(principal, s.name, "pull")),
  );
  const caches: DashboardCache[] = [];
  for (const s of summaries) {
    const row = await findCache({ ctx, input: { name: s.name } }).catch(() => undefined);
    if (!row) continue; // deleted between the two queries
    const description = await describeCache({ ctx, input: { cache: row } });
    caches.push({
      name: s.name,
      url: description.url,
      public: s.public,
      priority: s.priority,
      description: s.description,
      publicKeys: description.publicKeys,
      paths: s.paths,
      narBytes: s.narBytes,
      fileBytes: s.fileBytes,
      lastPushAt: s.lastPushAt,
      recent: await queries.recentPaths(s.id, RECENT_PUSHES),
      snippets: snippetsFor({ url: description.url, public: s.public, publicKeys: description.publicKeys }),
    });
  }
  return { signedInAs: principal?.name ?? null, caches };
}

export async function dashboardSearch({
  ctx,
  input,
}: {
  ctx: Context;
  input: { caller: Caller; cache: string; query: string };
}): Promise<{ cache: string; query: string; paths: PathSummary[]; truncated: boolean }> {
  refuseBadToken(input.caller);
  const cache = await findCache({ ctx, input: { name: input.cache } });
  authorize(input.caller, cache, "pull");
  const rows = await createDashboardQueries(ctx.database).searchPaths(
    cache.id,
    input.query,
    SEARCH_LIMIT + 1,
  );
  return {
    cache: cache.name,
    query: input.query,
    paths: rows.slice(0, SEARCH_LIMIT),
    truncated: rows.length > SEARCH_LIMIT,
  };
}
