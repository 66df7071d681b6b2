#!/usr/bin/env bash
# Stops the throwaway Ceph cluster that ceph-up.sh started in $CEPH_DIR: only the daemons whose pids it
# recorded there (and whose command line still names that directory, so a recycled pid is never hit),
# radosgw first, then the OSD, then the monitor. Then removes the cluster's data, keeping its logs
# (NIXSTASH_TEST_KEEP=1 keeps everything).
#   CEPH_DIR=... bash test/services/ceph-down.sh     (same default as ceph-up.sh)
set -uo pipefail

D=${CEPH_DIR:-${NIXSTASH_TEST_TMP:+$NIXSTASH_TEST_TMP/ceph}}
D=${D:-/tmp/nixstash-ceph}
REGISTRY=${TMPDIR:-/tmp}/nixstash-services
T0=${EPOCHREALTIME/./}
log() { printf '[ceph-down %4d ms] %s\n' $(((${EPOCHREALTIME/./} - T0) / 1000)) "$*" >&2; }

[ -d "$D/run" ] || exit 0

# Alive and ours: exists, is not a zombie, and its command line mentions our config file.
ours() { # pid
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$D/ceph.conf"
}

stopped=0
for f in "$D"/run/client.*.pid "$D"/run/osd.*.pid "$D"/run/mon.*.pid; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .pid)
  pid=$(cat "$f")
  ours "$pid" || continue
  kill "$pid" 2>/dev/null
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.05; done # up to 5 s
  if ours "$pid"; then
    log "$name ($pid) ignored SIGTERM for 5 s: SIGKILL"
    kill -9 "$pid" 2>/dev/null
    for _ in $(seq 40); do ours "$pid" || break; sleep 0.05; done
  fi
  stopped=$((stopped + 1))
  log "stopped $name ($pid)"
done

for entry in "$REGISTRY"/ceph-*; do
  [ -f "$entry" ] && grep -qxF "dir=$D" "$entry" && rm -f "$entry"
done
if [ "${NIXSTASH_TEST_KEEP:-0}" != 1 ]; then
  find "$D" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +
fi
log "done ($stopped daemons stopped)"
