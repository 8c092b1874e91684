#!/usr/bin/env bash
# Issue I's fork figures, measured in one run on this machine through
# bangerd and the banger CLI, with the Debian test image
# (scripts/prepare-artifacts.sh): a VM of 2 vCPUs and 2 GiB, left idle
# BANGER_BENCH_IDLE seconds (default 10) after it answers SSH, forked into
# CHILDREN children (default 4). Printed: the source's pause (from the
# daemon's progress and its step log: snapshot and disk copies), the time
# from the fork request until every child answers SSH (the CLI returns
# only once each child has answered on the bridge with its own key), and
# a fresh SSH round trip to each child afterwards. Then warm create
# against cold create (issue 14's goal: warm at most 2 s): the image is
# warmed (`banger image warm`, WARM_VCPUS, default 2, and WARM_MEMORY,
# default 1G), and `vm create` → an SSH round trip with the user's key
# (`banger ssh`) is timed for WARM_RUNS VMs (default 3) made from the warm
# state and as many booted cold (`--cold`), each removed before the next;
# `vm create` alone (it returns once the VM answers SSH on its own
# address) is printed beside it; then, in as many runs again, vm create →
# the first SSH banner read from the VM (no login).
# The load average is printed: figures taken on a busy machine are noisy.
# Usage: scripts/bench/fork.sh   (root; under the shared heavy lock)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
children=${CHILDREN:-4}
idle=${BANGER_BENCH_IDLE:-10}
if [ -z "${BANGER_BENCH_LOCKED:-}" ]; then
	exec env BANGER_BENCH_LOCKED=1 flock -o /tmp/banger-heavy.lock "$0" "$@"
fi
bench_prepare
bench_daemon_start fork 'log_level = "debug"'

