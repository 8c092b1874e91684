package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// imageRecipeVersion changes whenever the way an image is built changes,
// so cached base systems made the old way are not reused.
const imageRecipeVersion = "1"

// basePackages are installed by debootstrap on top of the minbase variant:
// an init, an SSH server, and what a developer sandbox needs to fetch and
// inspect code.
var basePackages = []string{
	"systemd", "systemd-sysv", "openssh-server", "git", "ca-certificates",
	"iproute2", "iputils-ping", "procps", "netbase", "curl", "less",
}

// dockerPackage is Debian's Docker engine.
const dockerPackage = "docker.io"

// packageName is a Debian package name, optionally with an architecture
// (pkg:amd64) and a version (pkg=1.2-3) or a release
// (pkg/bookworm-backports), as apt-get install takes them.
var packageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+|/[a-z0-9-]+)?$`)

// extraPackages returns the packages installed with apt-get after
// debootstrap: the user's, plus Docker's engine, sorted and without
// duplicates, so the same set always gives the same cache key.
func extraPackages(pkgs []string, docker bool) []string {
	set := map[string]bool{}
	for _, p := range pkgs {
		if p = strings.TrimSpace(p); p != "" {
			set[p] = true
		}
	}
	if docker {
		set[dockerPackage] = true
	}
	for _, p := range basePackages {
		delete(set, p)
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// debootstrapArgv returns the debootstrap command for a minbase system of
// release from mirror in target; with keyring, the mirror's Release file
// must be signed by a key in it.
func debootstrapArgv(release, mirror, target, keyring string) []string {
	argv := []string{
		"debootstrap",
		"--variant=minbase",
		"--arch=amd64",
		"--components=main",
		"--include=" + strings.Join(basePackages, ","),
	}
	if keyring != "" {
		argv = append(argv, "--keyring="+keyring)
	}
	return append(argv, release, target, mirror)
}

// packagesArgv returns the command that installs extra packages inside the
// target. It runs isolated (own PID and mount namespaces), so the /proc it
// mounts goes away with it. Package names are positional parameters of the
// script, never parsed by the shell.
func packagesArgv(target string, pkgs []string) []string {
	script := `set -eu
mount -t proc proc /proc
export DEBIAN_FRONTEND=noninteractive
apt-get update ` + aptLimitOpts + `
apt-get install -y --no-install-recommends ` + aptLimitOpts + ` -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
apt-get clean`
	return append([]string{"chroot", target, "/bin/sh", "-c", script, "banger-packages"}, pkgs...)
}

// baseCacheKey names the cached base system: everything that decides what
// debootstrap and apt-get put into it.
func baseCacheKey(release, mirror string, extra []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "banger-image recipe=%s\nrelease=%s\nmirror=%s\nbase=%s\nextra=%s\n",
		imageRecipeVersion, release, strings.TrimRight(mirror, "/"),
		strings.Join(basePackages, ","), strings.Join(extra, ","))
	return hex.EncodeToString(h.Sum(nil))
}

// baseCacheName is the cache file of a base system.
func baseCacheName(release, key string) string {
	return fmt.Sprintf("rootfs-%s-%s.tar", release, key[:16])
}

// tarCreateArgv archives dir keeping owners, modes, hard links and extended
// attributes (file capabilities such as ping's).
func tarCreateArgv(dir, out string) []string {
	return []string{"tar", "--create", "--file", out, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-C", dir, "."}
}

// tarExtractArgv restores an archive made by tarCreateArgv into dir.
func tarExtractArgv(archive, dir string) []string {
	return []string{"tar", "--extract", "--file", archive, "--numeric-owner", "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls", "-C", dir}
}

// mkfsArgv makes an ext4 filesystem in the existing file img from the
// contents of dir without mounting anything. "-T default" keeps 4 KiB
// blocks even for a small work seed that the daemon later grows.
func mkfsArgv(label, dir, img string) []string {
	return []string{"mkfs.ext4", "-q", "-F", "-T", "default", "-L", label, "-d", dir, img}
}

// fsckArgv checks a filesystem image without changing it.
func fsckArgv(img string) []string {
	return []string{"e2fsck", "-f", "-n", img}
}
