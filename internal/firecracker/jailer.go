package firecracker

import (
	"path/filepath"
	"strconv"
	"strings"

	"banger/internal/model"
)

// JailerConfig says how to run firecracker under its jailer
// (docs/jailer.md of Firecracker v1.16.1). The jailer creates the chroot
// <ChrootBaseDir>/<basename(ExecFile)>/<ID>/root, copies ExecFile into
// it, applies the cgroup settings and resource limits, joins NetNS,
// drops to UID/GID and execs firecracker with FirecrackerArgs. It closes
// every inherited descriptor but stdin, stdout and stderr, so files reach
// a jailed firecracker by being linked into the chroot, not as
// descriptors; every API path is then relative to the chroot.
type JailerConfig struct {
	// ID is the VM id: letters, digits and hyphens, at most 64.
	ID string
	// ExecFile is the firecracker binary (statically linked).
	ExecFile string
	UID, GID uint32
	// CgroupVersion is 1 or 2; 0 leaves the jailer's default (1).
	CgroupVersion int
	// Cgroups are FILE=VALUE settings (cpu.max=..., memory.max=...).
	Cgroups []string
	// ParentCgroup is the cgroup the VM's own goes under ("" for the
	// jailer's default, the exec file's name).
	ParentCgroup string
	// ChrootBaseDir is where chroots are built ("" for /srv/jailer).
	ChrootBaseDir string
	// NetNS is the path of a network namespace to join ("" for none).
	NetNS string
	// ResourceLimits are RESOURCE=VALUE bounds (fsize, no-file).
	ResourceLimits []string
	Daemonize      bool
	NewPIDNS       bool
	// FirecrackerArgs follow "--" (the jailer passes --id itself).
	FirecrackerArgs []string
}

// defaultChrootBase is the jailer's default --chroot-base-dir.
const defaultChrootBase = "/srv/jailer"

// JailerArgs returns the jailer's argv after the binary name for c.
func JailerArgs(c JailerConfig) ([]string, error) {
	switch {
	case !instanceIDRe.MatchString(c.ID):
		return nil, model.Errorf(model.EINVALID, "jailer: id %q: want 1 to 64 letters, digits or hyphens", c.ID)
	case c.ExecFile == "" || !filepath.IsAbs(c.ExecFile):
		return nil, model.Errorf(model.EINVALID, "jailer: exec file %q: want an absolute path", c.ExecFile)
	case c.UID == 0 || c.GID == 0:
		return nil, model.Errorf(model.EINVALID, "jailer: uid %d gid %d: the jailed VMM must not run as root", c.UID, c.GID)
	case c.CgroupVersion != 0 && c.CgroupVersion != 1 && c.CgroupVersion != 2:
		return nil, model.Errorf(model.EINVALID, "jailer: cgroup version %d: want 1 or 2", c.CgroupVersion)
	case c.ChrootBaseDir != "" && !filepath.IsAbs(c.ChrootBaseDir):
		return nil, model.Errorf(model.EINVALID, "jailer: chroot base %q: want an absolute path", c.ChrootBaseDir)
	case c.NetNS != "" && !filepath.IsAbs(c.NetNS):
		return nil, model.Errorf(model.EINVALID, "jailer: netns %q: want an absolute path", c.NetNS)
	case strings.HasPrefix(c.ParentCgroup, "/") || strings.Contains(c.ParentCgroup, ".."):
		return nil, model.Errorf(model.EINVALID, "jailer: parent cgroup %q: want a relative path without ..", c.ParentCgroup)
	}
	for _, kv := range append(append([]string(nil), c.Cgroups...), c.ResourceLimits...) {
		if k, v, ok := strings.Cut(kv, "="); !ok || k == "" || v == "" || strings.ContainsAny(k, "/ ") {
			return nil, model.Errorf(model.EINVALID, "jailer: setting %q: want NAME=VALUE", kv)
		}
	}
	args := []string{
		"--id", c.ID, "--exec-file", c.ExecFile,
		"--uid", strconv.FormatUint(uint64(c.UID), 10), "--gid", strconv.FormatUint(uint64(c.GID), 10),
	}
	if c.CgroupVersion != 0 {
		args = append(args, "--cgroup-version", strconv.Itoa(c.CgroupVersion))
	}
	for _, cg := range c.Cgroups {
		args = append(args, "--cgroup", cg)
	}
	if c.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", c.ParentCgroup)
	}
	if c.ChrootBaseDir != "" {
		args = append(args, "--chroot-base-dir", c.ChrootBaseDir)
	}
	if c.NetNS != "" {
		args = append(args, "--netns", c.NetNS)
	}
	for _, rl := range c.ResourceLimits {
		args = append(args, "--resource-limit", rl)
	}
	if c.Daemonize {
		args = append(args, "--daemonize")
	}
	if c.NewPIDNS {
		args = append(args, "--new-pid-ns")
	}
	for _, a := range c.FirecrackerArgs {
		if a == "--id" || strings.HasPrefix(a, "--id=") {
			return nil, model.Errorf(model.EINVALID, "jailer: firecracker args must not hold --id: the jailer passes it")
		}
	}
	if len(c.FirecrackerArgs) > 0 {
		args = append(args, "--")
		args = append(args, c.FirecrackerArgs...)
	}
	return args, nil
}

// ChrootDir returns the root of the jail the jailer builds for c:
// <base>/<basename(exec file)>/<id>/root. Paths sent over the API are
// relative to it; the host path of API path p is ChrootDir + p.
func ChrootDir(c JailerConfig) string {
	base := c.ChrootBaseDir
	if base == "" {
		base = defaultChrootBase
	}
	return filepath.Join(base, filepath.Base(c.ExecFile), c.ID, "root")
}

// JailedAPISock is the API socket's host path for a jailed firecracker
// started with --api-sock /run/firecracker.socket (its default).
func JailedAPISock(c JailerConfig) string {
	return filepath.Join(ChrootDir(c), "run", "firecracker.socket")
}
