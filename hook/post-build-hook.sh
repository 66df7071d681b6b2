#!/bin/sh
# nixstash post-build hook: records the outputs of a finished build in the spool directory and exits 0.
#
# Why a shell script: Nix runs the post-build hook synchronously, blocking its build loop, and stops building
# if the hook exits non-zero (PROTOCOL.md "Post-build hook contract"). Node's start-up alone costs ~40 ms per
# build, so the hook is plain POSIX sh that never touches the network: it writes one spool record and leaves
# the uploading to `nixstash daemon`. It forks nothing: everything it runs is a shell builtin (on a machine
# where starting a process costs ~4 ms, a `mv` alone doubled the time a build waited for the hook).
#
# Nix 2.8.0 passes an empty OUT_PATHS (fixed in 2.8.1). The outputs are then `nix-store --query --outputs
# "$DRV_PATH"`, but that call costs ~25 ms of Nix start-up inside the build loop, so the hook records the
# derivation (`drv <path>`) and the daemon runs that query when it reads the record, moments later. The
# derivation stays valid as long as its outputs do (keep-derivations, Nix's default), so this loses nothing
# that could still be pushed.
#
# Spool record: a file named `<pid>-<n>.paths` holding one store path per line, or `drv <path>` lines; lines
# starting with "#" are comments, and the last line `# end` marks the record complete (the daemon leaves a
# record without it alone for a few seconds: hook/spool.ts). The file is created exclusively (noclobber,
# O_EXCL), so two hooks never write the same record. Spool location, the same rules as `nixstash daemon`:
#   $NIXSTASH_SPOOL, else $NIXSTASH_STATE_DIR/spool, else /var/lib/nixstash/spool for root (the nix-daemon
#   runs hooks as root), else ${XDG_STATE_HOME:-$HOME/.local/state}/nixstash/spool.
# Whatever goes wrong (no space, no permission) is reported on stderr (the build log) and the hook exits 0.

umask 022
set -f # no pathname expansion when splitting OUT_PATHS

if [ -n "${NIXSTASH_SPOOL:-}" ]; then
  spool=$NIXSTASH_SPOOL
elif [ -n "${NIXSTASH_STATE_DIR:-}" ]; then
  spool=$NIXSTASH_STATE_DIR/spool
else
  # Our uid without forking `id -u`: the shell itself reads its own /proc status.
  uid=
  if [ -r /proc/self/status ]; then
    while read -r key value _; do
      if [ "$key" = "Uid:" ]; then
        uid=$value
        break
      fi
    done </proc/self/status
  fi
  [ -n "$uid" ] || uid=$(id -u 2>/dev/null)
  if [ "$uid" = 0 ]; then
    spool=/var/lib/nixstash/spool
  else
    spool=${XDG_STATE_HOME:-${HOME:-/nonexistent}/.local/state}/nixstash/spool
  fi
fi

paths=${OUT_PATHS:-}
if [ -n "$paths" ]; then
  # shellcheck disable=SC2086 # word splitting of OUT_PATHS (space-separated store paths) is intended
  set -- $paths
  first="# drv ${DRV_PATH:-unknown}"
elif [ -n "${DRV_PATH:-}" ]; then
  set --
  first="drv $DRV_PATH"
else
  echo "nixstash hook: neither OUT_PATHS nor DRV_PATH is set; nothing recorded" >&2
  exit 0
fi

if [ ! -d "$spool" ]; then
  mkdir -p "$spool" 2>/dev/null
fi

# A pid is unique among live processes; a record left by a dead process with the same pid keeps its name.
n=0
while [ -e "$spool/$$-$n.paths" ]; do
  n=$((n + 1))
done
# Noclobber: `>` creates the record with O_EXCL, so it never replaces one that appeared meanwhile.
set -C
if ! { printf '%s\n' "$first" "$@" '# end'; } 2>/dev/null >"$spool/$$-$n.paths"; then
  echo "nixstash hook: cannot write to spool $spool; ${paths:-$DRV_PATH} will not be pushed (use nixstash push)" >&2
fi
exit 0
