#!/usr/bin/env bash
# Stops the throwaway PostgreSQL cluster that pg-up.sh started in $PG_DIR (pg_ctl stop on that data
# directory only, fast mode, then immediate if it hangs) and removes its files, keeping the server log
# (NIXSTASH_TEST_KEEP=1 keeps everything).
#   PG_DIR=... bash test/services/pg-down.sh     (same default as pg-up.sh)
set -uo pipefail

D=${PG_DIR:-${NIXSTASH_TEST_TMP:+$NIXSTASH_TEST_TMP/postgres}}
D=${D:-/tmp/nixstash-postgres}
REGISTRY=${TMPDIR:-/tmp}/nixstash-services
T0=${EPOCHREALTIME/./}
log() { printf '[postgres-down %4d ms] %s\n' $(((${EPOCHREALTIME/./} - T0) / 1000)) "$*" >&2; }

[ -d "$D/data" ] || exit 0
if [ -n "${PG_BIN:-}" ]; then
  BIN=$PG_BIN
else
  version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
  BIN=/usr/lib/postgresql/${version:-none}/bin
fi
if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

if [ -f "$D/data/postmaster.pid" ]; then
  if as_pg "$BIN/pg_ctl" -D "$D/data" -m fast -w -t 15 stop >/dev/null 2>&1 ||
    as_pg "$BIN/pg_ctl" -D "$D/data" -m immediate -w -t 15 stop >/dev/null 2>&1; then
    log "stopped the server in $D"
  else
    log "could not stop the server in $D (see $D/server.log)"
  fi
fi

for entry in "$REGISTRY"/pg-*; do
  [ -f "$entry" ] && grep -qxF "dir=$D" "$entry" && rm -f "$entry"
done
if [ "${NIXSTASH_TEST_KEEP:-0}" != 1 ]; then
  find "$D" -mindepth 1 -maxdepth 1 ! -name server.log -exec rm -rf {} +
fi
log "done"
