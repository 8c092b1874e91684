#!/usr/bin/env bash
# Installs the Debian packages banger and its tests need. Fast when they are
# already there (no apt-get update). Run as root.
set -euo pipefail

packages=(
  # VMs: banger-vmm-qemu runs guests with QEMU where Firecracker cannot run
  qemu-system-x86 qemu-utils
  # network: bridge, taps, NAT
  iproute2 iptables procps
  # guest isolation and egress policy (nft)
  nftables
  # disks: loop devices, ext4/xfs/btrfs, device-mapper tools
  util-linux e2fsprogs xfsprogs btrfs-progs dmsetup
  # images: debootstrap and the kernel build
  debootstrap linux-source build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
  # access and workspaces
  openssh-client git
  # images from Dockerfiles: image build --dockerfile runs buildah as the user
  buildah
  # tests: busybox guests, DNS queries
  busybox-static
  ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || echo "deps: apt-get update reported errors (an unreachable third-party source?); installing anyway" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
