#!/usr/bin/env bash
# Issues D and 18's figures, measured in one run on this machine:
#  1. host-side time of `vm start` (request received → InstanceStart sent)
#     over N starts (default 20, the first start, which makes the disks,
#     included): p50 and p99 of each named start step, from the step
#     durations bangerd logs at debug level, and of the total; once with
#     the storage pool (storage_pool = "auto", which picks the pool where
#     the state dir cannot reflink and there is no device-mapper) and once
#     with storage_pool = "off", side by side;
#  2. banger's create → SSH-ready against booting the same image and
#     kernel by hand with plain QEMU, started with banger-vmm-qemu's
#     machine options, to a root login over SSH (scripts/bench/boot-qemu.sh),
#     RUNS times each, and the ratio of the means (issue 18: ≤ 1.03);
#  3. bangerd's RSS with 0 and with 3 running VMs.
# Usage: scripts/bench/start.sh [N]   (root; SECTIONS="1" runs only part 1)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
n=${1:-20}
runs=${RUNS:-3}
sections=${SECTIONS:-1 2 3}
bench_prepare
out=$(mktemp -d /tmp/bgbs.XXXXXX)

# start_samples MODE: N starts of one VM under a daemon with storage_pool
# = MODE; leaves MODE.steps ("step ms" lines) and MODE.total in $out.
start_samples() {
	bench_daemon_start "start-$1" "log_level = \"debug\"
storage_pool = \"$1\""
	"$bin/banger" vm create --no-start -q s1 --vcpus 1 --memory 384M >/dev/null 2>&1
	for i in $(seq "$n"); do
		"$bin/banger" vm start -q s1 >/dev/null
		"$bin/banger" vm kill s1 >/dev/null
	done
	"$bin/banger" vm inspect s1 | sed -n 's/^system disk: *//p' > "$out/$1.disk"
	grep -o 'step=start:[a-z-]* took_ms=[0-9.]*' "$bench_dir/bangerd.log" | sed 's/step=//; s/ took_ms=/ /' > "$out/$1.steps"
	grep -o 'msg="instance started".*host_side_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*host_side_ms=//' > "$out/$1.total"
	# The daemon's own part: the host-side total less the VMM's answer
	# to InstanceStart (banger-vmm-qemu starting QEMU).
	grep -o 'msg="instance started".*host_side_ms=[0-9]* vmm_start_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*host_side_ms=\([0-9]*\) vmm_start_ms=\([0-9]*\)/\1 \2/' | awk '{print $1 - $2}' > "$out/$1.daemon"
	grep -o 'msg="vm running".*ready_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*ready_ms=//' > "$out/$1.ready"
	bench_daemon_stop
	trap - EXIT
}

# stat MODE STEP P: the P-th percentile of a step's durations.
stat() { awk -v s="$2" '$1 == s {print $2}' "$out/$1.steps" | percentile "$3"; }

if [[ " $sections " == *" 1 "* ]]; then
	echo "== 1. host-side start over $n starts (first start included), ms: storage pool vs storage_pool = off (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
	start_samples auto
	start_samples off
	for m in auto off; do echo "   $m: system disk $(cat "$out/$m.disk")"; done
	printf '   %-26s %10s %10s   %10s %10s\n' step "pool p50" "pool p99" "off p50" "off p99"
	for st in $(awk '{print $1}' "$out/auto.steps" | awk '!seen[$0]++'); do
		printf '   %-26s %10s %10s   %10s %10s\n' "$st" "$(stat auto "$st" 50)" "$(stat auto "$st" 99)" "$(stat off "$st" 50)" "$(stat off "$st" 99)"
	done
	printf '   %-26s %10s %10s   %10s %10s\n' "host-side total" "$(percentile 50 < "$out/auto.total")" "$(percentile 99 < "$out/auto.total")" "$(percentile 50 < "$out/off.total")" "$(percentile 99 < "$out/off.total")"
	printf '   %-26s %10s %10s   %10s %10s\n' "  less the VMM's start" "$(percentile 50 < "$out/auto.daemon")" "$(percentile 99 < "$out/auto.daemon")" "$(percentile 50 < "$out/off.daemon")" "$(percentile 99 < "$out/off.daemon")"
	printf '   %-26s %10s %10s   %10s %10s\n' "request → SSH" "$(percentile 50 < "$out/auto.ready")" "$(percentile 99 < "$out/auto.ready")" "$(percentile 50 < "$out/off.ready")" "$(percentile 99 < "$out/off.ready")"
	printf '   %-26s %10s %21s\n' "first start:disks" "$(awk '$1 == "start:disks" {print $2; exit}' "$out/auto.steps")" "$(awk '$1 == "start:disks" {print $2; exit}' "$out/off.steps")"
	echo "   (host-side total: request received → InstanceStart answered; less the VMM's start: without the InstanceStart call, in which banger-vmm-qemu starts QEMU; start:guest-ready and start:ready are the guest's boot)"
fi
rm -rf "$out"
[[ " $sections " == *" 2 "* || " $sections " == *" 3 "* ]] || exit 0
bench_daemon_start start

echo "== 2. create → SSH ready: banger vs plain QEMU (the same machine options), same image and kernel, $runs runs each (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
: > "$bench_dir/banger.s"
: > "$bench_dir/qemu.s"
# Alternated, so a change in the machine's load weighs on both alike.
for i in $(seq "$runs"); do
	t0=$(date +%s.%N)
	"$bin/banger" vm create -q "c$i" --vcpus 1 --memory 512M >/dev/null
	t1=$(date +%s.%N)
	"$bin/banger" vm rm --force "c$i" >/dev/null 2>&1
	echo "$t1 - $t0" | bc >> "$bench_dir/banger.s"
	printf '   run %d: banger vm create → ssh ready: %.2f s\n' "$i" "$(tail -1 "$bench_dir/banger.s")"
	RUNS=1 VCPUS=1 MEM=512 "$repo/scripts/bench/boot-qemu.sh" "$image_dir" "$ssh_key" 2>&1 | tee "$bench_dir/qemu.out" | sed "s/^run 1/run $i/; s/^/   plain qemu: /"
	sed -n 's/.*root login \([0-9.]*\) s.*/\1/p' "$bench_dir/qemu.out" >> "$bench_dir/qemu.s"
done
mean() { awk '{s += $1; n++} END {if (n) printf "%.2f", s / n; else print "none"}' "$1"; }
ratio() { awk -v b="$1" -v q="$2" 'BEGIN {if (q + 0 > 0) printf "%.3f", b / q; else print "none"}'; }
bm=$(mean "$bench_dir/banger.s") qm=$(mean "$bench_dir/qemu.s")
bp=$(percentile 50 < "$bench_dir/banger.s") qp=$(percentile 50 < "$bench_dir/qemu.s")
echo "   mean: banger create → SSH $bm s, plain QEMU boot → login $qm s; ratio $(ratio "$bm" "$qm") (goal ≤ 1.03)"
echo "   median: banger $bp s, plain QEMU $qp s; ratio $(ratio "$bp" "$qp")"
[[ " $sections " == *" 3 "* ]] || exit 0

echo "== 3. bangerd RSS"
dpid=$(pgrep -f "bangerd --config $bench_dir/cfg.toml" | head -1)
echo "   0 VMs: $(bench_rss_kb "$dpid") KiB"
for i in 1 2 3; do "$bin/banger" vm create -q "r$i" --vcpus 1 --memory 384M >/dev/null; done
sleep 12 # a stats poll or so
echo "   3 VMs: $(bench_rss_kb "$dpid") KiB"
