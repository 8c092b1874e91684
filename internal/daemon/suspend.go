package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/model"
)

// Suspend saves a running VM's memory and device state in its VM
// directory and frees what a stopped VM does not hold: its VMM, tap,
// rules, DNS answer, attached overlay and cgroup. The guest IP stays
// reserved. A start restores it (resume.go).

// SuspendVM implements api.Backend.
func (d *Daemon) SuspendVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	// A suspend outlives the request that asked for it.
	if _, err := d.suspendLocked(context.WithoutCancel(ctx), vm, progress); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// suspendRun is the state of one suspend, passed from step to step.
type suspendRun struct {
	vm      model.VMRecord
	h       vmHandles
	proc    vmmProc
	bytes   int64
	vmmGone bool
	// hold is the session left in the guest to set its clock at the
	// resume; kept by the daemon once the VM is suspended.
	hold     clockHold
	clean    cleanupRun
	received time.Time
	progress api.ProgressFunc
	log      *slog.Logger
}

// suspendSteps are the steps of a suspend: the guest flushes its disks
// (so they are whole should the saved state be dropped later), the
// vCPUs stop, the VMM writes the snapshot, the VMM is ended, the daemon
// takes the snapshot into the VM's saved directory, then the cleanup of
// a stop, then the state is saved.
func (d *Daemon) suspendSteps() []step[suspendRun] {
	steps := []step[suspendRun]{
		{Name: "suspend:guest-synced", Do: d.suspendSync},
		{Name: "suspend:paused", Do: d.suspendPause, Undo: d.undoPause},
		{Name: "suspend:snapshot-written", Do: d.suspendSnapshot, Undo: d.undoSnapshot},
		{Name: "suspend:vmm-exited", Do: d.suspendKill},
		{Name: "suspend:saved", Do: d.suspendAdopt, Undo: d.undoAdopt},
	}
	for _, c := range d.cleanupSteps() {
		c := c
		steps = append(steps, step[suspendRun]{Name: "suspend:" + strings.TrimPrefix(c.Name, "cleanup:"), Do: func(ctx context.Context, s *suspendRun) error {
			if err := c.Do(ctx, &s.clean); err != nil {
				s.clean.errs = append(s.clean.errs, err)
			}
			return nil
		}})
	}
	return append(steps, step[suspendRun]{Name: "suspend:state-saved", Do: d.suspendSave})
}

// suspendLocked suspends a running VM by running suspendSteps. A failure
// before the VMM is ended leaves the VM running (the steps are undone);
// one after leaves it stopped with its disks. The caller holds the lock.
func (d *Daemon) suspendLocked(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	if vm.State != model.VMStateRunning {
		if vm.State == model.VMStateSuspended {
			return vm, model.Errorf(model.ECONFLICT, "vm %q is already suspended (since %s)", vm.Name, vm.Runtime.SuspendedAt.Local().Format("2006-01-02 15:04:05"))
		}
		return vm, model.Errorf(model.ECONFLICT, "vm %q is %s; only a running VM can be suspended", vm.Name, vm.State)
	}
	if err := d.boot.snapshots(); err != nil {
		return vm, err
	}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	h, m := d.currentHandlesMatch(ctx, vm)
	if m.Ambiguous {
		return vm, model.Errorf(model.ECONFLICT, "suspend vm %s: several processes claim to be its VMM; check `ps` for processes naming %s", vm.Name, vm.Runtime.APISockPath)
	}
	if h.PID == 0 {
		return vm, model.Errorf(model.ECONFLICT, "suspend vm %s: its VMM is not running (the daemon will notice and clean up); start it again with `banger vm start %s`", vm.Name, vm.Name)
	}
	s := &suspendRun{vm: vm, h: h, received: time.Now(), progress: progress, log: log}
	defer func() {
		if s.proc != nil {
			s.proc.Close()
		}
		if s.hold != nil {
			s.hold.Close()
		}
	}()
	err := runSteps(ctx, d.steps(log), undoOnError, d.suspendSteps(), s)
	if err == nil {
		if s.hold != nil {
			d.clocks.put(s.vm.ID, s.hold)
			s.hold = nil
		}
		return s.vm, nil
	}
	if !s.vmmGone {
		log.Warn("suspend failed; the vm keeps running", "err", err)
		return s.vm, fmt.Errorf("suspend vm %s: %w (the VM keeps running)", vm.Name, err)
	}
	// The VMM is gone and its state could not be kept: the VM is
	// stopped, its disks (flushed first) intact.
	log.Error("suspend failed after the vmm ended; the vm is stopped", "err", err)
	vm = s.vm
	vm.State = model.VMStateStopped
	if cerr := d.cleanupRuntime(ctx, &vm, s.h); cerr != nil {
		vm.State = model.VMStateError
		err = fmt.Errorf("%w; cleanup incomplete: %v", err, cerr)
	}
	if derr := dropSavedState(vm.Runtime.VMDir); derr != nil {
		log.Warn("drop the saved state", "err", derr)
	}
	vm.Runtime.LastError = fmt.Sprintf("suspend failed after the VMM ended: %v; the VM was stopped, its disks are intact", err)
	d.clocks.drop(vm.ID)
	vm.UpdatedAt = model.Now()
	if uerr := d.store.UpdateVM(ctx, vm); uerr != nil {
		log.Error("record the failed suspend", "err", uerr)
	}
	return vm, errors.New(vm.Runtime.LastError)
}

