#!/usr/bin/env bash
# Builds (or reuses) the guest kernel and the test image with banger itself,
# through a throwaway bangerd whose state lives in $BANGER_CACHE, and prints
# their paths as shell assignments for scripts/test.sh. A fresh machine pays
# the kernel build (~10 min) and debootstrap (a few minutes) once; later runs
# take seconds: the kernel is keyed by its source version and config hash,
# the image by a hash of the image builder's sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-$PWD/bin}"
cache="${BANGER_CACHE:-/var/cache/banger-ci}"
mkdir -p "$cache"
log() { echo "prepare: $*" >&2; }

ns="bgprep-$$"
sock="$cache/prep.sock"
cat > "$cache/prep.toml" <<TOML
state_dir = "$cache/state"
cache_dir = "$cache/cache"
socket_path = "$sock"
firecracker_bin = "$bin/banger-vmm-qemu"
dns_listen = "off"
# The daemon lives in a namespace with no way out; debootstrap downloads
# through the host's network, named for it below.
build_netns = "/run/netns/$ns-host"
TOML
ip netns add "$ns"
ip netns attach "$ns-host" $$
cleanup() {
  [ -n "${dpid:-}" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  # Only the name goes: the host's namespace lives on.
  ip netns del "$ns-host" 2>/dev/null || true
}
trap cleanup EXIT
# The daemon's log is root's only.
(umask 077 && touch "$cache/prep-bangerd.log") && chmod 0600 "$cache/prep-bangerd.log"
ip netns exec "$ns" "$bin/bangerd" --config "$cache/prep.toml" >>"$cache/prep-bangerd.log" 2>&1 &
dpid=$!
export BANGER_SOCKET="$sock"
for _ in $(seq 100); do "$bin/banger" version 2>/dev/null | grep -q '^daemon: bangerd' && break; sleep 0.1; done

log "kernel (log: $cache/state/kernels/*.log)"
"$bin/banger" kernel build >&2
kernel=$("$bin/banger" kernel ls --json | sed -n 's/.*"path": "\(.*\)".*/\1/p' | head -1)

hash=$(cat $(git ls-files 'internal/image/*' | grep -v '_test.go$' | sort) | sha256sum | cut -c1-10)
name="ci-$hash"
if ! "$bin/banger" image ls -q | grep -qx "$name"; then
  for old in $("$bin/banger" image ls -q | grep '^ci-' || true); do
    log "removing stale test image $old"
    "$bin/banger" image rm "$old" >&2 || true
  done
  log "building test image $name"
  "$bin/banger" image build "$name" >&2
fi
dir=$("$bin/banger" image inspect "$name" --json | sed -n 's/.*"artifact_dir": "\(.*\)".*/\1/p' | head -1)

bz=""
if [ -x scripts/fetch-test-bzimage.sh ]; then
  bz=$(BANGER_CACHE="$cache" scripts/fetch-test-bzimage.sh 2>>"$cache/prep-bangerd.log" || true)
fi

echo "BANGER_TEST_KERNEL=$kernel"
echo "BANGER_TEST_IMAGE_DIR=$dir"
echo "BANGER_TEST_SSH_KEY=$cache/state/ssh/id_ed25519"
echo "BANGER_TEST_CACHE=$cache/cache/images"
echo "BANGER_TEST_KERNEL_CACHE=$cache/cache/kernels"
[ -n "$bz" ] && echo "BANGER_TEST_BZIMAGE=$bz"
exit 0
