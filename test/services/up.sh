# shellcheck shell=bash
# Starts the real services the integration suites need, PostgreSQL and Ceph RGW (S3), side by side (they
# share nothing: own directories, own ports), and exports where they are:
#   NIXSTASH_TEST_PG_URL
#   NIXSTASH_TEST_S3_ENDPOINT NIXSTASH_TEST_S3_ACCESS_KEY NIXSTASH_TEST_S3_SECRET_KEY NIXSTASH_TEST_S3_REGION
# SOURCED by test/run.sh (so: no `exit`, only functions and `return`); test/services/down.sh stops exactly
# what this started, as recorded in $NIXSTASH_TEST_TMP/services/started.
# A service already given by the environment (NIXSTASH_TEST_PG_URL / NIXSTASH_TEST_S3_ENDPOINT set) is
# not started. A service whose binaries are not installed is left out with a loud warning (its suites then
# skip loudly); under CI=true that is an error. One that is installed but fails to start is always an error.

_nixstash_services_up() {
  local here state ci=0 want_pg=1 want_ceph=1 pg_job="" ceph_job="" failed=0 t0
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  state=${NIXSTASH_TEST_TMP:?NIXSTASH_TEST_TMP must be set (test/run.sh sets it)}/services
  mkdir -p "$state" || return 1
  case "${CI:-}" in true | 1) ci=1 ;; esac
  t0=${EPOCHREALTIME/./}

  local missing_pg="" missing_ceph="" bin
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || [ -x "${PG_BIN:-/nonexistent}/initdb" ] ||
    missing_pg="PostgreSQL (no initdb; apt-get install -y --no-install-recommends postgresql)"
  for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph-authtool monmaptool; do
    command -v "$bin" >/dev/null || missing_ceph="Ceph RGW (no $bin; apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common)"
  done
  [ -z "$missing_ceph" ] && ! /usr/bin/python3 -c 'import rados' 2>/dev/null &&
    missing_ceph="Ceph RGW (/usr/bin/python3 cannot import rados; apt-get install -y python3-rados)"
  local what
  [ -n "${NIXSTASH_TEST_PG_URL:-}" ] && missing_pg=""
  [ -n "${NIXSTASH_TEST_S3_ENDPOINT:-}" ] && missing_ceph=""
  for what in "$missing_pg" "$missing_ceph"; do
    [ -n "$what" ] || continue
    if [ "$ci" = 1 ]; then
      printf '\n[services] ERROR (CI=true): %s is not installed\n\n' "$what" >&2
      return 1
    fi
    printf '\n!!!!!!!! [services] %s is not installed: suites that need it will be SKIPPED !!!!!!!!\n\n' "$what" >&2
  done
  [ -n "$missing_pg" ] && want_pg=0
  [ -n "$missing_ceph" ] && want_ceph=0
  # Services given by the environment (say, CI containers) are used as they are.
  if [ -n "${NIXSTASH_TEST_PG_URL:-}" ]; then
    printf '[services] PostgreSQL from the environment: %s\n' "$NIXSTASH_TEST_PG_URL" >&2
    want_pg=0
  fi
  if [ -n "${NIXSTASH_TEST_S3_ENDPOINT:-}" ]; then
    printf '[services] S3 from the environment: %s\n' "$NIXSTASH_TEST_S3_ENDPOINT" >&2
    want_ceph=0
  fi

  # Leftovers of a run that died are recognised by their owner's pid being gone: ours is this shell.
  export NIXSTASH_TEST_OWNER_PID=$$
  if [ "$want_pg" = 1 ]; then
    echo postgres >>"$state/started"
    bash "$here/pg-up.sh" >"$state/postgres.env" &
    pg_job=$!
  fi
  if [ "$want_ceph" = 1 ]; then
    echo ceph >>"$state/started"
    bash "$here/ceph-up.sh" >"$state/ceph.env" &
    ceph_job=$!
  fi
  if [ -n "$pg_job" ]; then
    if wait "$pg_job"; then
      # shellcheck disable=SC1091
      source "$state/postgres.env"
    else
      printf '[services] ERROR: PostgreSQL did not start (see above)\n' >&2
      failed=1
    fi
  fi
  if [ -n "$ceph_job" ]; then
    if wait "$ceph_job"; then
      # shellcheck disable=SC1091
      source "$state/ceph.env"
    else
      printf '[services] ERROR: Ceph RGW did not start (see above)\n' >&2
      failed=1
    fi
  fi
  [ "$failed" = 0 ] || return 1
  printf '[services] up in %d ms: postgres %s, s3 %s\n' $(((${EPOCHREALTIME/./} - t0) / 1000)) \
    "${NIXSTASH_TEST_PG_URL:-(none)}" "${NIXSTASH_TEST_S3_ENDPOINT:-(none)}" >&2
}

if ! _nixstash_services_up; then
  unset -f _nixstash_services_up
  return 1
fi
unset -f _nixstash_services_up