// suspendSync has the guest flush its disks, and captures the work of
// its workspaces as a stop does: if the saved state is dropped later
// (`vm stop` of a suspended VM), what the guest wrote is on its disks
// and unfetched work is known. The flush's session stays in the guest,
// waiting to set its clock at the resume. None of it is needed for the
// suspend itself, so a failure is only reported.
func (d *Daemon) suspendSync(ctx context.Context, s *suspendRun) error {
	s.progress(api.Progress{Step: "suspend", Message: "flushing the guest's disks"})
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	hold, err := d.boot.prepareSuspend(sctx, s.vm)
	cancel()
	s.hold = hold
	if err != nil {
		s.log.Warn("guest sync before suspend", "err", err)
		s.progress(api.Progress{Step: "suspend", Message: fmt.Sprintf("the guest could not flush its disks (%v); suspending anyway", err), Warning: true})
	}
	d.captureBeforeStop(ctx, s.vm, s.progress)
	return nil
}

// suspendPause stops the vCPUs.
func (d *Daemon) suspendPause(ctx context.Context, s *suspendRun) error {
	s.progress(api.Progress{Step: "suspend", Message: "pausing the VM"})
	if err := d.vmmClient(s.vm).Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

func (d *Daemon) undoPause(ctx context.Context, s *suspendRun) {
	if err := d.vmmClient(s.vm).Resume(ctx); err != nil {
		s.log.Warn("undo: resume the vcpus", "err", err)
	}
}

// suspendSnapshot has the VMM write the VM's memory and device state
// into its own directory.
func (d *Daemon) suspendSnapshot(ctx context.Context, s *suspendRun) error {
	if err := removeSavedPartial(s.vm.Runtime.VMDir); err != nil {
		return err
	}
	st, mem := stagingPaths(s.vm.Runtime.VMDir)
	req, err := firecracker.NewSnapshotCreate(st, mem)
	if err != nil {
		return err
	}
	s.progress(api.Progress{Step: "suspend", Message: fmt.Sprintf("saving %s of memory and the device state", model.FormatSizeBytes(int64(s.vm.Spec.MemoryMiB)<<20))})
	if err := d.vmmClient(s.vm).CreateSnapshot(ctx, req); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

func (d *Daemon) undoSnapshot(ctx context.Context, s *suspendRun) {
	if err := removeSavedPartial(s.vm.Runtime.VMDir); err != nil {
		s.log.Warn("undo: remove the snapshot files", "err", err)
	}
}

// suspendKill ends the VMM. The watcher sees its exit once the suspend
// has released the lock, and leaves alone a VM that is no longer
// running.
func (d *Daemon) suspendKill(ctx context.Context, s *suspendRun) error {
	p, err := d.openProc(s.h.PID)
	if err != nil {
		return fmt.Errorf("end the vmm: %w", err)
	}
	if p != nil {
		s.proc = p
		if err := p.Kill(); err != nil {
			return fmt.Errorf("end the vmm: %w", err)
		}
		gone, err := p.Wait(context.WithoutCancel(ctx), firecracker.KillWait)
		if err != nil {
			return fmt.Errorf("end the vmm: %w", err)
		}
		if !gone {
			return fmt.Errorf("end the vmm: still alive %s after SIGKILL", firecracker.KillWait)
		}
	}
	s.vmmGone = true
	s.clean = cleanupRun{vm: &s.vm, h: s.h, log: s.log}
	return nil
}

// suspendAdopt takes the VMM's snapshot files into the saved directory.
func (d *Daemon) suspendAdopt(ctx context.Context, s *suspendRun) error {
	n, err := adoptSnapshot(s.vm.Runtime.VMDir, s.vm.Runtime.VMMUID)
	if err != nil {
		return err
	}
	s.bytes = n
	return nil
}

func (d *Daemon) undoAdopt(ctx context.Context, s *suspendRun) {
	if err := dropSavedState(s.vm.Runtime.VMDir); err != nil {
		s.log.Warn("undo: drop the saved state", "err", err)
	}
}

// suspendSave records the VM as suspended. A cleanup that could not free
// everything is reported in LastError; the tap stays in the row so the
// sweep can finish it.
func (d *Daemon) suspendSave(ctx context.Context, s *suspendRun) error {
	d.finishCleanup(&s.clean)
	vm := &s.vm
	vm.State = model.VMStateSuspended
	vm.Runtime.SuspendedAt = model.Now()
	vm.Runtime.SavedStateBytes = s.bytes
	vm.Runtime.LastError = ""
	if err := errors.Join(s.clean.errs...); err != nil {
		vm.Runtime.LastError = fmt.Sprintf("suspend: cleanup incomplete: %v", err)
	}
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, *vm); err != nil {
		return err
	}
	took := time.Since(s.received)
	s.log.Info("vm suspended", "took_ms", took.Milliseconds(), "saved_bytes", s.bytes)
	s.progress(api.Progress{Step: "suspended", Message: fmt.Sprintf("in %.1fs; saved state %s (`banger vm start %s` resumes it)", took.Seconds(), sizeMiB(s.bytes), vm.Name)})
	return nil
}

// sizeMiB prints a byte count in MiB or GiB with one decimal.
func sizeMiB(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// discardRun is the state of the stop (or kill) of a suspended VM.
type discardRun struct {
	vm       model.VMRecord
	op       string
	progress api.ProgressFunc
	log      *slog.Logger
}

// discardSteps drop a suspended VM's saved state (the processes it held
// end; the disks stay), then record it stopped. A crash between the two
// leaves a suspended row without a saved state, which reconcile stops.
func (d *Daemon) discardSteps() []step[discardRun] {
	return []step[discardRun]{
		{Name: "discard:saved-state-dropped", Do: d.discardSaved},
		{Name: "discard:stopped", Do: d.discardSave},
	}
}

// discardLocked stops a suspended VM: its saved state is dropped. The
// caller holds the lock.
func (d *Daemon) discardLocked(ctx context.Context, vm model.VMRecord, op string, progress api.ProgressFunc) (model.VMRecord, error) {
	r := &discardRun{vm: vm, op: op, progress: progress, log: d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))}
	if err := runSteps(ctx, d.steps(r.log), undoOnError, d.discardSteps(), r); err != nil {
		return r.vm, fmt.Errorf("%s vm %s: %w", op, vm.Name, err)
	}
	return r.vm, nil
}

