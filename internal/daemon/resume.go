package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// A start of a suspended VM resumes it: the run's host side is set up as
// for a boot (disks attached, a tap, rules, a VMM), then the VMM loads
// the saved state instead of booting, the saved state is dropped, the
// vCPUs run again, and the guest's clock is set over the daemon's SSH
// connection. If the saved state cannot be restored, the VM boots from
// its disks and the reason is kept in LastError.

// restoreError marks a failure of the saved state itself (or of the VM
// restored from it): the VM then boots from its disks. Other failures
// (no tap, no network) leave the VM suspended, its saved state intact.
type restoreError struct{ err error }

func (e *restoreError) Error() string { return e.err.Error() }
func (e *restoreError) Unwrap() error { return e.err }

// restoreStep marks any failure of do as a restore failure.
func restoreStep(do func(ctx context.Context, s *startRun) error) func(ctx context.Context, s *startRun) error {
	return func(ctx context.Context, s *startRun) error {
		if err := do(ctx, s); err != nil {
			return &restoreError{err}
		}
		return nil
	}
}

// resumeSteps are the steps of a resume, in order. Until resume:committed
// the saved state is intact and the guest has not run; from then on the
// guest runs and the saved state is gone.
func (d *Daemon) resumeSteps() []step[startRun] {
	return []step[startRun]{
		{Name: "resume:disks", Do: restoreStep(d.resumeDisks)},
		{Name: "resume:overlay-attached", Do: d.startAttach, Undo: d.undoAttach},
		{Name: "resume:tap-acquired", Do: d.startTap, Undo: d.undoTap},
		{Name: "resume:tap-quarantined", Do: d.forkQuarantine},
		{Name: "resume:tap-recorded", Do: d.startRecordTap},
		{Name: "resume:capabilities", Do: d.startCapabilities, Undo: d.undoCapabilities},
		{Name: "resume:vmm-launched", Do: d.startLaunch, Undo: d.undoLaunch},
		{Name: "resume:loaded", Do: restoreStep(func(ctx context.Context, s *startRun) error { return d.boot.load(ctx, s) })},
		{Name: "resume:committed", Do: restoreStep(d.resumeCommit)},
		{Name: "resume:vcpus-resumed", Do: restoreStep(d.resumeVCPUs)},
		{Name: "resume:clock-set", Do: restoreStep(func(ctx context.Context, s *startRun) error {
			if s.fork != nil {
				return d.forkReidentify(ctx, s)
			}
			return d.boot.waitResumed(ctx, s)
		})},
		{Name: "resume:admitted", Do: d.forkAdmit},
		{Name: "resume:ready", Do: d.resumeReady},
	}
}

// resumeLocked restores a suspended VM by running resumeSteps. The
// caller holds the lock.
func (d *Daemon) resumeLocked(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	return d.resumeLockedWith(ctx, vm, progress, nil)
}

// resumeLockedWith is resumeLocked for a fork's child when fork is set:
// the guest is restored behind a quarantined tap and made its own
// machine before its tap joins the bridge (fork.go). A child's failure
// is returned as it is: the fork removes the child.
func (d *Daemon) resumeLockedWith(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc, fork *forkIdentity) (model.VMRecord, error) {
	if vm.Runtime.ForkOf != "" && fork == nil {
		return vm, model.Errorf(model.ECONFLICT, "vm %q is a child a cut-short fork left; the daemon removes it (fork again)", vm.Name)
	}
	s := &startRun{vm: vm, received: time.Now(), progress: progress, log: d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID)), fork: fork}
	if err := d.requireNetwork(ctx); err != nil {
		return vm, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, fmt.Errorf("image of vm %s: %w", vm.Name, err)
	}
	s.img = img
	if err := d.boot.check(); err != nil {
		return vm, err
	}
	if err := d.boot.snapshots(); err != nil {
		d.clocks.drop(vm.ID)
		if fork != nil {
			return vm, err
		}
		return d.resumeFallback(ctx, s, err)
	}
	progress(api.Progress{Step: "resume", Message: fmt.Sprintf("restoring the state saved %s ago (%s)", roughAge(vm.Runtime.SuspendedAt), sizeMiB(vm.Runtime.SavedStateBytes))})
	s.held = d.clocks.take(vm.ID)
	defer func() {
		if s.held != nil {
			s.held.Close()
		}
	}()
	err = runSteps(ctx, d.steps(s.log), undoOnError, d.resumeSteps(), s)
	if err == nil {
		if rerr := d.net.Refill(ctx); rerr != nil {
			s.log.Warn("refill tap pool", "err", rerr)
		}
		return s.vm, nil
	}
	if fork != nil {
		d.clearVMHandles(s.vm.ID, s.vm.Runtime.VMDir)
		return s.vm, err
	}
	var re *restoreError
	if errors.As(err, &re) {
		return d.resumeFallback(ctx, s, err)
	}
	// The host could not give the VM what it needs now (a tap, its
	// rules, a VMM): the saved state is intact, the VM stays suspended.
	vm = s.vm
	if s.held != nil {
		d.clocks.put(vm.ID, s.held) // for the next try
		s.held = nil
	}
	d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	vm.State = model.VMStateSuspended
	vm.Runtime.TapDevice = ""
	vm.Runtime.Cgroup = ""
	vm.Runtime.LastError = fmt.Sprintf("resume: %v (the VM is still suspended)", err)
	vm.UpdatedAt = model.Now()
	if uerr := d.store.UpdateVM(ctx, vm); uerr != nil {
		s.log.Error("record the failed resume", "err", uerr)
	}
	s.log.Error("resume failed; the vm is still suspended", "err", err)
	return vm, fmt.Errorf("resume vm %s: %w (it is still suspended; try again, or drop its saved state with `banger vm stop %s`)", vm.Name, err, vm.Name)
}

