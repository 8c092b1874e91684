#!/usr/bin/env bash
# From a fresh clone to a VM you can use, in one command (as root):
#
#   ./scripts/quickstart.sh [--host-network] [VM_NAME]
#
# It installs banger (Debian packages, binaries in /usr/local/bin, the
# banger group, /etc/banger/bangerd.toml), starts bangerd in the
# background, builds the guest kernel and the default Debian image (about
# 15 minutes the first time, seconds afterwards), creates the VM (default
# name: dev), and uses it: a command over exec, a file copied in and out.
#
# By default bangerd runs in a network namespace of its own ("banger"), so
# guests and their traffic never touch the host's network; you still reach
# them with banger ssh/exec/cp, which go through the daemon's socket. With
# --host-network bangerd uses the host's network, and `--nat` VMs get
# internet access through it.
set -euo pipefail
cd "$(dirname "$0")/.."
host_network=0
vm=dev
for arg in "$@"; do
	case "$arg" in
	--host-network) host_network=1 ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	-*) echo "unknown option $arg" >&2; exit 2 ;;
	*) vm=$arg ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "quickstart.sh must run as root (sudo ./scripts/quickstart.sh)" >&2; exit 2; }
step() { printf '\n==> %s\n' "$*"; }

step "installing banger"
./scripts/install.sh

export PATH="/usr/local/bin:$PATH"
if banger version 2>/dev/null | grep -q '^daemon: bangerd'; then
	step "bangerd is already running"
else
	step "starting bangerd (log: /var/log/bangerd.log)"
	mkdir -p /run/banger
	# The daemon's log names every user's VMs, images and paths: root
	# only, whatever the umask.
	(umask 077 && touch /var/log/bangerd.log)
	chmod 0600 /var/log/bangerd.log
	if [ "$host_network" -eq 1 ]; then
		nohup bangerd >>/var/log/bangerd.log 2>&1 &
	else
		ip netns list | grep -qw '^banger' || ip netns add banger
		# Image builds download through the host's network, named here.
		[ -e /run/netns/banger-host ] || ip netns attach banger-host $$
		grep -q '^build_netns' /etc/banger/bangerd.toml || printf '\n# Set by quickstart.sh: bangerd runs in netns "banger" and downloads\n# through the host network, named banger-host.\nbuild_netns = "/run/netns/banger-host"\n' >> /etc/banger/bangerd.toml
		ip netns exec banger ip link set lo up
		nohup ip netns exec banger bangerd >>/var/log/bangerd.log 2>&1 &
	fi
	echo $! > /run/banger/bangerd.pid
	for _ in $(seq 100); do banger version 2>/dev/null | grep -q '^daemon: bangerd' && break; sleep 0.1; done
	banger version
fi

step "checking the host"
banger doctor || true

step "building the guest kernel (about 10 minutes the first time)"
banger kernel build

step "building the default image"
if banger image ls -q | grep -qx default; then
	echo "image default already built"
else
	banger image build
fi

step "creating VM $vm"
if banger vm ls -q | grep -qx "$vm"; then
	banger vm start "$vm" 2>/dev/null || true
else
	banger vm create "$vm"
fi

step "using it"
banger exec "$vm" -- uname -a
banger exec "$vm" -- sh -c 'echo "hello from $(hostname), $(nproc) vCPU, $(free -m | awk "/Mem/ {print \$2}") MiB, /root on $(findmnt -n -o SOURCE /root)"'
tmp=$(mktemp)
echo "a file from the host" > "$tmp"
banger cp "$tmp" "$vm:/root/from-host.txt"
banger exec "$vm" -- sh -c 'cat /root/from-host.txt; echo "and back" > /root/to-host.txt'
banger cp "$vm:/root/to-host.txt" "$tmp"
cat "$tmp"
rm -f "$tmp"
banger vm ls

cat <<TXT

Done. Next:
  banger ssh $vm                 a shell in the VM
  banger exec $vm -- CMD         run a command
  banger vm stop $vm / start     keep /root and system changes
  banger vm rm --force $vm       throw it away
Add users to the banger group (usermod -aG banger USER) to let them use it.
TXT
