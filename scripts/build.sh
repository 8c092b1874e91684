#!/usr/bin/env bash
# Builds banger, bangerd and banger-vmm-qemu into bin/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
out="${1:-bin}"
version="$(git describe --tags --always --dirty 2>/dev/null || echo dev)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
mkdir -p "$out"
CGO_ENABLED=0 go build -trimpath \
  -ldflags "-X banger/internal/buildinfo.Version=0.1.0+${version} -X banger/internal/buildinfo.Commit=${commit}" \
  -o "$out/" ./cmd/...
echo "build: $(ls "$out" | tr '\n' ' ')in $out"
