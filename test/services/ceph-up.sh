#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with RADOS Gateway: the real S3 server the storage and end-to-end
# suites run against (SigV4 really verified, real multipart, real presigned URLs). No systemd, no root
# services: one monitor, one OSD, one radosgw, all pids recorded under $CEPH_DIR/run.
#
# Needs (Debian 12): apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common
#
#   bash test/services/ceph-up.sh            logs on stderr; on stdout `export NIXSTASH_TEST_S3_...=...`
#   eval "$(bash test/services/ceph-up.sh)"  lines, so a shell can take the connection from it
#   bash test/services/ceph-down.sh          stops it (same CEPH_DIR)
#
# Settings (environment):
#   CEPH_DIR        data dir (default $NIXSTASH_TEST_TMP/ceph, else /tmp/nixstash-ceph)
#   CEPH_RGW_PORT   S3 port (default 7480; when not set and 7480 is taken, the next free port is used)
#   CEPH_MON_PORT / CEPH_MON2_PORT   monitor ports (defaults 6789 / 3300, same rule)
#   OSD_STORE       memstore (default) or bluestore. memstore keeps objects in the OSD's RAM, capped by
#                   CEPH_MEMSTORE_BYTES (default 6 GiB); it starts in ~1.5 s where bluestore needs ~5 s
#                   (mkfs of a sparse 20 GiB file), and test data is throwaway anyway.
#   CEPH_ACCESS_KEY / CEPH_SECRET_KEY   S3 credentials to create
#   CEPH_TIMEOUT    seconds allowed for each start-up step (default 60)
#
# A cluster left behind by a run that died without cleaning up (its owner process is gone) is stopped first;
# the owner is NIXSTASH_TEST_OWNER_PID (test/services/up.sh passes the test run's pid), else our parent.
# Notes from getting this to work: `tcp_nodelay=1` on the beast frontend is essential (without it every GET
# with a body waits ~44 ms for delayed ACKs); RGW's pools are created up front, because radosgw creates them
# lazily and the first bucket and first multipart upload would each stall for seconds; /usr/bin/python3 is
# used on purpose, the `rados` module is Debian's and another python3 on PATH would not have it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${CEPH_DIR:-${NIXSTASH_TEST_TMP:+$NIXSTASH_TEST_TMP/ceph}}
D=${D:-/tmp/nixstash-ceph}
OSD_STORE=${OSD_STORE:-memstore}
MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-6442450944}
ACCESS_KEY=${CEPH_ACCESS_KEY:-nixstashaccess}
SECRET_KEY=${CEPH_SECRET_KEY:-nixstashsecret0123456789}
STEP_TIMEOUT=${CEPH_TIMEOUT:-60}
OWNER=${NIXSTASH_TEST_OWNER_PID:-$PPID}
REGISTRY=${TMPDIR:-/tmp}/nixstash-services
PY=/usr/bin/python3

