package daemon

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/cgroup"
	"banger/internal/firecracker"
	"banger/internal/hostexec"
	"banger/internal/model"
)

// Firecracker proper runs under its jailer when there is one: the jailer
// (root) builds a chroot for the VM, puts it in its cgroup, drops to the
// VM's uid and execs firecracker inside. The jailer closes inherited
// descriptors, so the VM's files reach it as hard links in the chroot and
// every path on the API is inside the chroot. banger-vmm-qemu does its own
// confinement (unprivileged uid, descriptors, seccomp) and runs without.
//
// No firecracker or jailer binary can be had on this project's machines:
// this path is unit-tested (the plan it builds) but has not run here.

// jailerBinary returns the jailer to use for bin, or "" for none.
func (d *Daemon) jailerBinary(bin string) string {
	if bin == "" || isQEMUVMM(bin) {
		return ""
	}
	if d.cfg.JailerBin != "" {
		if p, err := hostexec.LookPath(d.cfg.JailerBin); err == nil {
			return p
		}
		return ""
	}
	p := filepath.Join(filepath.Dir(bin), "jailer")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

// jailDir is where the jailer builds VMs' chroots.
func (l layout) jailDir() string { return filepath.Join(l.stateDir, "jail") }

// jailPlan is how one VM runs under the jailer.
type jailPlan struct {
	cfg firecracker.JailerConfig
	// chroot is the jail's root on the host; links maps names in it to
	// the host files linked there.
	chroot string
	links  []jailLink
}

type jailLink struct {
	name string // in the chroot, e.g. "rootfs"
	src  string // on the host
	mode os.FileMode
	// copy says the file is copied, not linked: an image's kernel is
	// shared by every VM of the image and must keep its owner.
	copy bool
}

// jailAPISock is the API socket's path inside a jail, and jailed the
// names the API uses for the VMM's own log and metrics.
const (
	jailAPISock     = "/run/firecracker.socket"
	jailLogPath     = "/vmm.log"
	jailMetricsPath = "/metrics.json"
)

// planJail says how vm runs under the jailer jailer with the VMM binary
// bin: the jailer's configuration (the VM's uid, its cgroup and limits,
// the chroot under the state dir) and the files to link into the chroot.
func (d *Daemon) planJail(vm model.VMRecord, img model.Image, h vmHandles, bin string) (jailPlan, error) {
	uid := uint32(vm.Runtime.VMMUID)
	lim := vmLimits(vm.Spec)
	cfg := firecracker.JailerConfig{
		ID: vmCgroupName(vm.ID), ExecFile: bin, UID: uid, GID: uid,
		ChrootBaseDir:   d.layout.jailDir(),
		FirecrackerArgs: []string{"--api-sock", jailAPISock},
	}
	if d.cgroups != nil {
		cfg.ParentCgroup = d.cfg.CgroupParent
		if d.cgroups.Mode() == cgroup.ModeV2 {
			cfg.CgroupVersion = 2
			cfg.Cgroups = []string{
				fmt.Sprintf("cpu.max=%d %d", lim.CPUQuotaUs, cgroup.Period),
				"memory.max=" + strconv.FormatInt(lim.MemoryMaxBytes, 10),
				"pids.max=" + strconv.FormatInt(lim.PidsMax, 10),
			}
		} else {
			cfg.CgroupVersion = 1
			cfg.Cgroups = []string{
				"cpu.cfs_quota_us=" + strconv.FormatInt(lim.CPUQuotaUs, 10),
				"memory.limit_in_bytes=" + strconv.FormatInt(lim.MemoryMaxBytes, 10),
				"pids.max=" + strconv.FormatInt(lim.PidsMax, 10),
			}
		}
	}
	if _, err := firecracker.JailerArgs(cfg); err != nil {
		return jailPlan{}, err
	}
	p := jailPlan{cfg: cfg, chroot: firecracker.ChrootDir(cfg)}
	p.links = []jailLink{
		{name: "rootfs", src: h.Overlay.Device, mode: 0o600},
		{name: "work.ext4", src: vm.Runtime.WorkDiskPath, mode: 0o600},
		{name: "vmlinux", src: img.KernelPath, mode: 0o444, copy: true},
	}
	if img.InitrdPath != "" {
		p.links = append(p.links, jailLink{name: "initrd", src: img.InitrdPath, mode: 0o444, copy: true})
	}
	return p, nil
}

// buildJail makes the chroot and links the VM's files into it, owned by
// the VM's uid: a regular file as a hard link (same filesystem: the
// state dir), a block device (a dm node) as a device node.
func buildJail(p jailPlan) error {
	if err := os.MkdirAll(filepath.Join(p.chroot, "run"), 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	uid, gid := int(p.cfg.UID), int(p.cfg.GID)
	if err := os.Chown(filepath.Join(p.chroot, "run"), uid, gid); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	for _, l := range p.links {
		dst := filepath.Join(p.chroot, l.name)
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("jail: %w", err)
		}
		fi, err := os.Stat(l.src)
		if err != nil {
			return fmt.Errorf("jail: %w", err)
		}
		if l.copy {
			if err := copyFile(l.src, dst, l.mode); err != nil {
				return fmt.Errorf("jail: %w", err)
			}
			continue
		}
		if fi.Mode()&os.ModeDevice != 0 {
			st, ok := fi.Sys().(*unix.Stat_t)
			if !ok {
				return fmt.Errorf("jail: %s: no device number", l.src)
			}
			if err := unix.Mknod(dst, unix.S_IFBLK|uint32(l.mode), int(st.Rdev)); err != nil {
				return fmt.Errorf("jail: mknod %s: %w", dst, err)
			}
		} else if err := os.Link(l.src, dst); err != nil {
			return fmt.Errorf("jail: link %s: %w", l.src, err)
		}
		if err := os.Lchown(dst, uid, gid); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	return nil
}

// removeJail removes a VM's chroot (links and nodes only: the files they
// name stay where they are).
func (d *Daemon) removeJail(vm model.VMRecord) error {
	dir := filepath.Join(d.layout.jailDir(), "firecracker", vmCgroupName(vm.ID))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	return nil
}

// copyFile copies src to dst (root-owned, mode).
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// jailedSocket is the host path of a jailed VM's API socket.
func (d *Daemon) jailedSocket(vm model.VMRecord) string {
	return firecracker.JailedAPISock(firecracker.JailerConfig{ID: vmCgroupName(vm.ID), ExecFile: d.vmmBinary(), ChrootBaseDir: d.layout.jailDir()})
}

// jailed says whether vm's VMM runs under the jailer (its API socket is
// in a jail).
func (d *Daemon) jailed(vm model.VMRecord) bool {
	return strings.HasPrefix(vm.Runtime.APISockPath, d.layout.jailDir()+"/")
}
