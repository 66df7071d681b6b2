#!/usr/bin/env bash
# `npm run bench [-- OPTIONS]`: the benchmarks of issue 7, with their peers, in one bounded run.
# Starts PostgreSQL and Ceph RGW (test/services/up.sh) unless --no-s3, runs bench/main.ts, stops them on exit.
# Options (passed to bench/main.ts): --reps N, --only 1,3,5, --quick, --no-s3, --wrk-seconds S,
# --hook-runs N, --ingest-mib N, --seed N, --profile (node --cpu-prof of the servers), --no-write.
# `npm run bench -- push-profile [--stack S] [--reps N] [--warm-ups N] [--perf]` runs bench/push-profile.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in nix nix-store nginx wrk zstd curl; do
  command -v "$bin" >/dev/null || {
    echo "bench: $bin is missing (apt-get install -y nix-bin nginx wrk zstd curl)" >&2
    exit 2
  }
done
export NIXSTASH_BENCH_TMP=${NIXSTASH_BENCH_TMP:-$(mktemp -d /tmp/nixstash-bench.XXXXXX)}
# The service scripts keep their state under NIXSTASH_TEST_TMP.
export NIXSTASH_TEST_TMP=$NIXSTASH_BENCH_TMP
with_services=1
for arg in "$@"; do [ "$arg" = --no-s3 ] && with_services=0; done
cleanup() {
  [ "$with_services" = 1 ] && bash test/services/down.sh || true
  # Store paths are read-only; the scratch dir holds chroot stores and the static cache.
  chmod -R u+w "$NIXSTASH_BENCH_TMP" 2>/dev/null || true
  [ -n "${NIXSTASH_BENCH_KEEP:-}" ] || rm -rf "$NIXSTASH_BENCH_TMP"
}
trap cleanup EXIT
if [ "$with_services" = 1 ]; then
  # shellcheck disable=SC1091
  source test/services/up.sh
fi
# nixstash runs as `npm start` runs it: the esbuild bundle of server/main.ts.
npm run build --silent
# `npm run bench -- push-profile [...]`: where one push's CPU goes (bench/push-profile.ts), instead of the table.
script=bench/main.ts
if [ "${1:-}" = push-profile ]; then
  script=bench/push-profile.ts
  shift
fi
node --import tsx "$script" "$@"
