#!/usr/bin/env bash
# banger's test command: installs what the tests need, builds, prepares the
# guest kernel and image (cached on this machine by a hash of their
# inputs), and runs every tier: lint, unit, integration, end-to-end. Run as root
# from the repository. The last line is "N passed, N failed".
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh unit       only the unit tier (no root needed)
#   ./scripts/test.sh lint       only the lint tier (no root needed)
#
# Environment: BANGER_CACHE (default /var/cache/banger-ci) keeps the kernel,
# the debootstrap cache and the test image between runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
only="${1:-all}"
start=$(date +%s)
tally=$(mktemp)
failures=$(mktemp)
trap 'rm -f "$tally" "$failures"' EXIT

say() { printf '== [%4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }

run_tier() { # tier, go test args...
  local tier=$1; shift
  say "tier $tier: go test $*"
  BANGER_TIER=$tier go test -json "$@" 2>&1 | go run ./test/tools/testsum -tier "$tier" -tally "$tally" -failures "$failures" -v
}

if [ "$only" = lint ]; then
  ./scripts/lint.sh
  exit
fi

if [ "$only" = unit ]; then
  run_tier unit -count=1 ./...
  read -r p f s < <(awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}' "$tally")
  echo "$p passed, $f failed"
  [ "$f" -eq 0 ]
  exit
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh must run as root (the integration and end-to-end tiers make bridges, taps, loop devices and VMs)" >&2
  exit 2
fi

say "installing Debian packages"
./scripts/deps.sh || { echo "0 passed, 1 failed"; exit 1; }
say "tier lint: gofmt, vet, staticcheck, exec allowlist"
./scripts/lint.sh --tally "$tally"
say "building"
bin="$PWD/bin"
./scripts/build.sh "$bin" || { echo "0 passed, 1 failed"; exit 1; }
export BANGER_BIN_DIR="$bin"

run_tier unit -count=1 ./...

say "preparing the guest kernel and image (cached)"
if ! ./scripts/prepare-artifacts.sh "$bin" > /tmp/banger-artifacts.env; then
  echo "preparing artifacts failed" >&2
  read -r p f s < <(awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}' "$tally")
  echo "$p passed, $((f + 1)) failed"
  exit 1
fi
set -a; . /tmp/banger-artifacts.env; set +a
say "artifacts: kernel $BANGER_TEST_KERNEL, image $BANGER_TEST_IMAGE_DIR"

export BANGER_CI=1
run_tier integration -count=1 -timeout 40m ./internal/... ./test/integration/...
fault_table=$(mktemp)
BANGER_FAULT_TABLE="$fault_table" run_tier e2e -count=1 -timeout 60m -p 1 ./test/e2e/...
[ -s "$fault_table" ] && cat "$fault_table"
rm -f "$fault_table"

read -r p f s < <(awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}' "$tally")
say "done: $s skipped across tiers (unit-tier skips are the integration tests, run later)"
# The failures again, last, so the tail of a long log names them.
[ -s "$failures" ] && { echo "failed:"; sed 's/^/  /' "$failures"; }
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