T0=${EPOCHREALTIME/./}
ms() { local n=${EPOCHREALTIME/./}; echo $(((n - T0) / 1000)); }
log() { printf '[ceph %5d ms] %s\n' "$(ms)" "$*" >&2; }
bootstrap=""
# Report, show the logs, and stop whatever this attempt started: a failed start leaves nothing running.
die() {
  printf '[ceph] ERROR: %s\n' "$*" >&2
  if [ -d "$D/log" ]; then
    for f in "$D"/log/*.log; do [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  [ -n "$bootstrap" ] && kill "$bootstrap" 2>/dev/null
  [ -d "$D/run" ] && CEPH_DIR=$D bash "$here/ceph-down.sh" >&2
  exit 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The explicitly requested port, or the first free one from the default upwards.
pick_port() { # name requested default
  local name=$1 requested=$2 p=$3
  if [ -n "$requested" ]; then
    port_open "$requested" && die "$name port $requested is already in use (set by the environment)"
    echo "$requested"
    return
  fi
  while port_open "$p"; do
    p=$((p + 1))
    [ "$p" -gt $(($3 + 100)) ] && die "no free $name port in $3..$p"
  done
  echo "$p"
}
# Poll a command until it succeeds, at most STEP_TIMEOUT seconds.
wait_for() { # what command...
  local what=$1 deadline=$((SECONDS + STEP_TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && die "timed out after ${STEP_TIMEOUT}s waiting for $what"
    sleep 0.1
  done
}

for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph-authtool monmaptool; do
  command -v "$bin" >/dev/null || die "$bin not found: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common"
done
[ -x "$PY" ] && "$PY" -c 'import rados' 2>/dev/null || die "$PY cannot import rados (Debian package python3-rados)"

# Leftovers: clusters whose owner is gone, and anything still running from this very data dir.
mkdir -p "$REGISTRY" && chmod 700 "$REGISTRY"
for entry in "$REGISTRY"/ceph-*; do
  [ -f "$entry" ] || continue
  old_dir=$(sed -n 's/^dir=//p' "$entry")
  old_owner=$(sed -n 's/^owner=//p' "$entry")
  if [ "$old_dir" = "$D" ] || ! kill -0 "$old_owner" 2>/dev/null; then
    log "stopping a cluster left behind in $old_dir (owner $old_owner gone)"
    CEPH_DIR=$old_dir bash "$here/ceph-down.sh" >&2 || true
    rm -f "$entry"
  fi
done

RGW_PORT=$(pick_port rgw "${CEPH_RGW_PORT:-}" 7480)
MON_PORT=$(pick_port mon "${CEPH_MON_PORT:-}" 6789)
MON2_PORT=$(pick_port mon2 "${CEPH_MON2_PORT:-}" 3300)
[ "$MON_PORT" != "$MON2_PORT" ] && [ "$MON_PORT" != "$RGW_PORT" ] && [ "$MON2_PORT" != "$RGW_PORT" ] ||
  die "ports collide: rgw $RGW_PORT mon $MON_PORT mon2 $MON2_PORT"

rm -rf "$D"
mkdir -p "$D"/{run,log,crash,mon/ceph-a,osd/ceph-0,rgw}
printf 'dir=%s\nowner=%s\nport=%s\n' "$D" "$OWNER" "$RGW_PORT" >"$REGISTRY/ceph-$RGW_PORT"
FSID=$(cat /proc/sys/kernel/random/uuid)
CONF=$D/ceph.conf
cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon_host = [v2:127.0.0.1:$MON2_PORT,v1:127.0.0.1:$MON_PORT]
mon_initial_members = a
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $D/keyring
run_dir = $D/run
admin_socket = $D/run/\$cluster-\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$cluster-\$name.log
crash_dir = $D/crash
mon_data = $D/mon/\$cluster-\$id
osd_data = $D/osd/\$cluster-\$id
# one OSD: one replica, few placement groups, no autoscaler, no health nagging about it
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
debug_ms = 0

[mon]
mon_cluster_log_file = $D/log/cluster.log
mon_warn_on_insecure_global_id_reclaim_allowed = false
# commit maps quickly: pool creation takes ~0.1 s instead of ~2 s
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[osd]
osd_objectstore = $OSD_STORE
memstore_device_bytes = $MEMSTORE_BYTES
bluestore_block_path = $D/osd/\$cluster-\$id/block.file
bluestore_block_create = true
bluestore_block_size = 21474836480
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw_data = $D/rgw
rgw_thread_pool_size = 64
rgw_enable_usage_log = false
# space of deleted/overwritten objects is reclaimed by RGW's garbage collector (default: after 2 hours)
rgw_gc_obj_min_wait = 60
rgw_gc_processor_period = 60
EOF
export CEPH_CONF=$CONF
log "starting in $D (store $OSD_STORE, rgw port $RGW_PORT, mon ports $MON_PORT/$MON2_PORT)"

# One keyring holds every identity: mon., client.admin, then osd.0 and client.rgw.a.
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON2_PORT,v1:127.0.0.1:$MON_PORT]" "$D/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring" >"$D/log/mon-mkfs.log" 2>&1 ||
  die "ceph-mon --mkfs failed"
ceph-mon -c "$CONF" -i a 2>"$D/log/mon-start.log" || die "ceph-mon did not start" # daemonizes; pid in run/mon.a.pid
log "mon started"

# Bootstrap in one librados session (much faster than a ceph CLI call per step), in the background: wait for
# the monitor, register the OSD (its id goes to osd-id, for the mkfs below), then, while the OSD formats
# and boots, create RGW's pools (PGs become active once the OSD is up) and radosgw's key.
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_SECRET=$(ceph-authtool --gen-print-key)
"$PY" - "$CONF" "$STEP_TIMEOUT" "$OSD_UUID" "$OSD_SECRET" "$D" >"$D/log/bootstrap.log" 2>&1 <<'PY' &
import json, os, sys, rados
conf, timeout, uuid, secret, d = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = rados.Rados(conffile=conf, name='client.admin')
c.connect(timeout=timeout)
def cmd(inbuf=b'', **kw):
    r, out, err = c.mon_command(json.dumps(kw), inbuf)
    if r != 0:
        sys.exit(f'{kw}: {r} {err}')
    return out
def publish(name, data):
    with open(f'{d}/{name}.new', 'wb') as f:
        f.write(data)
    os.rename(f'{d}/{name}.new', f'{d}/{name}')
out = cmd(prefix='osd new', uuid=uuid, format='json', inbuf=json.dumps({'cephx_secret': secret}).encode())
publish('osd-id', str(json.loads(out)['osdid']).encode())
for pool in ['.rgw.root', 'default.rgw.log', 'default.rgw.control', 'default.rgw.meta',
             'default.rgw.buckets.index', 'default.rgw.buckets.non-ec', 'default.rgw.buckets.data']:
    cmd(prefix='osd pool create', pool=pool, pg_num=8, pgp_num=8)
    cmd(prefix='osd pool application enable', pool=pool, app='rgw')
publish('rgw.keyring', cmd(prefix='auth get-or-create', entity='client.rgw.a', caps=['mon', 'allow *', 'osd', 'allow *']))
c.shutdown()
PY
bootstrap=$!
bootstrap_alive() { kill -0 "$bootstrap" 2>/dev/null; }
deadline=$((SECONDS + STEP_TIMEOUT))
until [ -s "$D/osd-id" ]; do
  bootstrap_alive || die "bootstrap failed: $(tail -n 3 "$D/log/bootstrap.log")"
  [ "$SECONDS" -ge "$deadline" ] && die "timed out after ${STEP_TIMEOUT}s waiting for the monitor to register the OSD"
  sleep 0.05
done
OSD_ID=$(cat "$D/osd-id")
log "mon answering, osd.$OSD_ID registered"
ceph-authtool "$D/keyring" -n "osd.$OSD_ID" --add-key "$OSD_SECRET" >/dev/null
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1 ||
  die "ceph-osd --mkfs failed (see $D/log/osd-mkfs.log)"
ceph-osd -c "$CONF" -i "$OSD_ID" 2>"$D/log/osd-start.log" || die "ceph-osd did not start"
log "osd.$OSD_ID ($OSD_STORE) started"
wait "$bootstrap" || die "creating RGW's pools or key failed: $(tail -n 3 "$D/log/bootstrap.log")"
cat "$D/rgw.keyring" >>"$D/keyring"
log "rgw pools and key created"

# radosgw waits for the OSD by itself; it listens once its zone is set up.
radosgw -c "$CONF" -n client.rgw.a 2>"$D/log/rgw-start.log" || die "radosgw did not start"
log "radosgw started"
wait_for "radosgw to listen on 127.0.0.1:$RGW_PORT" port_open "$RGW_PORT"
log "radosgw listening on 127.0.0.1:$RGW_PORT"
radosgw-admin -c "$CONF" user create --uid=nixstash --display-name=nixstash \
  --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$D/log/user-create.log" 2>&1 ||
  die "radosgw-admin user create failed (see $D/log/user-create.log)"
log "S3 user created: ready in $(ms) ms"

printf 'export NIXSTASH_TEST_S3_ENDPOINT=%q\n' "http://127.0.0.1:$RGW_PORT"
printf 'export NIXSTASH_TEST_S3_ACCESS_KEY=%q\n' "$ACCESS_KEY"
printf 'export NIXSTASH_TEST_S3_SECRET_KEY=%q\n' "$SECRET_KEY"
printf 'export NIXSTASH_TEST_S3_REGION=%q\n' "us-east-1"
