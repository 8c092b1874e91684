#!/bin/bash
# scripts/bench/workspace.sh IMAGE_DIR SSH_PRIVATE_KEY
#
# Measures `banger workspace prepare` on a real tree, in one run, into one
# VM: full_copy against the plain `tar -c | ssh ... tar -x` of the same
# directory (through the daemon's ssh ProxyCommand, `banger exec`), and
# shallow_overlay against full_copy on the same repository with a long
# history. Needs root (a throwaway network namespace, a bridge, a tap),
# qemu-system-x86_64, git, go.
#
# The tree is the Go source tree of this machine's toolchain
# ($GOROOT/src: ~11k files, ~150 MiB), committed into a fresh repository,
# on top of which a synthetic history of $HISTORY commits is generated
# with git fast-import (each commit rewrites one of 200 files with
# $BLOB_BYTES of pseudo-random text, so the history weighs something and
# does not delta away); the result is repacked like a real clone.
#
# IMAGE_DIR holds vmlinux, rootfs.ext4 and work-seed.ext4 (what
# `banger image build` makes); SSH_PRIVATE_KEY is the daemon key the image
# trusts. Environment:
#   HISTORY=n      synthetic commits (default 5000)
#   BLOB_BYTES=n   size of each synthetic file version (default 8192)
#   REPS=n         repeat each measurement n times, interleaved (default 2)
#   VCPUS, MEMORY  the VM's size (default 2, 2G)
#   SHALLOW=0      skip the shallow_overlay rounds
#   KEEP=1         keep the work directory (/var/tmp/bgwsbench.*)
set -euo pipefail

image=${1:?usage: $0 IMAGE_DIR SSH_PRIVATE_KEY}
key=${2:?usage: $0 IMAGE_DIR SSH_PRIVATE_KEY}
history=${HISTORY:-5000}
blob=${BLOB_BYTES:-8192}
reps=${REPS:-2}
vcpus=${VCPUS:-2}
memory=${MEMORY:-2G}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"

for f in vmlinux rootfs.ext4 work-seed.ext4; do
	[ -f "$image/$f" ] || { echo "no $image/$f" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, bridge, tap)" >&2; exit 1; }
for t in git go qemu-system-x86_64 ip tar; do
	command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done

ns=bgwsb-$$
work=$(mktemp -d /var/tmp/bgwsbench.XXXXXX)
chmod 755 "$work"
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then
		"$work/bin/banger" --socket "$work/bangerd.sock" vm rm --force bench >/dev/null 2>&1 || true
		kill "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
	ip netns del "$ns" 2>/dev/null || true
	if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT INT TERM

say() { printf '== %s\n' "$*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

say "building banger"
GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -o "$work/bin/" ./cmd/...
banger() { "$work/bin/banger" --socket "$work/bangerd.sock" "$@"; }

# The repository: the Go source tree, then a long synthetic history.
repo=$work/src/go-tree
goroot=$(go env GOROOT)
say "making the repository from $goroot/src with $history synthetic commits"
mkdir -p "$repo"
cp -a "$goroot/src/." "$repo/"
export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=Bench GIT_AUTHOR_EMAIL=bench@example.com \
	GIT_COMMITTER_NAME=Bench GIT_COMMITTER_EMAIL=bench@example.com \
	GIT_AUTHOR_DATE='1700000000 +0000' GIT_COMMITTER_DATE='1700000000 +0000'
git -C "$repo" init -q -b main
git -C "$repo" config user.name Bench
git -C "$repo" config user.email bench@example.com
git -C "$repo" add -A
git -C "$repo" commit -qm "the Go source tree"
awk -v n="$history" -v size="$blob" 'BEGIN {
	srand(42)
	hex = "0123456789abcdef"
	for (i = 1; i <= n; i++) {
		body = ""
		while (length(body) < size) {
			line = ""
			for (j = 0; j < 63; j++) line = line substr(hex, int(rand() * 16) + 1, 1)
			body = body line "\n"
		}
		msg = "synthetic change " i "\n"
		printf "commit refs/heads/main\n"
		printf "committer Bench <bench@example.com> %d +0000\n", 1700000000 + i
		printf "data %d\n%s", length(msg), msg
		if (i == 1) printf "from refs/heads/main^0\n"
		printf "M 100644 inline history/h%03d.txt\n", i % 200
		printf "data %d\n%s\n", length(body), body
	}
}' | git -C "$repo" fast-import --quiet
git -C "$repo" reset -q --hard
git -C "$repo" repack -adq
git -C "$repo" prune
files=$(git -C "$repo" ls-files | wc -l)
commits=$(git -C "$repo" rev-list --count HEAD)
tree_mib=$(du -sm --exclude=.git "$repo" | cut -f1)
git_mib=$(du -sm "$repo/.git" | cut -f1)

# A daemon in a throwaway network namespace, and one VM.
say "starting bangerd in netns $ns"
cat >"$work/bangerd.toml" <<EOF
state_dir = "$work/state"
socket_path = "$work/bangerd.sock"
firecracker_bin = "$work/bin/banger-vmm-qemu"
ssh_key_path = "$key"
tap_pool_size = 1
boot_timeout = "4m"
default_image_name = "base"
EOF
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" env PATH="$work/bin:$PATH" "$work/bin/bangerd" --config "$work/bangerd.toml" >"$work/bangerd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
	banger version 2>/dev/null | grep -q 'daemon: bangerd' && break
	sleep 0.2