// resumeFallback boots a VM whose saved state could not be restored
// from its disks: the saved state goes, the reason is in the progress
// and in LastError.
func (d *Daemon) resumeFallback(ctx context.Context, s *startRun, reason error) (model.VMRecord, error) {
	vm := s.vm
	s.log.Warn("restoring the saved state failed; booting from the disks", "err", reason)
	s.progress(api.Progress{Step: "resume", Message: fmt.Sprintf("restoring the saved state failed (%v); booting from the disks instead: the processes it held are lost", reason), Warning: true})
	d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	if err := dropSavedState(vm.Runtime.VMDir); err != nil {
		s.log.Warn("drop the saved state", "err", err)
	}
	vm.State = model.VMStateStopped
	vm.Runtime.SuspendedAt = time.Time{}
	vm.Runtime.SavedStateBytes = 0
	vm.Runtime.TapDevice = ""
	vm.Runtime.Cgroup = ""
	vm.Runtime.LastError = fmt.Sprintf("resume failed: %v", reason)
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return vm, err
	}
	vm, err := d.startLocked(ctx, vm, s.progress)
	if err != nil {
		return vm, fmt.Errorf("resume failed (%v), and so did the boot from the disks: %w", reason, err)
	}
	vm.Runtime.LastError = fmt.Sprintf("resume failed: %v; the VM was booted from its disks", reason)
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return vm, err
	}
	return vm, nil
}

// resumeDisks checks the saved state and the disks it was taken with are
// there, and prepares the disks as a start does.
func (d *Daemon) resumeDisks(ctx context.Context, s *startRun) error {
	vm := &s.vm
	d.layout.vmPaths(vm.ID, &vm.Runtime)
	info := readSavedState(vm.Runtime.VMDir)
	if !info.Complete {
		return fmt.Errorf("the saved state in %s is missing", savedDir(vm.Runtime.VMDir))
	}
	for _, p := range []string{vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("the disk the state was saved with: %w", err)
		}
	}
	st, mem := savedPaths(vm.Runtime.VMDir)
	s.restore = &restoreFiles{state: st, mem: mem}
	return d.startDisks(ctx, s)
}

// resumeCommit drops the saved state once the VMM has loaded it, before
// the guest runs again (a saved state older than the disks must never be
// loaded), and records the VM as running.
func (d *Daemon) resumeCommit(ctx context.Context, s *startRun) error {
	if err := dropSavedStateSoon(s.vm.Runtime.VMDir, s.log, &d.drops); err != nil {
		return err
	}
	vm := &s.vm
	vm.State = model.VMStateRunning
	vm.Runtime.LastError = ""
	vm.Runtime.SuspendedAt = time.Time{}
	vm.Runtime.SavedStateBytes = 0
	vm.Runtime.StartedAt = model.Now()
	vm.UpdatedAt = model.Now()
	vm.LastTouchedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}

// resumeVCPUs lets the restored guest run.
func (d *Daemon) resumeVCPUs(ctx context.Context, s *startRun) error {
	if err := d.vmmClient(s.vm).Resume(ctx); err != nil {
		return fmt.Errorf("resume the vcpus: %w", err)
	}
	return nil
}

// resumeReady reports the resume and watches the VMM.
func (d *Daemon) resumeReady(ctx context.Context, s *startRun) error {
	ready := time.Since(s.received)
	s.log.Info("vm resumed", "ready_ms", ready.Milliseconds(), "pid", s.h.PID, "tap", s.h.Tap)
	s.progress(api.Progress{Step: "ready", Message: fmt.Sprintf("resumed; SSH answered after %.1fs, the guest's clock set", ready.Seconds())})
	d.touch(s.vm.ID)
	d.watchVMM(s.vm, s.h.PID, s.h.launched)
	return nil
}

// roughAge says how long ago t was, roughly.
func roughAge(t time.Time) string {
	if t.IsZero() {
		return "some time"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// wakeLocked resumes vm if it is suspended: an operation that needs the
// guest wakes it. The caller holds the lock.
func (d *Daemon) wakeLocked(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	if vm.State != model.VMStateSuspended {
		return vm, nil
	}
	progress(api.Progress{Step: "resume", Message: fmt.Sprintf("vm %s is suspended; resuming it", vm.Name)})
	// The resume outlives the request, as a start does.
	return d.resumeLocked(context.WithoutCancel(ctx), vm, progress)
}

// wake is wakeLocked for a caller without the lock; the wake counts as
// use of the VM.
func (d *Daemon) wake(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	if vm.State != model.VMStateSuspended {
		return vm, nil
	}
	unlock := d.locks.lock(vm.ID)
	defer unlock()
	d.touch(vm.ID)
	fresh, err := d.store.GetVM(ctx, vm.ID)
	if err != nil {
		return vm, err
	}
	return d.wakeLocked(ctx, fresh, progress)
}
