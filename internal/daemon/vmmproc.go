package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/proc"
)

// A VM's VMM is recognised by what the daemon knows of it, not by a
// command line any user can copy: the process must name the VM's API
// socket as its --api-sock, run as the VM's own uid, and run the
// configured VMM binary (its /proc/PID/exe). A process that only copies
// the argv is not the VMM; two candidates are ambiguous, and an
// ambiguous VM is left alone, never declared dead.

// vmmMatch is what findVMM found for one VM.
type vmmMatch struct {
	// PID is the VM's VMM, 0 when there is none.
	PID int
	// Ambiguous says several processes fit; PID is then 0 and the VM
	// must be left alone.
	Ambiguous bool
}

// vmmExeMatches says whether exe (a /proc/PID/exe target) is the binary
// bin, also when bin was replaced on disk while the VMM ran.
func vmmExeMatches(exe, bin string) bool {
	if bin == "" {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	if exe == bin {
		return true
	}
	if r, err := filepath.EvalSymlinks(bin); err == nil && r == exe {
		return true
	}
	return false
}

// argvNamesVM says whether a command line names vm's API socket as its
// --api-sock or, for a jailed firecracker (which names its socket inside
// the chroot), vm's instance id as its --id: the first test of isVMM,
// and the only one that needs no more than the command line.
func (d *Daemon) argvNamesVM(vm model.VMRecord, argv []string) bool {
	if d.jailed(vm) {
		id, ok := proc.FlagValue(argv, "--id")
		return ok && id == vmCgroupName(vm.ID)
	}
	sock, ok := proc.FlagValue(argv, "--api-sock")
	return ok && sock == vm.Runtime.APISockPath
}

// isVMM says whether p is the VMM of vm.
func (d *Daemon) isVMM(r proc.Reader, p proc.Process, vm model.VMRecord) bool {
	if p.Dead() {
		return false
	}
	if !d.argvNamesVM(vm, p.Argv) {
		return false
	}
	bin := d.vmmBinaryFor(vm)
	if d.jailed(vm) {
		// The jailer copied the binary into the chroot.
		bin = filepath.Join(filepath.Dir(filepath.Dir(vm.Runtime.APISockPath)), filepath.Base(bin))
	}
	// A VM started by a daemon from before per-VM uids ran its VMM as
	// root.
	if p.UID != vm.Runtime.VMMUID {
		return false
	}
	exe, err := r.Exe(p.PID)
	if err != nil {
		return false
	}
	return vmmExeMatches(exe, bin)
}

// vmmBinaryFor is the binary vm's VMM was launched from.
func (d *Daemon) vmmBinaryFor(vm model.VMRecord) string {
	return d.vmmBinary()
}

// findVMM looks for vm's VMM among procs (a snapshot; nil reads the
// host). A remembered PID that still fits is checked first.
func (d *Daemon) findVMM(vm model.VMRecord, hint int, procs []proc.Process) vmmMatch {
	r := d.procs
	if hint > 0 {
		if p, err := r.Get(hint); err == nil && d.isVMM(r, p, vm) {
			return vmmMatch{PID: hint}
		}
	}
	if procs == nil {
		// Only processes whose argv names the VM can be its VMM.
		procs, _ = r.ListWhere(func(argv []string) bool { return d.argvNamesVM(vm, argv) })
	}
	var found []int
	for _, p := range procs {
		if d.isVMM(r, p, vm) {
			found = append(found, p.PID)
		}
	}
	switch len(found) {
	case 0:
		return vmmMatch{}
	case 1:
		return vmmMatch{PID: found[0]}
	}
	sort.Ints(found)
	d.logger.Warn("several processes look like a VM's VMM; leaving the VM alone", "vm", vm.Name, "pids", fmt.Sprint(found))
	return vmmMatch{Ambiguous: true}
}

// strayVMMs lists processes that are banger's VMMs (a VMM uid, the VMM
// binary, an API socket under the vms dir) whose socket no row names.
// A user's process that copies a VMM's argv is none of these.
func (d *Daemon) strayVMMs(procs []proc.Process) []vmmProcess {
	prefix := strings.TrimSuffix(d.layout.vmsDir(), "/") + "/"
	bin := d.vmmBinary()
	base := d.cfg.VMMUIDBase
	if base == 0 {
		base = defaultVMMUIDBase
	}
	var out []vmmProcess
	for _, p := range procs {
		sock, ok := proc.FlagValue(p.Argv, "--api-sock")
		if !ok || !strings.HasPrefix(sock, prefix) || p.Dead() {
			continue
		}
		if p.UID != 0 && (p.UID < base || p.UID > base+1<<16) {
			continue
		}
		if exe, err := d.procs.Exe(p.PID); err != nil || !vmmExeMatches(exe, bin) {
			continue
		}
		out = append(out, vmmProcess{PID: p.PID, APISock: sock, UID: p.UID})
	}
	return out
}

// vmmProc is a handle on a VMM process that may not be the daemon's
// child: firecracker.Proc on the host (a pidfd), a fake in unit tests.
type vmmProc interface {
	Kill() error
	// Wait waits up to d for the process to exit and says whether it did.
	Wait(ctx context.Context, d time.Duration) (bool, error)
	Close()
}

// openHostProc opens a handle on a host process; nil when it is gone.
func openHostProc(pid int) (vmmProc, error) {
	p, err := firecracker.OpenProc(pid)
	if err != nil || p == nil {
		return nil, err
	}
	return p, nil
}

// killVMM SIGKILLs a VMM and waits until it is gone.
func (d *Daemon) killVMM(ctx context.Context, pid int) error {
	p, err := d.openProc(pid)
	if err != nil {
		return fmt.Errorf("kill vmm %d: %w", pid, err)
	}
	if p == nil {
		return nil
	}
	defer p.Close()
	if err := p.Kill(); err != nil {
		return fmt.Errorf("kill vmm %d: %w", pid, err)
	}
	gone, err := p.Wait(context.WithoutCancel(ctx), firecracker.KillWait)
	if err != nil {
		return fmt.Errorf("kill vmm %d: %w", pid, err)
	}
	if !gone {
		return fmt.Errorf("kill vmm %d: still alive %s after SIGKILL", pid, firecracker.KillWait)
	}
	return nil
}
