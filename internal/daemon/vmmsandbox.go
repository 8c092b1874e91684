package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/cgroup"
	"banger/internal/firecracker"
	"banger/internal/model"
)

// vmmOverheadMiB is what a VMM needs beyond its guest's memory: QEMU's
// own heap and TCG's translation cache (capped at
// qemuvmm.TCGTranslationCacheMiB; tens of MiB for Firecracker).
// The cgroup's memory limit is the guest's memory plus this.
const vmmOverheadMiB = 512

// vmPidsMax bounds the tasks (threads) of one VM's VMM: vCPU threads,
// QEMU's I/O workers, the Go runtime of banger-vmm-qemu.
const vmPidsMax = 512

// vmLimits are a VM's cgroup limits, from its size: its vCPUs' worth of
// CPU time, its memory plus the VMM's overhead, a task count, and the
// default IO weight.
func vmLimits(spec model.VMSpec) cgroup.Limits {
	return cgroup.Limits{
		CPUQuotaUs:     int64(max(spec.VCPUCount, 1)) * cgroup.Period,
		MemoryMaxBytes: int64(spec.MemoryMiB+vmmOverheadMiB) << 20,
		PidsMax:        vmPidsMax,
		IOWeight:       100,
	}
}

// vmCgroupName is a VM's cgroup under the daemon's parent group.
func vmCgroupName(vmID string) string { return "vm-" + model.ShortID(vmID) }

// vmmDir is the one directory a VM's VMM may write: its API socket, its
// own log and metrics, snapshots.
func vmmDir(vmDir string) string { return filepath.Join(vmDir, "vmm") }

// vmmLaunch is what the daemon hands one VMM: the files it opened for
// it, named to the VMM by descriptor, and where it starts.
type vmmLaunch struct {
	cfg firecracker.LaunchConfig
	// root, work, kernel and initrd are the paths the VMM is told:
	// /dev/fd/N of a descriptor the daemon opened (or, in a jail, the
	// names of the files linked there). logPath and metricsPath are the
	// VMM's own log and metrics as the VMM names them.
	root, work, kernel, initrd string
	logPath, metricsPath       string
	// files are closed once the VMM has them.
	files []*os.File
	// cgroupFD is the v2 cgroup dir the VMM starts in, or -1.
	cgroupFD int
}

func (l *vmmLaunch) close() {
	for _, f := range l.files {
		f.Close()
	}
	if l.cgroupFD > 0 {
		unix.Close(l.cgroupFD)
	}
}

// addFile passes f to the VMM and returns the path it knows it by.
func (l *vmmLaunch) addFile(f *os.File) string {
	l.files = append(l.files, f)
	l.cfg.ExtraFiles = append(l.cfg.ExtraFiles, f)
	return firecracker.FDPath(firecracker.ExtraFileFD(len(l.cfg.ExtraFiles) - 1))
}

// prepareVMMDir makes <vm dir>/vmm owned by the VM's uid, mode 0700,
// and the directories above it traversable (0711) but not listable, so
// the VMM reaches its own directory and nothing else of the state dir.
// A stale entry (a file or link the uid left) is replaced: the daemon
// never follows anything in that directory.
func (d *Daemon) prepareVMMDir(vm model.VMRecord, uid int) error {
	for _, dir := range []string{d.cfg.StateDir, d.layout.vmsDir(), vm.Runtime.VMDir} {
		if err := os.Chmod(dir, 0o711); err != nil {
			return fmt.Errorf("vmm dir: %w", err)
		}
	}
	dir := vmmDir(vm.Runtime.VMDir)
	fi, err := os.Lstat(dir)
	if err == nil && !fi.IsDir() {
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("vmm dir: %w", err)
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("vmm dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("vmm dir: %w", err)
	}
	// Lchown and Chmod on a path the daemon just checked is a directory
	// in a root-only parent: the uid cannot swap it for a link.
	if err := os.Lchown(dir, uid, uid); err != nil {
		return fmt.Errorf("vmm dir: %w", err)
	}
	return os.Chmod(dir, 0o700)
}

// prepareVMM opens what the VM's VMM gets as descriptors (the system
// disk as attached, the work disk, the kernel, the initrd, the tap), makes
// its cgroup with the VM's limits, and fills the launch configuration: the
// VMM runs as the VM's uid with no capabilities. The caller closes the
// result once the VMM is launched; on error nothing is left open and the
// cgroup is removed.
func (d *Daemon) prepareVMM(vm model.VMRecord, img model.Image, h vmHandles, bin string) (l *vmmLaunch, err error) {
	uid := vm.Runtime.VMMUID
	if uid <= 0 {
		return nil, fmt.Errorf("vm %s has no VMM uid", vm.Name)
	}
	if err := d.prepareVMMDir(vm, uid); err != nil {
		return nil, err
	}
	l = &vmmLaunch{cgroupFD: -1, logPath: vmmLogPath(vm.Runtime.VMDir), metricsPath: vm.Runtime.MetricsPath}
	if jailer := d.jailerBinary(bin); jailer != "" {
		return d.prepareJailed(vm, img, h, bin, jailer, l)
	}
	l.cfg = firecracker.LaunchConfig{
		Bin: bin, APISock: vm.Runtime.APISockPath, ID: model.ShortID(vm.ID),
		ExtraArgs: d.cfg.VMMArgs, LogPath: vm.Runtime.LogPath,
		UID: uint32(uid), GID: uint32(uid),
	}
	defer func() {
		if err != nil {
			l.close()
			d.removeCgroup(vm)
		}
	}()
	open := func(path string, flag int) (string, error) {
		f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("open for the vmm: %w", err)
		}
		return l.addFile(f), nil
	}
	if l.root, err = open(h.Overlay.Device, os.O_RDWR); err != nil {
		return nil, err
	}
	if l.work, err = open(vm.Runtime.WorkDiskPath, os.O_RDWR); err != nil {
		return nil, err
	}
	if l.kernel, err = open(img.KernelPath, os.O_RDONLY); err != nil {
		return nil, err
	}
	if img.InitrdPath != "" {
		if l.initrd, err = open(img.InitrdPath, os.O_RDONLY); err != nil {
			return nil, err
		}
	}
	if h.Tap != "" && isQEMUVMM(bin) {
		tap, err := firecracker.OpenTap(h.Tap)
		if err != nil {
			return nil, err
		}
		l.addFile(tap)
		l.cfg.TapFDs = map[string]int{h.Tap: firecracker.ExtraFileFD(len(l.cfg.ExtraFiles) - 1)}
	}
	if d.cgroups != nil {
		name := vmCgroupName(vm.ID)
		if err := d.cgroups.Create(name, vmLimits(vm.Spec)); err != nil {
			return nil, err
		}
		if l.cgroupFD, err = d.cgroups.OpenFD(name); err != nil {
			return nil, err
		}
		l.cfg.CgroupFD = l.cgroupFD
	}
	return l, nil
}

