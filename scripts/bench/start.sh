#!/usr/bin/env bash
# Issue D's figures, measured in one run on this machine:
#  1. host-side time of `vm start` (request received → InstanceStart sent),
#     p50 and p99 over N starts (default 20), from bangerd's log;
#  2. banger's create → SSH-ready against booting the same image by hand
#     with plain QEMU to SSH (scripts/bench/boot-qemu.sh), RUNS times each;
#  3. bangerd's RSS with 0 and with 3 running VMs.
# Usage: scripts/bench/start.sh [N]   (root)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
n=${1:-20}
runs=${RUNS:-3}
bench_prepare
bench_daemon_start start

echo "== 1. host-side start time over $n starts (request → InstanceStart)"
"$bin/banger" vm create --no-start s1 --vcpus 1 --memory 384M >/dev/null
for i in $(seq "$n"); do
	"$bin/banger" vm start -q s1 >/dev/null
	"$bin/banger" vm kill s1 >/dev/null
done
grep -o 'msg="instance started".*host_side_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*host_side_ms=//' > "$bench_dir/host.txt"
echo "   samples: $(wc -l < "$bench_dir/host.txt"), p50 $(percentile 50 < "$bench_dir/host.txt") ms, p99 $(percentile 99 < "$bench_dir/host.txt") ms, max $(sort -n "$bench_dir/host.txt" | tail -1) ms"
grep -o 'msg="vm running".*ready_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*ready_ms=//' > "$bench_dir/ready.txt"
paste "$bench_dir/ready.txt" "$bench_dir/host.txt" | awk '{print $1 - $2}' > "$bench_dir/boot.txt"
echo "   InstanceStart → SSH answering: p50 $(percentile 50 < "$bench_dir/boot.txt") ms, p99 $(percentile 99 < "$bench_dir/boot.txt") ms"
"$bin/banger" vm rm s1 >/dev/null

echo "== 2. create → SSH ready: banger vs plain QEMU, same image, $runs runs each"
for i in $(seq "$runs"); do
	t0=$(date +%s.%N)
	"$bin/banger" vm create -q "c$i" --vcpus 1 --memory 512M >/dev/null
	t1=$(date +%s.%N)
	"$bin/banger" vm rm --force "c$i" >/dev/null
	printf '   banger vm create → ssh ready: %.2f s\n' "$(echo "$t1 - $t0" | bc)"
done
RUNS=$runs "$repo/scripts/bench/boot-qemu.sh" "$image_dir" "$ssh_key" 2>&1 | sed 's/^/   plain qemu: /'

echo "== 3. bangerd RSS"
dpid=$(pgrep -f "bangerd --config $bench_dir/cfg.toml" | head -1)
echo "   0 VMs: $(bench_rss_kb "$dpid") KiB"
for i in 1 2 3; do "$bin/banger" vm create -q "r$i" --vcpus 1 --memory 384M >/dev/null; done
sleep 12 # a stats poll or so
echo "   3 VMs: $(bench_rss_kb "$dpid") KiB"
