#!/bin/sh
# nixstash post-build hook: records the outputs of a finished build in the spool directory and exits 0.
#
# Why a shell script: Nix runs the post-build hook synchronously, blocking its build loop, and stops building
# if the hook exits non-zero (PROTOCOL.md "Post-build hook contract"). Node's start-up alone costs ~40 ms per
# build, so the hook is plain POSIX sh that never touches the network: it writes one spool record and leaves
# the uploading to `nixstash daemon`. It forks exactly once (mv).
#
# Nix 2.8.0 passes an empty OUT_PATHS (fixed in 2.8.1). The outputs are then `nix-store --query --outputs
# "$DRV_PATH"`, but that call costs ~25 ms of Nix start-up inside the build loop, so the hook records the
# derivation (`drv <path>`) and the daemon runs that query when it reads the record, moments later. The
# derivation stays valid as long as its outputs do (keep-derivations, Nix's default), so this loses nothing
# that could still be pushed.
#
# Spool record: a file named `<pid>-<n>.paths` holding one store path per line, or `drv <path>` lines; lines
# starting with "#" are comments. It is written under a dot-name and renamed into place, so the daemon never
# sees a partial record. Spool location, the same rules as `nixstash daemon` uses:
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

# A pid is unique among live processes, so our temporary name cannot be in use; a leftover of a dead process
# with the same pid is simply overwritten. The final name must not replace a record still waiting there.
tmp=$spool/.new-$$
if ! { printf '%s\n' "$first" "$@"; } 2>/dev/null >"$tmp"; then
  echo "nixstash hook: cannot write to spool $spool; ${paths:-$DRV_PATH} will not be pushed (use nixstash push)" >&2
  exit 0
fi
n=0
while [ -e "$spool/$$-$n.paths" ]; do
  n=$((n + 1))
done
if ! mv -f "$tmp" "$spool/$$-$n.paths" 2>/dev/null; then
  echo "nixstash hook: cannot rename $tmp in spool $spool; ${paths:-$DRV_PATH} will not be pushed (use nixstash push)" >&2
fi
exit 0