// isQEMUVMM says whether bin is banger-vmm-qemu, which takes its taps as
// descriptors (--tap-fd); Firecracker opens them by name.
func isQEMUVMM(bin string) bool { return strings.Contains(filepath.Base(bin), "banger-vmm-qemu") }

// enterCgroup moves a just-launched VMM into its cgroup where it could
// not start there (cgroup v1). It runs before InstanceStart, so the
// guest's process (QEMU) starts inside.
func (d *Daemon) enterCgroup(vm model.VMRecord, pid int) error {
	if d.cgroups == nil || d.cgroups.Mode() != cgroup.ModeV1 {
		return nil
	}
	return d.cgroups.Add(vmCgroupName(vm.ID), pid)
}

// removeCgroup deletes a VM's cgroup once its VMM is gone.
func (d *Daemon) removeCgroup(vm model.VMRecord) error {
	if d.cgroups == nil {
		return nil
	}
	return d.cgroups.Remove(vmCgroupName(vm.ID))
}

// vmmClient is the API client for a VM's VMM, which talks only to a
// process running as the VM's uid.
func (d *Daemon) vmmClient(vm model.VMRecord) *firecracker.Client {
	return d.newVMMClient(vm.Runtime.APISockPath, vm.Runtime.VMMUID)
}

// vmLimitStats reads a running VM's cgroup: its limits and how often it
// hit them; nil without cgroups.
func (d *Daemon) vmLimitStats(vm model.VMRecord) *model.VMLimits {
	if d.cgroups == nil {
		return nil
	}
	name := vmCgroupName(vm.ID)
	lim, err := d.cgroups.Limits(name)
	if err != nil {
		return nil
	}
	ev, _ := d.cgroups.Events(name)
	return &model.VMLimits{
		CPUQuotaPercent:     int(lim.CPUQuotaUs * 100 / cgroup.Period),
		MemoryMaxBytes:      lim.MemoryMaxBytes,
		PidsMax:             lim.PidsMax,
		IOWeight:            lim.IOWeight,
		CPUThrottledPeriods: ev.CPUThrottled,
		CPUThrottledMs:      ev.CPUThrottledUs / 1000,
		MemoryMaxHits:       ev.MemoryMax,
		OOMKills:            ev.OOMKills,
		PidsMaxHits:         ev.PidsMax,
		MemoryBytes:         ev.MemoryBytes,
	}
}

// prepareJailed fills l for firecracker under its jailer: the chroot with
// the VM's files linked in, the jailer's command line (it runs as root,
// makes the cgroup with the VM's limits, and drops to the VM's uid), and
// the tap given to the VM's uid (firecracker opens it by name).
func (d *Daemon) prepareJailed(vm model.VMRecord, img model.Image, h vmHandles, bin, jailer string, l *vmmLaunch) (*vmmLaunch, error) {
	plan, err := d.planJail(vm, img, h, bin)
	if err != nil {
		return nil, err
	}
	if err := buildJail(plan); err != nil {
		d.removeJail(vm)
		return nil, err
	}
	argv, err := firecracker.JailerArgs(plan.cfg)
	if err != nil {
		return nil, err
	}
	if h.Tap != "" {
		if err := firecracker.SetTapOwner(h.Tap, vm.Runtime.VMMUID); err != nil {
			d.removeJail(vm)
			return nil, err
		}
	}
	l.cfg = firecracker.LaunchConfig{
		Bin: jailer, Argv: argv, APISock: vm.Runtime.APISockPath,
		ID: vmCgroupName(vm.ID), LogPath: vm.Runtime.LogPath,
	}
	l.root, l.work, l.kernel = "/rootfs", "/work.ext4", "/vmlinux"
	if img.InitrdPath != "" {
		l.initrd = "/initrd"
	}
	l.logPath, l.metricsPath = jailLogPath, jailMetricsPath
	return l, nil
}
