#!/usr/bin/env bash
# The lint tier: gofmt, go vet, staticcheck (pinned), and the test that
# os/exec is only imported where processes must be launched. Needs no
# root. Prints one line per check and "lint: N passed, N failed"; with
# --tally FILE it also appends "passed failed 0" to FILE for scripts/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# staticcheck's version is pinned: a new release may add checks, and the
# tier must not fail because of a download.
STATICCHECK=honnef.co/go/tools/cmd/staticcheck@v0.8.2
tally=""
[ "${1:-}" = "--tally" ] && tally="$2"
passed=0 failed=0
check() { # name, command...
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    echo "PASS lint $name"
    passed=$((passed + 1))
  else
    echo "FAIL lint $name"
    echo "$out" | sed 's/^/    /' | head -50
    failed=$((failed + 1))
  fi
}
gofmt_clean() {
  local files
  files=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
  [ -z "$files" ] || { echo "not gofmt'ed (run gofmt -w):"; echo "$files"; return 1; }
}
check gofmt gofmt_clean
check vet go vet ./...
check staticcheck go run "$STATICCHECK" ./...
check exec-allowlist go test -count=1 -run 'TestExecOnlyWhereAllowed' ./internal/hostexec
echo "lint: $passed passed, $failed failed"
[ -n "$tally" ] && echo "$passed $failed 0" >> "$tally"
[ "$failed" -eq 0 ]
