# nixstash server image. Node 20 runs the esbuild bundle of server/main.ts, as `npm start` does.
# Native modules (better-sqlite3, lzma-native, zstd-napi, and our own addons in server/native, built by
# package.json's install script) are compiled in the first stage, so the runtime stage needs no compiler.
#   docker build -t nixstash .
#   docker run -p 8080:8080 -v nixstash-data:/var/lib/nixstash nixstash     # SQLite + local storage
# See docker-compose.yml for PostgreSQL + MinIO, and README "Running as a service".
FROM node:20-bookworm-slim AS deps
WORKDIR /opt/nixstash
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
COPY server/native ./server/native
RUN npm ci --omit=dev --no-audit --no-fund
COPY nix ./nix
COPY schema ./schema
COPY server ./server
RUN npm run build:server --silent

FROM node:20-bookworm-slim
# MALLOC_ARENA_MAX as npm start sets it (package.json; README "Running the server").
ENV NODE_ENV=production \
    MALLOC_ARENA_MAX=2 \
    NIXSTASH_LISTEN=0.0.0.0:8080 \
    NIXSTASH_DATA_DIR=/var/lib/nixstash
WORKDIR /opt/nixstash
COPY --from=deps /opt/nixstash/node_modules ./node_modules
COPY package.json ./
COPY nix ./nix
COPY schema ./schema
COPY server ./server
COPY --from=deps /opt/nixstash/server/dist ./server/dist
COPY --from=deps /opt/nixstash/server/native/build/Release/sendfile.node /opt/nixstash/server/native/build/Release/memory.node ./server/native/build/Release/
RUN mkdir -p /var/lib/nixstash && chown node:node /var/lib/nixstash
USER node
VOLUME /var/lib/nixstash
EXPOSE 8080
# Ready = database and storage reachable (GET /readyz); the image has no curl, Node's fetch does the probe.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/readyz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM drains: in-flight uploads and downloads get NIXSTASH_SHUTDOWN_TIMEOUT (default 30 s) to finish.
STOPSIGNAL SIGTERM
# The Node options of `npm start` (package.json; test/ops/compose.test.ts keeps the two equal).
CMD ["node", "--enable-source-maps", "--max-semi-space-size=4", "--expose-gc", "server/dist/main.mjs"]
