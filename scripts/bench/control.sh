#!/usr/bin/env bash
# Issue 18's control-plane figures, no guest booted: `vm create --no-start`
# followed by `vm rm` as ops per second (one op = a create and its rm)
# with 1 and with 8 concurrent clients, each a loop of banger CLI calls;
# then `vm ls` latency (p50, p99 of 20 calls) with VMS VMs (default 1000,
# in a /22 so they fit).
# Usage: scripts/bench/control.sh [OPS_PER_CLIENT] [VMS]   (root)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ops=${1:-100}
vms=${2:-1000}
bench_prepare
bench_daemon_start control 'cidr = "22"
log_level = "warn"'

# client ID: ops create/rm pairs of VMs named cID-N.
client() {
	set -e
	for i in $(seq "$ops"); do
		"$bin/banger" vm create --no-start -q "c$1-$i" >/dev/null 2>&1
		"$bin/banger" vm rm "c$1-$i" >/dev/null 2>&1
	done
}
export -f client
export bin ops

echo "== create --no-start + rm, $ops per client (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
for clients in 1 8; do
	t0=$(date +%s.%N)
	seq "$clients" | xargs -P "$clients" -I{} bash -c 'client {}'
	t1=$(date +%s.%N)
	awk -v n=$((clients * ops)) -v t="$(echo "$t1 - $t0" | bc)" -v c="$clients" 'BEGIN {printf "   %d client(s): %d ops in %.2f s = %.0f ops/s\n", c, n, t, n/t}'
done

echo "== vm ls with $vms VMs"
seq "$vms" | xargs -P 8 -I{} "$bin/banger" vm create --no-start -q "l{}" >/dev/null 2>&1
: > "$bench_dir/ls.txt"
for i in $(seq 20); do
	t0=$(date +%s%N)
	"$bin/banger" vm ls >/dev/null
	t1=$(date +%s%N)
	echo $(( (t1 - t0) / 1000000 )) >> "$bench_dir/ls.txt"
done
echo "   $("$bin/banger" vm ls -q | wc -l) VMs: vm ls p50 $(percentile 50 < "$bench_dir/ls.txt") ms, p99 $(percentile 99 < "$bench_dir/ls.txt") ms (CLI process included)"
