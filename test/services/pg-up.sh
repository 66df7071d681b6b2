#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the database suites: initdb into a scratch directory, listen on
# 127.0.0.1 only, trust authentication (nothing else can reach it), durability switched off (fsync,
# synchronous_commit, full_page_writes: test data is thrown away), and an empty database `nixstash_test`.
#
# Needs (Debian 12): apt-get install -y --no-install-recommends postgresql  (any version dir under
# /usr/lib/postgresql; the newest is used, or PG_BIN=/path/to/bin).
#
#   bash test/services/pg-up.sh            logs on stderr; on stdout `export NIXSTASH_TEST_PG_URL=...`
#   eval "$(bash test/services/pg-up.sh)"
#   bash test/services/pg-down.sh          stops it (same PG_DIR)
#
# Settings: PG_DIR (default $NIXSTASH_TEST_TMP/postgres, else /tmp/nixstash-postgres), PG_PORT (default
# 54329; when not set and taken, the next free port), PG_TIMEOUT (seconds to wait for start-up, default 60).
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` OS user (which owns PG_DIR).
# A cluster left behind by a run that died (its owner process, NIXSTASH_TEST_OWNER_PID or our parent, is
# gone) is stopped first.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${PG_DIR:-${NIXSTASH_TEST_TMP:+$NIXSTASH_TEST_TMP/postgres}}
D=${D:-/tmp/nixstash-postgres}
DB=nixstash_test
TIMEOUT=${PG_TIMEOUT:-60}
OWNER=${NIXSTASH_TEST_OWNER_PID:-$PPID}
REGISTRY=${TMPDIR:-/tmp}/nixstash-services

T0=${EPOCHREALTIME/./}
ms() { local n=${EPOCHREALTIME/./}; echo $(((n - T0) / 1000)); }
log() { printf '[postgres %5d ms] %s\n' "$(ms)" "$*" >&2; }
start_attempted=0
# Report, show the log, and stop the server if this attempt started one: a failed start leaves nothing running.
die() {
  printf '[postgres] ERROR: %s\n' "$*" >&2
  [ -s "$D/server.log" ] && { echo "--- tail $D/server.log" >&2; tail -n 20 "$D/server.log" >&2; }
  if [ "$start_attempted" = 1 ]; then
    # a server still starting writes its pid file within moments; pg-down.sh stops it through that file
    for _ in $(seq 50); do [ -f "$D/data/postmaster.pid" ] && break; sleep 0.1; done
    PG_DIR=$D bash "$here/pg-down.sh" >&2
  fi
  exit 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -n "${PG_BIN:-}" ]; then
  BIN=$PG_BIN
else
  version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
  BIN=/usr/lib/postgresql/${version:-none}/bin
fi
for tool in initdb pg_ctl psql; do
  [ -x "$BIN/$tool" ] || die "$BIN/$tool not found: apt-get install -y --no-install-recommends postgresql"
done

if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' OS user to run the server as"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

# Leftovers: clusters whose owner is gone, and anything still running from this very directory.
mkdir -p "$REGISTRY" && chmod 700 "$REGISTRY"
for entry in "$REGISTRY"/pg-*; do
  [ -f "$entry" ] || continue
  old_dir=$(sed -n 's/^dir=//p' "$entry")
  old_owner=$(sed -n 's/^owner=//p' "$entry")
  if [ "$old_dir" = "$D" ] || ! kill -0 "$old_owner" 2>/dev/null; then
    log "stopping a cluster left behind in $old_dir (owner $old_owner gone)"
    PG_DIR=$old_dir bash "$here/pg-down.sh" >&2 || true
    rm -f "$entry"
  fi
done

if [ -n "${PG_PORT:-}" ]; then
  port_open "$PG_PORT" && die "port $PG_PORT is already in use (PG_PORT set by the environment)"
  PORT=$PG_PORT
else
  PORT=54329
  while port_open "$PORT"; do
    PORT=$((PORT + 1))
    [ "$PORT" -gt 54429 ] && die "no free port in 54329..54429"
  done
fi

rm -rf "$D"
mkdir -p "$D"
printf 'dir=%s\nowner=%s\nport=%s\n' "$D" "$OWNER" "$PORT" >"$REGISTRY/pg-$PORT"
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$D"
  # The server must reach its directory: grant search (not read) on parents it cannot traverse, such as
  # the 0700 directory `mktemp -d` gives test/run.sh.
  p=$(dirname "$D")
  while [ "$p" != / ]; do
    as_pg test -x "$p" || chmod o+x "$p"
    p=$(dirname "$p")
  done
fi
log "initdb in $D ($BIN)"
as_pg "$BIN/initdb" -D "$D/data" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync \
  >"$D/initdb.log" 2>&1 || { tail -n 20 "$D/initdb.log" >&2; die "initdb failed"; }
cat >>"$D/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$D'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
log "initdb done"
start_attempted=1
as_pg "$BIN/pg_ctl" -D "$D/data" -l "$D/server.log" -w -t "$TIMEOUT" start >/dev/null ||
  die "the server did not start within ${TIMEOUT}s"
log "server started on 127.0.0.1:$PORT"
as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $DB" ||
  die "could not create database $DB"
log "database $DB created: ready in $(ms) ms"

printf 'export NIXSTASH_TEST_PG_URL=%q\n' "postgres://postgres@127.0.0.1:$PORT/$DB"
