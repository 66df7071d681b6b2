// The OpenAPI 3.1 document of the native API, served at /api/v1/openapi.json. Written as one table (method,
// path, permission, summary, body fields) that the document is generated from; the admin permission-matrix
// test walks the same table, so an endpoint cannot be added without being documented and tested.

export type Requirement = "none" | "token" | "pull" | "push" | "delete" | "admin" | "server-admin";

export interface Endpoint {
  method: "get" | "post" | "put" | "patch" | "delete";
  path: string;
  permission: Requirement;
  summary: string;
  query?: Record<string, string>;
  body?: Record<string, string>;
}

export const ENDPOINTS: Endpoint[] = [
  {
    method: "get",
    path: "/whoami",
    permission: "token",
    summary: "The calling token: name, caches, permissions.",
  },
  {
    method: "get",
    path: "/caches",
    permission: "none",
    summary: "Caches the caller may read (public ones, and private ones its token pulls from).",
    query: { deleted: "true: include soft-deleted caches the caller administers" },
  },
  {
    method: "post",
    path: "/caches",
    permission: "admin",
    summary: "Create a cache (admin on a pattern matching its name).",
    body: {
      name: "string",
      public: "boolean",
      priority: "integer",
      description: "string",
      upstreamKeys: "string[]",
      retentionSeconds: "integer|null",
      quotaBytes: "integer|null",
    },
  },
  {
    method: "get",
    path: "/caches/{name}",
    permission: "pull",
    summary: "A cache's description: URL, public keys, settings.",
  },
  {
    method: "patch",
    path: "/caches/{name}",
    permission: "admin",
    summary: "Change settings.",
    body: {
      public: "boolean",
      priority: "integer",
      description: "string",
      upstreamKeys: "string[]",
      retentionSeconds: "integer|null",
      quotaBytes: "integer|null",
    },
  },
  {
    method: "delete",
    path: "/caches/{name}",
    permission: "admin",
    summary: "Soft delete (stops serving, name stays taken); with purge=true, purge a soft-deleted cache.",
    query: {
      confirm: "the cache name (required)",
      purge: "true: remove a soft-deleted cache's data for good",
    },
  },
  { method: "post", path: "/caches/{name}/restore", permission: "admin", summary: "Undo a soft delete." },
  {
    method: "get",
    path: "/caches/{name}/keys",
    permission: "admin",
    summary: "Signing keys (public halves only) and how many paths each has signed.",
  },
  {
    method: "post",
    path: "/caches/{name}/keys",
    permission: "admin",
    summary:
      "Add a key: generated (optional name) or imported from a Nix secret key file; re-signs existing paths in the background.",
    body: { name: "string", secretKey: "string (Nix secret key file contents)" },
  },
  {
    method: "post",
    path: "/caches/{name}/keys/rotate",
    permission: "admin",
    summary: "Start a rotation: the same as adding a key; retire the old one when clients trust the new one.",
    body: { name: "string", secretKey: "string" },
  },
  {
    method: "post",
    path: "/caches/{name}/keys/{id}/retire",
    permission: "admin",
    summary: "Retire a key: completes the other keys' signatures, then removes its Sig lines.",
  },
  {
    method: "get",
    path: "/caches/{name}/paths",
    permission: "pull",
    summary: "List and search paths, newest first.",
    query: {
      q: "substring of the store path",
      pinned: "true|false",
      limit: "1-1000 (100)",
      cursor: "from the previous page's next",
    },
  },
  {
    method: "get",
    path: "/caches/{name}/paths/{hash}",
    permission: "pull",
    summary: "One path: narinfo fields, sizes, pin, created, last access (pushed by: admins).",
  },
  {
    method: "delete",
    path: "/caches/{name}/paths/{hash}",
    permission: "delete",
    summary: "Delete a path; refused while others refer to it unless referrers=true.",
    query: { referrers: "true: delete the paths that refer to it too" },
  },
  {
    method: "put",
    path: "/caches/{name}/paths/{hash}/pin",
    permission: "push",
    summary: "Pin: the path and its closure survive garbage collection.",
  },
  { method: "delete", path: "/caches/{name}/paths/{hash}/pin", permission: "delete", summary: "Unpin." },
  {
    method: "get",
    path: "/caches/{name}/stats",
    permission: "pull",
    summary: "Sizes, deduplication, and hits/downloads per day.",
    query: { days: "1-366 (30)" },
  },
  {
    method: "post",
    path: "/caches/{name}/gc",
    permission: "admin",
    summary: "Collect this cache now (and storage); dryRun reports without deleting.",
    body: { dryRun: "boolean", deep: "boolean (server admins): also list storage for stray objects" },
  },
  {
    method: "get",
    path: "/caches/{name}/gc/runs",
    permission: "admin",
    summary: "Reports of past collections of this cache.",
    query: { limit: "1-100 (20)" },
  },
  {
    method: "post",
    path: "/gc",
    permission: "server-admin",
    summary: "Collect every cache with a retention period or quota, then storage.",
    body: { dryRun: "boolean", deep: "boolean" },
  },
  {
    method: "get",
    path: "/gc/runs",
    permission: "server-admin",
    summary: "Reports of past collections.",
    query: { limit: "1-100 (20)" },
  },
  {
    method: "get",
    path: "/tokens",
    permission: "admin",
    summary: "Tokens within the caller's admin scope; never a secret.",
    query: { all: "true: include revoked and expired ones" },
  },
  {
    method: "post",
    path: "/tokens",
    permission: "admin",
    summary: "Create a token within the caller's admin scope; the secret is in the answer, once.",
    body: {
      name: "string",
      caches: "string[]",
      permissions: "(pull|push|delete|admin)[]",
      expiresAt: "ms or ISO date",
    },
  },
  {
    method: "delete",
    path: "/tokens/{id}",
    permission: "admin",
    summary: "Revoke a token (immediately, on every replica).",
  },
  {
    method: "post",
    path: "/caches/{name}/missing",
    permission: "pull",
    summary: "Which of these store paths the cache lacks.",
    body: { paths: "string[]" },
  },
  {
    method: "put",
    path: "/caches/{name}/paths/{hash}",
    permission: "push",
    summary: "Streaming upload of a NAR with its path info in X-Nixstash-Path-Info.",
  },
  {
    method: "post",
    path: "/caches/{name}/paths",
    permission: "push",
    summary:
      "Batch upload of many paths (application/x-nixstash-batch: per path a JSON line with the path info and " +
      "bodySize, then the NAR); a result per path.",
  },
  { method: "put", path: "/caches/{name}/logs/{drv}", permission: "push", summary: "Upload a build log." },
  {
    method: "put",
    path: "/caches/{name}/realisations/{id}",
    permission: "push",
    summary: "Upload a realisation.",
  },
  { method: "get", path: "/openapi.json", permission: "none", summary: "This document." },
];