b() { "$bin/banger" "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== VM: Debian test image, 2 vCPUs, 2 GiB; idle ${idle}s after SSH; forked into $children children"
b vm create -q src --vcpus 2 --memory 2G >/dev/null
sleep "$idle"
t0=$(now)
b vm fork src --count "$children" 2> "$bench_dir/fork.err" >/dev/null || { cat "$bench_dir/fork.err" >&2; exit 1; }
t1=$(now)
pause=$(grep -o 'src paused for [0-9]*ms[^;]*' "$bench_dir/fork.err" | head -1)
printf '   source: %s\n' "${pause:-?}"
printf '   fork request → all %d children answer SSH (each on its own address, its own key): %.2f s\n' "$children" "$(secs "$t0" "$t1")"
for i in $(seq "$children"); do
	c0=$(now); b exec "src-$i" -- true; c1=$(now)
	printf '   src-%d: %s, exec round trip %.2f s\n' "$i" "$(b vm inspect "src-$i" --json | python3 -c "import json,sys; v=json.load(sys.stdin); print(v['runtime']['guest_ip'], v['state'])")" "$(secs "$c0" "$c1")"
done
echo "== where the time goes (bangerd's step log)"
grep -o 'step=fork:[a-z-]* took_ms=[0-9.]*' "$bench_dir/bangerd.log" | sed 's/^step=//; s/ took_ms=/ /' |
	awk '{printf "   %s %.0fms\n", $1, $2}'
grep -o 'msg="fork child \(re-identified\|admitted\)".*' "$bench_dir/bangerd.log" | sed 's/^msg=/   /' || true
grep -o 'msg=forked.*' "$bench_dir/bangerd.log" | sed 's/^msg=/   /' || true
for i in $(seq "$children"); do b vm rm --force "src-$i" >/dev/null 2>&1; done
b vm rm --force src >/dev/null 2>&1

wv=${WARM_VCPUS:-2}
wm=${WARM_MEMORY:-1G}
runs=${WARM_RUNS:-3}
logmark=$(wc -l < "$bench_dir/bangerd.log")
echo "== warm create against cold create: $wv vCPUs, $wm; $runs of each; vm create → SSH with the user's key (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
t0=$(now)
b image warm base --vcpus "$wv" --memory "$wm" -q >/dev/null
t1=$(now)
printf '   image warm (boot once, snapshot, keep): %.2f s; %s\n' "$(secs "$t0" "$t1")" "$(b image inspect base | sed -n 's/^warm state: *//p')"
for how in warm cold; do
	flag=; [ "$how" = cold ] && flag=--cold
	total=0
	ctotal=0
	for i in $(seq "$runs"); do
		t0=$(now)
		b vm create -q "$how$i" --vcpus "$wv" --memory "$wm" $flag >/dev/null
		tc=$(now)
		b ssh "$how$i" -- true
		t1=$(now)
		took=$(secs "$t0" "$t1")
		ctook=$(secs "$t0" "$tc")
		total=$(echo "$total + $took" | bc)
		ctotal=$(echo "$ctotal + $ctook" | bc)
		printf '   %s create → ssh #%d: %.2f s (vm create returned, the VM answering SSH on its own address: %.2f s; %s)\n' "$how" "$i" "$took" "$ctook" "$(b vm inspect "$how$i" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['runtime'].get('created_from', '?'))")"
		b vm rm --force "$how$i" >/dev/null 2>&1
	done
	printf '   %s create → ssh, mean of %d: %.2f s (vm create alone: %.2f s)\n' "$how" "$runs" "$(echo "$total / $runs" | bc -l)" "$(echo "$ctotal / $runs" | bc -l)"
	# Separate runs, so the SSH round trips above meet an sshd nothing
	# connected to yet: vm create, then at once the SSH server's banner
	# read from the VM's address (a fresh connection: sshd forks and
	# starts its per-connection process to send it). The VM's address is
	# looked up between the two; that lookup is not counted.
	btotal=0
	for i in $(seq "$runs"); do
		t0=$(now)
		b vm create -q "$how-b$i" --vcpus "$wv" --memory "$wm" $flag >/dev/null
		tc=$(now)
		vip=$(b vm inspect "$how-b$i" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['runtime']['guest_ip'])")
		tb0=$(now)
		banner=$(ip netns exec "$bench_ns" timeout 10 bash -c "exec 3<>/dev/tcp/$vip/22 && head -c 7 <&3")
		tb1=$(now)
		[ "$banner" = "SSH-2.0" ] || { echo "no SSH banner from $how-b$i: $banner" >&2; exit 1; }
		took=$(echo "$tc - $t0 + $tb1 - $tb0" | bc)
		btotal=$(echo "$btotal + $took" | bc)
		printf '   %s create → the SSH banner #%d: %.2f s\n' "$how" "$i" "$took"
		b vm rm --force "$how-b$i" >/dev/null 2>&1
	done
	printf '   %s create → the SSH banner, mean of %d: %.2f s\n' "$how" "$runs" "$(echo "$btotal / $runs" | bc -l)"
done
grep -o 'step=warm-create:[a-z-]* took_ms=[0-9.]*' "$bench_dir/bangerd.log" | sed 's/^step=//; s/ took_ms=/ /' |
	awk '{s[$1]+=$2; n[$1]++} END {for (k in s) printf "   %s mean %.0fms\n", k, s[k]/n[k]}' | sort
# The warm creates' resumes: each step's mean, then each re-identification's
# parts (reached: restore until the old address answers SSH;
# identity_clock_readdress: the one perl process, which also adds the user's
# keys and hands over the re-address; own_address: until the new address
# answers TCP through the quarantine; a child with files to sync or branches
# to rename shows identity_clock, first_boot or branches_renamed and
# readdress_sent instead) and the admission's TCP check.
tail -n +"$((logmark + 1))" "$bench_dir/bangerd.log" | grep -o 'step=resume:[a-z-]* took_ms=[0-9.]*' | sed 's/^step=//; s/ took_ms=/ /' |
	awk '{s[$1]+=$2; n[$1]++} END {for (k in s) printf "   %s mean %.0fms\n", k, s[k]/n[k]}' | sort
tail -n +"$((logmark + 1))" "$bench_dir/bangerd.log" | grep -o 'msg="fork child \(re-identified\|admitted\)".*' | sed 's/^msg=/   /' || true
b image warm base --rm >/dev/null
