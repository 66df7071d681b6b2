#!/usr/bin/env bash
# Stops what test/services/up.sh started in this test run (listed in $NIXSTASH_TEST_TMP/services/started),
# both services side by side. Safe to run twice, or when nothing was started.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${NIXSTASH_TEST_TMP:-}/services
[ -n "${NIXSTASH_TEST_TMP:-}" ] && [ -f "$state/started" ] || exit 0

jobs_started=()
while read -r service; do
  case "$service" in
    postgres) bash "$here/pg-down.sh" & jobs_started+=($!) ;;
    ceph) bash "$here/ceph-down.sh" & jobs_started+=($!) ;;
  esac
done < <(sort -u "$state/started")
status=0
for job in "${jobs_started[@]}"; do wait "$job" || status=1; done
rm -f "$state/started"
exit "$status"
