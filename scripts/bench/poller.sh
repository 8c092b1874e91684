#!/usr/bin/env bash
# Issue E's figures: the stats poller's CPU cost per VM per poll (bangerd's
# CPU time over a window with 3 idle VMs, minus the same window with none,
# divided by VMs × polls), and the time from a VMM's death to the stale
# sweep cleaning it up.
# Usage: scripts/bench/poller.sh [SECONDS]   (root)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
window=${1:-60}
bench_prepare
bench_daemon_start poller 'stats_poll_interval = "1s"
stale_sweep_interval = "5s"'
dpid=$(pgrep -f "bangerd --config $bench_dir/cfg.toml" | head -1)
hz=$(getconf CLK_TCK)

measure() { # seconds → CPU ms of bangerd over the window
	local a b
	a=$(bench_cpu_ticks "$dpid"); sleep "$1"; b=$(bench_cpu_ticks "$dpid")
	echo $(( (b - a) * 1000 / hz ))
}
echo "== poller cost: ${window}s windows, 1 s poll interval"
idle_ms=$(measure "$window")
echo "   0 VMs: bangerd used $idle_ms ms CPU"
for i in 1 2 3; do "$bin/banger" vm create -q "p$i" --vcpus 1 --memory 384M >/dev/null; done
sleep 3
busy_ms=$(measure "$window")
echo "   3 VMs: bangerd used $busy_ms ms CPU"
awk -v a="$idle_ms" -v b="$busy_ms" -v w="$window" 'BEGIN {printf "   per VM per poll: %.2f ms CPU (%d polls × 3 VMs)\n", (b-a)/(3*w), w}'

echo "== VMM death → sweep cleanup (sweep every 5 s), 3 trials"
for i in 1 2 3; do
	vm="p$i"
	pid=$("$bin/banger" vm inspect "$vm" --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
	t0=$(date +%s.%N)
	kill -9 "$pid"
	while ! "$bin/banger" vm inspect "$vm" --json | grep -q '"state": "stopped"'; do sleep 0.1; done
	t1=$(date +%s.%N)
	printf '   trial %d: %.2f s\n' "$i" "$(echo "$t1 - $t0" | bc)"
done
