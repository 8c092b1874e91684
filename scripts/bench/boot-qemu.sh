#!/bin/bash
# scripts/bench/boot-qemu.sh IMAGE_DIR [SSH_PRIVATE_KEY]
#
# Boots a banger image by hand with plain QEMU, the way Firecracker would
# (microvm machine, PVH vmlinux, virtio-mmio disks, ip= on the kernel
# command line, a tap on a bridge in a throwaway network namespace), and
# prints the seconds from QEMU's start until the guest's SSH server answers
# (its banner), and, given the daemon's private key, until a root login
# runs a command. This is the baseline banger's own start path is compared
# against. Needs root, qemu-system-x86_64, ip, ssh.
#
# IMAGE_DIR holds vmlinux, rootfs.ext4 and work-seed.ext4 (what
# `banger image build` makes). Environment:
#   RUNS=n           boot n times, one after the other (default 1)
#   TIMEOUT=s        give up on a boot after s seconds (default 180)
#   ACCEL=tcg|kvm    QEMU accelerator (default tcg)
#   VCPUS=n MEM=MiB  the guest's size (default 1 vCPU, 512 MiB)
#   POLL=s           seconds between SSH attempts (default 0.05)
#   EXTRA_APPEND=... more kernel parameters
#   KEEP_CONSOLE=f   copy the last guest console log to f
#   SHOW_BOOT=1      after the login, print systemd-analyze's view of the boot
#   HOLD=s           keep the guest running s seconds after the login, for
#                    `ip netns exec bgbench-<pid> ssh root@172.31.99.2`
#
# Under TCG the guest kernel's TSC calibration against the PIT fails when
# the host is busy, and the boot hangs; the script therefore passes the
# host's TSC rate as tsc_early_khz (QEMU's TCG TSC runs at the host's rate).
set -euo pipefail

image=${1:?usage: $0 IMAGE_DIR [SSH_PRIVATE_KEY]}
key=${2:-}
runs=${RUNS:-1}
timeout=${TIMEOUT:-180}
accel=${ACCEL:-tcg}
vcpus=${VCPUS:-1}
mem=${MEM:-512}

for f in vmlinux rootfs.ext4 work-seed.ext4; do
	[ -f "$image/$f" ] || { echo "no $image/$f" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (netns, tap)" >&2; exit 1; }

ns=bgbench-$$
work=$(mktemp -d /var/tmp/bgbench.XXXXXX)
qemu_pid=
cleanup() {
	if [ -n "$qemu_pid" ]; then kill -9 "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
nsx() { ip netns exec "$ns" "$@"; }
nsx ip link set lo up
nsx ip link add br0 type bridge
nsx ip addr add 172.31.99.1/24 dev br0
nsx ip link set br0 up
nsx ip tuntap add dev tap0 mode tap
nsx ip link set tap0 master br0 up
guest=172.31.99.2

append_tsc=
if [ "$accel" = tcg ]; then
	mhz=$(awk -F': *' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
	[ -n "$mhz" ] && append_tsc="tsc_early_khz=$(awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }')"
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

banner() {
	# The SSH server's first bytes are "SSH-".
	nsx timeout 2 bash -c "exec 3<>/dev/tcp/$guest/22 && head -c 4 <&3" 2>/dev/null | grep -q '^SSH-'
}
login() {
	nsx ssh -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no \
		-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3 \
		root@"$guest" true 2>/dev/null
}

for run in $(seq 1 "$runs"); do
	cp --sparse=always "$image/rootfs.ext4" "$work/rootfs.ext4"
	cp --sparse=always "$image/work-seed.ext4" "$work/work.ext4"
	start=$(now)
	# Not through nsx: $! must be QEMU itself (ip netns exec execs it).
	# The machine banger-vmm-qemu runs (qemuvmm.QEMUArgs): its sandbox,
	# memfd guest memory, TCG cache cap, devices, cache modes and the
	# kernel command line bangerd gives (firecracker.BootArgs).
	accel_opt=$accel
	[ "$accel" = tcg ] && accel_opt="tcg,tb-size=256"
	ip netns exec "$ns" qemu-system-x86_64 \
		-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
		-object memory-backend-memfd,id=ram0,size="$mem"M,share=on \
		-M microvm,acpi=on,pit=on,pic=on,rtc=on,memory-backend=ram0 -accel "$accel_opt" \
		-device i8042 -nodefaults -no-user-config -no-reboot -display none \
		-smp "$vcpus" -m "$mem"M \
		-kernel "$image/vmlinux" \
		-append "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd ip=$guest::172.31.99.1:255.255.255.0:bench:eth0:off:172.31.99.1 systemd.hostname=bench $append_tsc ${EXTRA_APPEND:-} root=/dev/vda rw" \
		-drive id=root,file="$work/rootfs.ext4",format=raw,if=none,cache=unsafe -device virtio-blk-device,drive=root \
		-drive id=work,file="$work/work.ext4",format=raw,if=none,cache=writeback -device virtio-blk-device,drive=work \
		-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=06:00:ac:1f:63:02 \
		-serial file:"$work/console.log" &
	qemu_pid=$!
	t_banner= t_login=
	while :; do
		if ! kill -0 "$qemu_pid" 2>/dev/null; then echo "run $run: QEMU exited early" >&2; break; fi
		if [ "$(since "$start" | cut -d. -f1)" -ge "$timeout" ]; then echo "run $run: no SSH after ${timeout}s" >&2; break; fi
		if [ -z "$t_banner" ] && banner; then t_banner=$(since "$start"); fi
		if [ -n "$t_banner" ]; then
			if [ -z "$key" ]; then break; fi
			if login; then
				t_login=$(since "$start")
				if [ -n "${SHOW_BOOT:-}" ]; then
					nsx ssh -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no \
						-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@"$guest" \
						'systemctl is-system-running --wait; systemd-analyze; systemd-analyze blame | head -n 15; systemd-analyze critical-chain ssh.service' || true
				fi
				if [ -n "${HOLD:-}" ]; then
					echo "holding ${HOLD}s: ip netns exec $ns ssh -i $key root@$guest" >&2
					sleep "$HOLD"
				fi
				break
			fi
		fi
		sleep "${POLL:-0.05}"
	done
	if [ -n "$key" ]; then
		echo "run $run: ssh banner ${t_banner:-none} s, root login ${t_login:-none} s after QEMU start"
	else
		echo "run $run: ssh banner ${t_banner:-none} s after QEMU start"
	fi
	kill -9 "$qemu_pid" 2>/dev/null || true
	wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=
	if [ -n "${KEEP_CONSOLE:-}" ]; then cp "$work/console.log" "$KEEP_CONSOLE"; fi
done
