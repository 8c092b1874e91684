#!/usr/bin/env bash
# Issue 18's control-plane figures, no guest booted, against a throwaway
# bangerd in its own network namespace (lib.sh):
#   1. `vm create --no-start` + `vm rm` pairs per second with 1 and with 8
#      concurrent clients, through the API client over the unix socket
#      (scripts/bench/controlbench: the daemon's own throughput);
#   2. the same with the CLI, one process per call (what a shell loop
#      sees; bounded by process start-up, shown next to `banger version`);
#   3. `vm ls` latency (p50, p99) with VMS VMs in a /22: the API call
#      alone, then the CLI process end to end.
# With PROFILE=FILE it also writes a CPU profile of bangerd taken during
# the 8-client API run (bangerd --pprof-socket; `go tool pprof FILE`).
# Usage: scripts/bench/control.sh [OPS_PER_CLIENT] [VMS]   (root)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ops=${1:-200}
vms=${2:-1000}
cli_ops=${CLI_OPS:-20}
bench_prepare
export PATH=$PATH:/usr/local/go/bin
cb=$(mktemp /tmp/controlbench.XXXXXX)
(cd "$repo" && CGO_ENABLED=0 go build -o "$cb" ./scripts/bench/controlbench)
bench_daemon_args=(--pprof-socket "/tmp/bgb-pprof-$$.sock")
bench_unstarted_only=1
bench_daemon_start control 'cidr = "22"
log_level = "warn"'
trap 'bench_daemon_stop; rm -f "$cb" "/tmp/bgb-pprof-$$.sock"' EXIT

echo "== create --no-start + rm pairs (load average now: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs)"
"$cb" -mode pairs -clients 1 -ops "$ops"
if [ -n "${PROFILE:-}" ]; then
	"$cb" -mode profile -pprof-socket "/tmp/bgb-pprof-$$.sock" -out "$PROFILE" -seconds "${PROFILE_SECONDS:-8}" &
	prof_pid=$!
fi
"$cb" -mode pairs -clients 8 -ops "$ops"
if [ -n "${PROFILE:-}" ]; then
	wait "$prof_pid"
	echo "   CPU profile of bangerd during the 8-client run: $PROFILE"
fi

# client ID: cli_ops create/rm pairs of VMs named cID-N, one CLI process
# per call.
client() {
	set -e
	for i in $(seq "$cli_ops"); do
		"$bin/banger" vm create --no-start -q "c$1-$i" >/dev/null 2>>"$bench_dir/cli.err" || { cat "$bench_dir/cli.err" >&2; exit 1; }
		"$bin/banger" vm rm "c$1-$i" >/dev/null 2>>"$bench_dir/cli.err" || { cat "$bench_dir/cli.err" >&2; exit 1; }
	done
}
export -f client
export bin cli_ops bench_dir
for clients in 1 8; do
	t0=$(date +%s%N)
	seq "$clients" | xargs -P "$clients" -I{} bash -c 'client {}'
	t1=$(date +%s%N)
	awk -v n=$((clients * cli_ops)) -v ns=$((t1 - t0)) -v c="$clients" 'BEGIN {printf "   CLI, %d client(s): %d pairs in %.2f s = %.0f ops/s (two banger processes per pair)\n", c, n, ns/1e9, n/(ns/1e9)}'
done
: > "$bench_dir/version.txt"
for _ in $(seq 10); do
	t0=$(date +%s%N); "$bin/banger" version >/dev/null; t1=$(date +%s%N)
	echo $(( (t1 - t0) / 1000000 )) >> "$bench_dir/version.txt"
done
echo "   (one \`banger version\` process: p50 $(percentile 50 < "$bench_dir/version.txt") ms)"

echo "== vm ls with $vms VMs (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
"$cb" -mode fill -vms "$vms"
"$cb" -mode ls -runs 50
: > "$bench_dir/ls.txt"
for _ in $(seq 20); do
	t0=$(date +%s%N)
	"$bin/banger" vm ls >/dev/null
	t1=$(date +%s%N)
	echo $(( (t1 - t0) / 1000000 )) >> "$bench_dir/ls.txt"
done
echo "   CLI \`banger vm ls\` with $("$bin/banger" vm ls -q | wc -l) VMs: p50 $(percentile 50 < "$bench_dir/ls.txt") ms, p99 $(percentile 99 < "$bench_dir/ls.txt") ms over 20 calls (process start, API call, table printed)"
