#!/bin/bash
# scripts/bench/snapshot.sh
#
# Prints what a snapshot costs and what loading one saves, on this host:
# the Debian test image (BANGER_TEST_IMAGE_DIR, made by
# scripts/prepare-artifacts.sh) booted on banger-vmm-qemu as bangerd runs it
# (an unprivileged uid, disks and tap passed as descriptors), 2 vCPUs and
# 2 GiB, left idle after SSH answers (BANGER_BENCH_IDLE, default 10s);
# then the snapshot's time and file sizes, and a new VMM loading it until
# SSH answers with the daemon's key (BANGER_TEST_SSH_KEY), against the cold
# boot until SSH, with the ratio. It runs BenchmarkSnapshotSSH in a network
# namespace it creates (the guest's traffic stays there), under the shared
# heavy lock. Needs root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "needs root (netns, tap, an unprivileged VMM uid)" >&2; exit 2; }
if [ -z "${BANGER_TEST_IMAGE_DIR:-}" ] || [ -z "${BANGER_TEST_KERNEL:-}" ]; then
	[ -s /tmp/banger-artifacts.env ] || { echo "set BANGER_TEST_IMAGE_DIR, BANGER_TEST_KERNEL and BANGER_TEST_SSH_KEY (scripts/prepare-artifacts.sh prints them)" >&2; exit 2; }
	set -a; . /tmp/banger-artifacts.env; set +a
fi
export PATH=$PATH:/usr/local/go/bin

work=$(mktemp -d /tmp/bgsnap.XXXXXX)
ns=bgsnap-$$
cleanup() {
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

(cd "$repo" && go test -c -o "$work/firecracker.test" ./internal/firecracker)
ip netns add "$ns"
cd "$repo/internal/firecracker"
BANGER_BENCH_NETNS=1 flock /tmp/banger-heavy.lock \
	ip netns exec "$ns" "$work/firecracker.test" -test.run '^$' -test.bench '^BenchmarkSnapshotSSH$' -test.benchtime 1x