done
banger image register base --kernel "$image/vmlinux" --rootfs "$image/rootfs.ext4" --work-seed "$image/work-seed.ext4" >/dev/null
say "creating the VM ($vcpus vCPUs, $memory)"
banger vm create bench --vcpus "$vcpus" --memory "$memory" --disk-size 16G -q >/dev/null

# Each measurement starts with the guest's page cache dropped and its
# disk synced; the host's copy of the tree is warm for all of them.
settle() { banger exec bench -- sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches' >/dev/null; }
sent() { sed -n 's/.*upload: sent \(.*\) (.*/\1/p' "$1" | tail -1; }
# split prints the daemon's side of a prepare from its progress: the
# upload streamed into the guest's tar, then the git setup there.
split() {
	awk '/unpack: .* unpacked in/ { u = $(NF); sub(/s$/, "", u); ut = $2; sub(/s\]$/, "", ut) }
	     / branch: / { bt = $2; sub(/s\]$/, "", bt) }
	     END { printf "stream into guest tar %.1fs, git setup %.1fs", u, bt - ut }' "$1"
}

# unpacked prints how long the daemon streamed the upload into the
# guest's tar (its "unpacked in Xs" progress line).
unpacked() { sed -n 's/.*unpack: .* unpacked in \([0-9.]*\)s.*/\1/p' "$1" | tail -1; }
# mean prints the mean of its arguments.
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.2f", s / NR }'; }

declare -a r_tar r_full r_full_stream r_shallow
full_sent= shallow_sent=
for rep in $(seq "$reps"); do
	say "round $rep/$reps: tar | banger exec ... tar -x"
	settle
	s=$(now)
	tar -c -C "$repo" . | banger exec bench -- sh -c "mkdir -p /root/tar$rep && tar -x -C /root/tar$rep && sync"
	r_tar+=("$(secs "$s" "$(now)")")

	say "round $rep/$reps: workspace prepare --mode full_copy"
	settle
	s=$(now)
	banger workspace prepare bench "$repo" --mode full_copy --guest-path "/root/full$rep" --branch "full$rep" >/dev/null 2>"$work/full.err"
	banger exec bench -- sync
	r_full+=("$(secs "$s" "$(now)")")
	r_full_stream+=("$(unpacked "$work/full.err")")
	full_sent="$(sent "$work/full.err"); $(split "$work/full.err")"

	[ "${SHALLOW:-1}" = 0 ] && continue

	say "round $rep/$reps: workspace prepare (shallow_overlay)"
	settle
	s=$(now)
	banger workspace prepare bench "$repo" --guest-path "/root/shallow$rep" --branch "shallow$rep" >/dev/null 2>"$work/shallow.err"
	banger exec bench -- sync
	r_shallow+=("$(secs "$s" "$(now)")")
	shallow_sent="$(sent "$work/shallow.err"); $(split "$work/shallow.err")"
done
guest=$(banger exec bench -- sh -c 'cd /root && for d in tar1 full1 shallow1; do [ -d $d ] && printf "%s %s MiB; " $d $(du -sm $d | cut -f1); done; for d in full1 shallow1; do [ -d $d ] && printf "%s: %s commits, %s git status lines; " $d $(git -C $d rev-list --count HEAD) $(git -C $d status --porcelain | wc -l); done; true')

echo
echo "tree: $goroot/src as a git repository: $files files, working tree ${tree_mib} MiB, .git ${git_mib} MiB (packed), $commits commits"
echo "vm: $vcpus vCPUs, $memory, banger-vmm-qemu (TCG) on $(nproc) host CPUs"
echo "guest: $guest"
echo
printf '%-44s %s\n' "what (seconds, each round)" "time"
printf '%-44s %s\n' "tar -c | banger exec VM -- tar -x  (all)" "${r_tar[*]}"
printf '%-44s %s\n' "workspace prepare --mode full_copy" "${r_full[*]}   (last: sent $full_sent)"
[ "${SHALLOW:-1}" = 0 ] || printf '%-44s %s\n' "workspace prepare (shallow_overlay)" "${r_shallow[*]}   (last: sent $shallow_sent)"
echo
tar_mean=$(mean "${r_tar[@]}")
full_mean=$(mean "${r_full[@]}")
stream_mean=$(mean "${r_full_stream[@]}")
printf 'full_copy against tar | exec (means of %d rounds): %ss / %ss = ratio %s (goal: at most 1.0)\n' "$reps" "$full_mean" "$tar_mean" "$(awk -v a="$full_mean" -v b="$tar_mean" 'BEGIN { printf "%.2f", a / b }')"
printf 'of which streaming into the guest'"'"'s tar: %ss = ratio %s\n' "$stream_mean" "$(awk -v a="$stream_mean" -v b="$tar_mean" 'BEGIN { printf "%.2f", a / b }')"
