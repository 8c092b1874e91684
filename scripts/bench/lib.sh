# Shared helpers of the benchmark scripts: a throwaway bangerd in a network
# namespace of its own, booting the image scripts/prepare-artifacts.sh made.
# Source it; needs root.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${BANGER_BIN_DIR:-$repo/bin}

# bench_prepare builds the checkout's binaries into bin/ (Go's build cache
# makes that quick), so a bench never measures binaries older than the
# code; BANGER_BIN_DIR names binaries to measure as they are.
bench_prepare() {
	[ "$(id -u)" = 0 ] || { echo "benchmarks need root" >&2; exit 2; }
	[ -n "${BANGER_BIN_DIR:-}" ] || "$repo/scripts/build.sh" "$bin" >&2
	if [ -z "${BANGER_TEST_IMAGE_DIR:-}" ]; then
		eval "$("$repo/scripts/prepare-artifacts.sh" "$bin")"
	fi
	image_dir=$BANGER_TEST_IMAGE_DIR
	ssh_key=$BANGER_TEST_SSH_KEY
}

# bench_daemon_start NAME [extra config]: a daemon with state in a temp dir.
bench_daemon_start() {
	bench_ns=bgbench-$1-$$
	bench_dir=$(mktemp -d /tmp/bgb.XXXXXX)
	# VMMs run as their own uids and must traverse to their directory.
	chmod 755 "$bench_dir"
	cat > "$bench_dir/cfg.toml" <<TOML
state_dir = "$bench_dir/state"
socket_path = "$bench_dir/sock"
firecracker_bin = "$bin/banger-vmm-qemu"
ssh_key_path = "$ssh_key"
tap_pool_size = 4
boot_timeout = "4m"
${2:-}
TOML
	ip netns add "$bench_ns"
	ip netns exec "$bench_ns" ip link set lo up
	ip netns exec "$bench_ns" "$bin/bangerd" --config "$bench_dir/cfg.toml" ${bench_daemon_args[@]+"${bench_daemon_args[@]}"} > "$bench_dir/bangerd.log" 2>&1 &
	bench_pid=$!
	export BANGER_SOCKET=$bench_dir/sock
	for _ in $(seq 100); do "$bin/banger" version 2>/dev/null | grep -q '^daemon: bangerd' && break; sleep 0.1; done
	"$bin/banger" image register base --kernel "$image_dir/vmlinux" --rootfs "$image_dir/rootfs.ext4" --work-seed "$image_dir/work-seed.ext4" >/dev/null
	trap bench_daemon_stop EXIT
}

# bench_daemon_args: extra bangerd flags. bench_unstarted_only=1: the bench
# never started a VM, so stopping skips removing VMs one by one (nothing
# of theirs lives outside the state dir).
bench_daemon_stop() {
	[ "${bench_unstarted_only:-}" = 1 ] || for vm in $("$bin/banger" vm ls -q 2>/dev/null); do "$bin/banger" vm rm --force "$vm" >/dev/null 2>&1 || true; done
	kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
	ip netns del "$bench_ns" 2>/dev/null || true
	rm -rf "$bench_dir"
}

# bench_rss_kb PID: resident memory of a process in KiB.
bench_rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# bench_cpu_ticks PID: user+system CPU ticks of a process.
bench_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# percentile P < numbers: the P-th percentile (nearest rank).
percentile() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; if (i>NR) i=NR; print a[i]}'; }