func (d *Daemon) discardSaved(ctx context.Context, r *discardRun) error {
	d.clocks.drop(r.vm.ID)
	// Nothing should run for a suspended VM, but a resume cut short by a
	// crash may have left a VMM or a tap: free them first.
	h, m := d.currentHandlesMatch(ctx, r.vm)
	if m.Ambiguous {
		return model.Errorf(model.ECONFLICT, "several processes claim to be its VMM; check `ps` for processes naming %s", r.vm.Runtime.APISockPath)
	}
	if h.PID > 0 {
		if err := d.killVMM(ctx, h.PID); err != nil {
			return err
		}
	}
	if h.PID > 0 || tapFor(r.vm, h) != "" || h.Overlay.DMName != "" || len(h.Overlay.Loops) > 0 {
		if err := d.cleanupRuntime(ctx, &r.vm, h); err != nil {
			return err
		}
	}
	if err := dropSavedState(r.vm.Runtime.VMDir); err != nil {
		return err
	}
	r.progress(api.Progress{Step: r.op, Message: fmt.Sprintf("dropped the saved state (%s): the processes it held are gone; the disks are kept", sizeMiB(r.vm.Runtime.SavedStateBytes))})
	return nil
}

func (d *Daemon) discardSave(ctx context.Context, r *discardRun) error {
	vm := &r.vm
	vm.State = model.VMStateStopped
	vm.Runtime.SuspendedAt = time.Time{}
	vm.Runtime.SavedStateBytes = 0
	vm.Runtime.LastError = ""
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, *vm); err != nil {
		return err
	}
	r.log.Info("suspended vm stopped; saved state dropped", "op", r.op)
	r.progress(api.Progress{Step: r.op, Message: "stopped"})
	return nil
}
