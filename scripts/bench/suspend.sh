#!/usr/bin/env bash
# Issue H's figures, measured in one run on this machine, through bangerd
# and the banger CLI, with the Debian test image (scripts/prepare-artifacts.sh)
# in a VM of 2 vCPUs and 2 GiB left idle after it answers SSH
# (BANGER_BENCH_IDLE seconds, default 10):
#  1. `banger vm suspend` time and the saved state's size on disk;
#  2. `banger vm start` of the suspended VM until it answers SSH (the
#     daemon waits for SSH with the VM's host key and sets its clock)
#     against a cold `banger vm start` of the same VM until SSH answers,
#     and the ratio (the goal: resume ≤ 0.15 of the cold start);
#  3. the guest clock's offset from the host's right after the resume.
# The first suspend of a VM after a boot is slower than later ones (QEMU's
# first migration reads all of the guest's memory); each run is printed.
# Each is measured RUNS times (default 3); the medians are printed.
# Usage: scripts/bench/suspend.sh   (root; under the shared heavy lock)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
idle=${BANGER_BENCH_IDLE:-10}
if [ -z "${BANGER_BENCH_LOCKED:-}" ]; then
	exec env BANGER_BENCH_LOCKED=1 flock -o /tmp/banger-heavy.lock "$0" "$@"
fi
bench_prepare
bench_daemon_start suspend 'log_level = "debug"'

b() { "$bin/banger" "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
inspect() { b vm inspect s1 --json | python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

echo "== VM: Debian test image, 2 vCPUs, 2 GiB; idle ${idle}s after SSH before each suspend; $runs runs"
b vm create -q s1 --vcpus 2 --memory 2G >/dev/null
: > "$bench_dir/suspend.txt"; : > "$bench_dir/bytes.txt"; : > "$bench_dir/resume.txt"; : > "$bench_dir/cold.txt"; : > "$bench_dir/skew.txt"
for i in $(seq "$runs"); do
	sleep "$idle"
	t0=$(now); b vm suspend -q s1 >/dev/null; t1=$(now)
	secs "$t0" "$t1" >> "$bench_dir/suspend.txt"
	[ "$(inspect "v['state']")" = suspended ] || { echo "not suspended" >&2; exit 1; }
	inspect "v['runtime']['saved_state_bytes']" >> "$bench_dir/bytes.txt"
	t0=$(now); b vm start -q s1 >/dev/null; t1=$(now)
	secs "$t0" "$t1" >> "$bench_dir/resume.txt"
	err=$(inspect "v['runtime'].get('last_error','')")
	[ -z "$err" ] || { echo "the resume fell back to a boot: $err" >&2; exit 1; }
	# The guest's clock against the host's: the guest reads its clock
	# when the host's line reaches it; the host's time is the middle of
	# that round trip.
	coproc probe { b exec s1 -- sh -c 'echo ready; read x; date +%s.%N'; }
	read -r _ <&"${probe[0]}"
	h0=$(now); echo go >&"${probe[1]}"; read -r g <&"${probe[0]}"; h1=$(now)
	wait "$probe_PID" || true
	echo "$g - ($h0 + $h1) / 2" | bc -l >> "$bench_dir/skew.txt"
	printf '   run %d: suspend %.2f s, saved %s bytes; resume → SSH %.2f s; guest clock %+.3f s off the host'"'"'s (probe round trip %.3f s)\n' \
		"$i" "$(tail -1 "$bench_dir/suspend.txt")" "$(tail -1 "$bench_dir/bytes.txt")" "$(tail -1 "$bench_dir/resume.txt")" "$(tail -1 "$bench_dir/skew.txt")" "$(secs "$h0" "$h1")"
done
for i in $(seq "$runs"); do
	b vm stop -q s1 >/dev/null
	t0=$(now); b vm start -q s1 >/dev/null; t1=$(now)
	secs "$t0" "$t1" >> "$bench_dir/cold.txt"
	printf '   run %d: cold start → SSH %.2f s\n' "$i" "$(tail -1 "$bench_dir/cold.txt")"
done

s=$(median < "$bench_dir/suspend.txt"); by=$(median < "$bench_dir/bytes.txt")
r=$(median < "$bench_dir/resume.txt"); c=$(median < "$bench_dir/cold.txt"); k=$(median < "$bench_dir/skew.txt")
echo "== medians over $runs runs"
printf '   suspend: %.2f s; saved state: %s bytes (%.1f MiB) for 2 GiB of guest memory\n' "$s" "$by" "$(echo "$by / 1048576" | bc -l)"
printf '   resume → SSH answering: %.2f s; cold start → SSH answering: %.2f s; ratio %.3f (goal ≤ 0.15)\n' "$r" "$c" "$(echo "$r / $c" | bc -l)"
printf '   guest clock right after the resume: %+.3f s off the host'"'"'s (negative: behind)\n' "$k"
grep -o 'msg="vm resumed".*ready_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*ready_ms=/   daemon-side resume (request → SSH and clock set): /; s/$/ ms/' || true
grep -o 'msg="vm suspended".*took_ms=[0-9]*' "$bench_dir/bangerd.log" | sed 's/.*took_ms=/   daemon-side suspend: /; s/$/ ms/' || true
echo "== where the time goes (the last run's steps, from bangerd's log)"
for op in suspend resume; do
	grep -o "step=$op:[a-z-]* took_ms=[0-9.]*" "$bench_dir/bangerd.log" | sed 's/^step=//; s/ took_ms=/ /' |
		awk -v op="$op" '{t[$1]=$2; if (!($1 in seen)) {seen[$1]=1; order[++n]=$1}} END {printf "   %s:", op; for (i=1;i<=n;i++) printf " %s %.0fms", substr(order[i], length(op)+2), t[order[i]]; print ""}'
done
grep -o 'msg="restored guest[^"]*".*' "$bench_dir/bangerd.log" | sed 's/^msg=/   /; s/ vm=[^ ]* id=[^ ]*//' || true
