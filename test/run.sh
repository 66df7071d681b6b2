#!/usr/bin/env bash
# The whole test suite: type-check, lint, then every *.test.ts under node's test runner, with the real
# services the integration suites need (PostgreSQL, Ceph RGW) started here and stopped on exit.
#   bash test/run.sh            everything
#   bash test/run.sh --unit     no services (suites that need one skip loudly; in CI they fail)
#   bash test/run.sh PATH...    only these test files, or the *.test.ts under these directories
set -euo pipefail
cd "$(dirname "$0")/.."
# A scratch dir made here is removed on exit (a run leaves GBs: big NARs, Nix stores, Ceph's memstore),
# unless NIXSTASH_TEST_KEEP is set; one given by the caller is left to the caller.
own_tmp=0
if [ -z "${NIXSTASH_TEST_TMP:-}" ]; then
  NIXSTASH_TEST_TMP=$(mktemp -d /tmp/nixstash-test.XXXXXX)
  own_tmp=1
fi
export NIXSTASH_TEST_TMP

with_services=1
files=()
for arg in "$@"; do
  case "$arg" in
    --unit) with_services=0 ;;
    *)
      if [ -d "$arg" ]; then
        mapfile -t found < <(find "$arg" -name '*.test.ts' -not -path '*/node_modules/*' | sort)
        if [ ${#found[@]} -eq 0 ]; then echo "test/run.sh: no *.test.ts under $arg" >&2; exit 2; fi
        files+=("${found[@]}")
      elif [ -f "$arg" ]; then
        files+=("$arg")
      else
        echo "test/run.sh: no such test file or directory: $arg" >&2
        exit 2
      fi
      ;;
  esac
done

if [ ${#files[@]} -eq 0 ]; then
  echo "== type-check"; npx tsc --noEmit
  echo "== lint"; npx biome check .
  mapfile -t files < <(find nix schema server hook test bench -name '*.test.ts' -not -path '*/node_modules/*' | sort)
fi

# Server processes in the suites run the bundle `npm start` runs.
echo "== build"; npm run build --silent

cleanup() {
  [ "$with_services" = 1 ] && bash test/services/down.sh || true
  if [ "$own_tmp" = 1 ] && [ -z "${NIXSTASH_TEST_KEEP:-}" ]; then
    # Nix stores in it are read-only.
    chmod -R u+w "$NIXSTASH_TEST_TMP" 2>/dev/null || true
    rm -rf "$NIXSTASH_TEST_TMP"
  fi
}
trap cleanup EXIT
if [ "$with_services" = 1 ]; then
  # shellcheck disable=SC1091
  source test/services/up.sh
fi

echo "== tests (${#files[@]} files)"
node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