const describePermission: Record<Requirement, string> = {
  none: "No token needed.",
  token: "Any valid token.",
  pull: "pull on the cache (nothing for a public cache).",
  push: "push on the cache.",
  delete: "delete on the cache.",
  admin: "admin on the cache (or within the caller's admin scope).",
  "server-admin": 'admin on "*".',
};

export function openApiDocument(serverUrl: string) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const e of ENDPOINTS) {
    const params = [...e.path.matchAll(/\{(\w+)\}/g)].map((m) => ({
      name: m[1],
      in: "path",
      required: true,
      schema: { type: "string" },
    }));
    const query = Object.entries(e.query ?? {}).map(([name, description]) => ({
      name,
      in: "query",
      required: false,
      description,
      schema: { type: "string" },
    }));
    const item = paths[e.path] ?? {};
    paths[e.path] = item;
    item[e.method] = {
      summary: e.summary,
      description: `Permission: ${describePermission[e.permission]}`,
      ...(e.permission === "none" ? { security: [] } : {}),
      parameters: [...params, ...query],
      ...(e.body
        ? {
            requestBody: {
              content: {
                "application/json": {
                  schema: {
                    type: "object",
                    properties: Object.fromEntries(
                      Object.entries(e.body).map(([k, v]) => [k, { description: v }]),
                    ),
                  },
                },
              },
            },
          }
        : {}),
      responses: {
        default: {
          description: 'JSON; errors are {"error": code, "message": text}',
        },
      },
    };
  }
  return {
    openapi: "3.1.0",
    info: { title: "nixstash API", version: "1" },
    servers: [{ url: `${serverUrl}/api/v1` }],
    components: {
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        basic: { type: "http", scheme: "basic", description: "the token as the password, any login" },
      },
    },
    security: [{ bearer: [] }, { basic: [] }],
    paths,
  };
}
