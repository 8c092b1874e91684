#!/bin/sh
# fetch-test-bzimage.sh fetches Debian's cloud kernel (a bzImage) for the
# VMM integration test that boots a distro kernel with an initrd, without
# installing it on the host: apt-get download + dpkg-deb -x into a cache
# directory. It prints the bzImage's path; use it as BANGER_TEST_BZIMAGE:
#
#   BANGER_TEST_BZIMAGE=$(scripts/fetch-test-bzimage.sh) go test ./internal/firecracker/...
#
# The cache directory is $BANGER_TEST_CACHE, else $BANGER_CACHE, else
# /var/tmp/banger-test, and is reused on later runs. Needs apt-get (and
# apt-get update done).
set -eu

cache=${BANGER_TEST_CACHE:-${BANGER_CACHE:-/var/tmp/banger-test}}/bzimage
mkdir -p "$cache"

# linux-image-cloud-amd64 is a metapackage; its dependency is the real
# kernel package, e.g. linux-image-6.1.0-56-cloud-amd64.
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	echo "fetch-test-bzimage: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2
	exit 1
fi

existing=$(ls "$cache/root/boot/vmlinuz-"*"-cloud-amd64" 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ] && [ -f "$cache/$pkg.stamp" ]; then
	echo "$existing"
	exit 0
fi

work=$(mktemp -d "$cache/dl.XXXXXX")
chmod 0755 "$work" # apt downloads as _apt
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$pkg" >&2)
rm -rf "$cache/root"
dpkg-deb -x "$work"/"$pkg"_*.deb "$cache/root"
touch "$cache/$pkg.stamp"
ls "$cache/root/boot/vmlinuz-"*"-cloud-amd64" | head -n 1
