#!/bin/bash
# scripts/bench/oci.sh
#
# Prints what importing a container image costs against today's
# `banger image build`, on the same Debian system: the debootstrap base the
# image builder cached (BANGER_TEST_CACHE/rootfs-*.tar, made by
# scripts/prepare-artifacts.sh), built
#   1. by `banger image build` from that cache (no debootstrap run), and
#   2. by `banger image build --from oci-archive:...` from an OCI archive
#      this script makes of the same tree (one gzip layer), first unpacking
#      the layer, then again from the daemon's cache of unpacked layers.
# For each: the wall time of the command and the image's size (the rootfs
# file's length and the blocks it takes, and the work seed's). No guest
# boots; the builds still take both cores, so it runs under the shared heavy
# lock. Needs root.
#
# Usage: scripts/bench/oci.sh   (root; BANGER_BIN_DIR picks the binaries)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [ -z "${BANGER_BENCH_LOCKED:-}" ]; then
	exec env BANGER_BENCH_LOCKED=1 flock -o /tmp/banger-heavy.lock "$0" "$@"
fi
if [ -z "${BANGER_TEST_CACHE:-}" ] && [ -s /tmp/banger-artifacts.env ]; then
	set -a; . /tmp/banger-artifacts.env; set +a
fi
base=$(ls "${BANGER_TEST_CACHE:?set BANGER_TEST_CACHE (scripts/prepare-artifacts.sh prints it)}"/rootfs-*.tar 2>/dev/null | head -1)
[ -n "$base" ] || { echo "no rootfs-*.tar in $BANGER_TEST_CACHE: run scripts/prepare-artifacts.sh" >&2; exit 2; }
kernel=${BANGER_TEST_KERNEL:?set BANGER_TEST_KERNEL}
bench_prepare
# The daemon's cache is its own: a copy of the Debian base, so `image build`
# finds it, and room for the unpacked layers the import stores.
bench_daemon_start oci 'cache_dir = "'"$(mktemp -d /tmp/bgbc.XXXXXX)"'"'
cache=$(awk -F'"' '/^cache_dir/ {print $2}' "$bench_dir/cfg.toml")
trap 'bench_daemon_stop; rm -rf "$cache"' EXIT
mkdir -p "$cache/images"
cp "$base" "$base.json" "$cache/images/"

b() { "$bin/banger" "$@"; }
now() { date +%s.%N; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# An OCI archive of the base: oci-layout, index.json, and the blobs of the
# manifest, the config and one gzip layer.
oci=$bench_dir/oci
mkdir -p "$oci/blobs/sha256"
t0=$(now)
diff_id=$(sha "$base")
gzip -1 -c "$base" > "$oci/layer.gz"
layer=$(sha "$oci/layer.gz"); layer_size=$(stat -c %s "$oci/layer.gz")
mv "$oci/layer.gz" "$oci/blobs/sha256/$layer"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" > "$oci/config"
config=$(sha "$oci/config"); config_size=$(stat -c %s "$oci/config")
mv "$oci/config" "$oci/blobs/sha256/$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' "$config" "$config_size" "$layer" "$layer_size" > "$oci/manifest"
manifest=$(sha "$oci/manifest"); manifest_size=$(stat -c %s "$oci/manifest")
mv "$oci/manifest" "$oci/blobs/sha256/$manifest"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d}]}' "$manifest" "$manifest_size" > "$oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$oci/oci-layout"
tar -cf "$bench_dir/debian-oci.tar" -C "$oci" oci-layout index.json blobs
rm -rf "$oci"
t1=$(now)
printf '== Debian base %s: tree tar %d MiB; OCI archive (gzip -1 layer) %d MiB, made in %.1f s (not counted below)\n' \
	"$(basename "$base")" $(($(stat -c %s "$base") >> 20)) $(($(stat -c %s "$bench_dir/debian-oci.tar") >> 20)) "$(echo "$t1 - $t0" | bc)"

# row NAME LABEL SECONDS: the image's size.
row() {
	local dir rootfs seed
	dir=$(b image inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["artifact_dir"])')
	rootfs=$dir/rootfs.ext4 seed=$dir/work-seed.ext4
	printf '%-44s %6.1f s   rootfs %5d MiB (%5d MiB used)   work seed %4d MiB\n' "$2" "$3" \
		$(($(stat -c %s "$rootfs") >> 20)) $(($(du -k "$rootfs" | cut -f1) >> 10)) $(($(du -k "$seed" | cut -f1) >> 10))
}
build() { # NAME LABEL ARGS...: one build, timed, then its row.
	local name=$1 label=$2 t0 t1
	shift 2
	t0=$(now)
	b image build "$name" --kernel "$kernel" -q "$@" >/dev/null
	t1=$(now)
	row "$name" "$label" "$(echo "$t1 - $t0" | bc)"
}
build deb "image build (debootstrap cache)"
build oci1 "image build --from oci-archive (unpack)" --from "oci-archive:$bench_dir/debian-oci.tar"
build oci2 "image build --from oci-archive (layer cache)" --from "oci-archive:$bench_dir/debian-oci.tar"
