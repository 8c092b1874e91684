package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/network"
)

// currentHandles returns a VM's handles: the cache, else handles.json,
// else what the OS shows. The PID is always checked against what the
// daemon knows of the VM's VMM (its socket, uid and binary), so a reused
// PID or a process copying the VMM's argv is never signalled.
func (d *Daemon) currentHandles(ctx context.Context, vm model.VMRecord) vmHandles {
	h, _ := d.currentHandlesMatch(ctx, vm)
	return h
}

// currentHandlesMatch is currentHandles that also says whether the VMM
// was ambiguous (several processes fit).
func (d *Daemon) currentHandlesMatch(ctx context.Context, vm model.VMRecord) (vmHandles, vmmMatch) {
	h, ok := d.handles.get(vm.ID)
	var fileErr error
	if !ok {
		fh, err := readHandlesFile(vm.Runtime.VMDir)
		fileErr = err
		if err == nil {
			h = fh
		} else if !errors.Is(err, os.ErrNotExist) {
			d.logger.Warn("ignoring handles.json", "vm", vm.Name, "err", err)
		}
	}
	if !needVMMSearch(vm.State, ok, fileErr) {
		if h.Tap == "" {
			h.Tap = vm.Runtime.TapDevice
		}
		return h, vmmMatch{}
	}
	m := d.findVMM(vm, h.PID, nil)
	h.PID = m.PID
	if h.Tap == "" {
		h.Tap = vm.Runtime.TapDevice
	}
	return h, m
}

// needVMMSearch says whether finding a VM's VMM needs a look at the
// host's processes, given its state, whether the handle cache has it and
// the error reading its handles.json. A created or stopped VM that
// neither has handles in the cache nor a handles.json has no VMM: a VMM
// is launched only by a start, under the VM's lock (which the caller
// holds), and the launch records its handles before the lock goes; a
// VMM left by a daemon that died before recording them is killed by the
// reconcile at startup, before any request is served, since its row is
// not running (and any VMM whose socket no row names is killed by every
// sweep). Every other case (running, error, handles known, an unreadable
// file) searches, as before: that search reads every process on the host,
// the cost that made `vm rm` of a never-started VM slow.
func needVMMSearch(state model.VMState, cached bool, handlesFileErr error) bool {
	if cached || !errors.Is(handlesFileErr, os.ErrNotExist) {
		return true
	}
	return state != model.VMStateCreated && state != model.VMStateStopped
}

// StopVM implements api.Backend.
func (d *Daemon) StopVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if _, err := d.stopLocked(context.WithoutCancel(ctx), vm, false, progress); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// KillVM implements api.Backend.
func (d *Daemon) KillVM(ctx context.Context, ref string) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if _, err := d.stopLocked(context.WithoutCancel(ctx), vm, true, api.NoProgress); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// RestartVM implements api.Backend.
func (d *Daemon) RestartVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	if vm, err = d.stopLocked(ctx, vm, false, progress); err != nil {
		return api.VMView{}, err
	}
	if _, err := d.startLocked(ctx, vm, progress); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// stopRun is the state of one stop or kill, passed from step to step.
type stopRun struct {
	vm       model.VMRecord
	h        vmHandles
	kill     bool
	op       string // "stop" or "kill"
	proc     vmmProc
	cadErr   error
	clean    cleanupRun
	progress api.ProgressFunc
	log      *slog.Logger
}

// stopSteps are the steps of a stop (op "stop": the guest's work is
// captured, Ctrl-Alt-Del, a wait, SIGKILL after the stop timeout) or a
// kill (op "kill": SIGKILL at once), then the cleanup steps, then the
// state saved.
func (d *Daemon) stopSteps(op string) []step[stopRun] {
	var steps []step[stopRun]
	if op == "stop" {
		steps = append(steps, step[stopRun]{Name: "stop:captured", Do: d.stopCapture})
	}
	steps = append(steps,
		step[stopRun]{Name: op + ":signalled", Do: d.stopSignal},
		step[stopRun]{Name: op + ":vmm-exited", Do: d.stopWait},
	)
	for _, c := range d.cleanupSteps() {
		c := c
		// Cleanup goes on past errors: each step frees something of its
		// own. They are collected and reported when the state is saved.
		steps = append(steps, step[stopRun]{Name: c.Name, Do: func(ctx context.Context, s *stopRun) error {
			if err := c.Do(ctx, &s.clean); err != nil {
				s.clean.errs = append(s.clean.errs, err)
			}
			return nil
		}})
	}
	return append(steps, step[stopRun]{Name: op + ":state-saved", Do: d.stopSave})
}

// stopLocked ends a VM's VMM (Ctrl-Alt-Del then SIGKILL after the stop
// timeout, or SIGKILL at once when kill is set) and cleans up its runtime,
// by running stopSteps. A VM that is not running is only cleaned up. The
// caller holds the lock. It returns ECONFLICT when several processes
// claim to be the VM's VMM (nothing is touched then).
func (d *Daemon) stopLocked(ctx context.Context, vm model.VMRecord, kill bool, progress api.ProgressFunc) (model.VMRecord, error) {
	op := "stop"
	if kill {
		op = "kill"
	}
	if vm.State == model.VMStateSuspended {
		// Its saved state is dropped (suspend.go).
		return d.discardLocked(ctx, vm, op, progress)
	}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	h, m := d.currentHandlesMatch(ctx, vm)
	if m.Ambiguous {
		return vm, model.Errorf(model.ECONFLICT, "%s vm %s: several processes claim to be its VMM; check `ps` for processes naming %s", op, vm.Name, vm.Runtime.APISockPath)
	}
	if vm.State != model.VMStateRunning && h.PID == 0 && tapFor(vm, h) == "" && h.Overlay.DMName == "" && len(h.Overlay.Loops) == 0 {
		// Nothing runs and nothing is held: just make the state honest.
		if vm.State == model.VMStateError {
			vm.State = model.VMStateStopped
			vm.UpdatedAt = model.Now()
			return vm, d.store.UpdateVM(ctx, vm)
		}
		return vm, nil
	}
	s := &stopRun{vm: vm, h: h, kill: kill, op: op, progress: progress, log: log}
	defer func() {
		if s.proc != nil {
			s.proc.Close()
		}
	}()
	if err := runSteps(ctx, d.steps(log), undoOnError, d.stopSteps(op), s); err != nil {
		return s.vm, err
	}
	if s.vm.State == model.VMStateError {
		return s.vm, errors.New(s.vm.Runtime.LastError)
	}
	return s.vm, nil
}

// stopCapture saves the guest's workspace work while it still runs, so
// it can be fetched from the stopped VM.
func (d *Daemon) stopCapture(ctx context.Context, s *stopRun) error {
	if s.vm.State == model.VMStateRunning && s.h.PID > 0 {
		d.captureBeforeStop(ctx, s.vm, s.progress)
	}
	return nil
}

// stopSignal presses Ctrl-Alt-Del (stop) or sends SIGKILL (kill).
func (d *Daemon) stopSignal(ctx context.Context, s *stopRun) error {
	if s.h.PID <= 0 {
		return nil
	}
	p, err := d.openProc(s.h.PID)
	if err != nil {
		return fmt.Errorf("%s vm %s: %w", s.op, s.vm.Name, err)
	}
	if p == nil {
		return nil // already gone
	}
	s.proc = p
	if s.kill {
		s.progress(api.Progress{Step: s.op, Message: "killing the VMM"})
		if err := p.Kill(); err != nil {
			return fmt.Errorf("kill vm %s: %w", s.vm.Name, err)
		}
		return nil
	}
	s.progress(api.Progress{Step: s.op, Message: fmt.Sprintf("Ctrl-Alt-Del, waiting up to %s", d.cfg.StopTimeout)})
	sctx, cancel := context.WithTimeout(ctx, min(d.cfg.StopTimeout, 5*time.Second))
	s.cadErr = d.vmmClient(s.vm).SendCtrlAltDel(sctx)
	cancel()
	return nil
}

// stopWait waits for the VMM to exit: up to the stop timeout after
// Ctrl-Alt-Del, then SIGKILL.
func (d *Daemon) stopWait(ctx context.Context, s *stopRun) error {
	if s.proc != nil {
		exited := false
		if !s.kill && s.cadErr == nil {
			var err error
			if exited, err = s.proc.Wait(ctx, d.cfg.StopTimeout); err != nil {
				return fmt.Errorf("%s vm %s: %w", s.op, s.vm.Name, err)
			}
			if exited {
				s.log.Info("vmm exited cleanly")
			}
		}
		if !exited {
			if !s.kill {
				msg := "the guest did not shut down in time; killed it"
				if s.cadErr != nil {
					msg = fmt.Sprintf("Ctrl-Alt-Del could not be sent (%v); killed the VMM", s.cadErr)
				}
				s.progress(api.Progress{Step: s.op, Message: msg, Warning: true})
				if err := s.proc.Kill(); err != nil {
					return fmt.Errorf("%s vm %s: kill: %w", s.op, s.vm.Name, err)
				}
			}
			gone, err := s.proc.Wait(context.WithoutCancel(ctx), firecracker.KillWait)
			if err != nil {
				return fmt.Errorf("%s vm %s: %w", s.op, s.vm.Name, err)
			}
			if !gone {
				return fmt.Errorf("%s vm %s: the VMM is still alive %s after SIGKILL", s.op, s.vm.Name, firecracker.KillWait)
			}
			s.log.Info("vmm killed", "requested", s.kill, "ctrl_alt_del_err", s.cadErr)
		}
	}
	s.clean = cleanupRun{vm: &s.vm, h: s.h, log: s.log}
	s.vm.State = model.VMStateStopped
	return nil
}

// stopSave records the outcome: stopped, or error when the cleanup was
// incomplete.
func (d *Daemon) stopSave(ctx context.Context, s *stopRun) error {
	d.finishCleanup(&s.clean)
	if err := errors.Join(s.clean.errs...); err != nil {
		s.vm.State = model.VMStateError
		s.vm.Runtime.LastError = fmt.Sprintf("%s: cleanup incomplete: %v", s.op, err)
	} else {
		s.vm.Runtime.LastError = ""
	}
	s.vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, s.vm); err != nil {
		return err
	}
	s.progress(api.Progress{Step: s.op, Message: "stopped"})
	return nil
}

// cleanupRun is the state of one cleanup.
type cleanupRun struct {
	vm   *model.VMRecord
	h    vmHandles
	errs []error
	log  *slog.Logger
}

// cleanupSteps undo a run of a VM whose VMM is gone: capabilities'
// cleanup (NAT, DNS), the tap back to the pool, the overlay detached, the
// cgroup removed. They run on every path that ends a run (stop, kill,
// a VMM's exit seen by the watcher, reconcile), each going on past the
// others' errors.
func (d *Daemon) cleanupSteps() []step[cleanupRun] {
	return []step[cleanupRun]{
		{Name: "cleanup:capabilities", Do: func(ctx context.Context, c *cleanupRun) error {
			var errs []error
			for i := len(d.caps) - 1; i >= 0; i-- {
				if err := d.caps[i].cleanup(ctx, *c.vm, c.h); err != nil {
					errs = append(errs, fmt.Errorf("%s cleanup: %w", d.caps[i].name(), err))
				}
			}
			return errors.Join(errs...)
		}},
		{Name: "cleanup:tap-released", Do: func(ctx context.Context, c *cleanupRun) error {
			if tap := tapFor(*c.vm, c.h); tap != "" {
				if err := d.net.Release(ctx, tap); err != nil {
					return fmt.Errorf("release tap %s: %w", tap, err)
				}
			}
			return nil
		}},
		{Name: "cleanup:overlay-detached", Do: func(ctx context.Context, c *cleanupRun) error {
			if c.h.Overlay.DMName != "" || len(c.h.Overlay.Loops) > 0 {
				if err := d.storage.DetachOverlay(ctx, c.h.Overlay); err != nil {
					return fmt.Errorf("detach overlay: %w", err)
				}
			} else if img, err := d.store.GetImage(ctx, c.vm.ImageID); err == nil {
				// The handles were lost: find what is attached from the OS.
				if err := d.storage.DetachVM(ctx, c.vm.ID, c.vm.Runtime.SystemOverlay, img.RootfsPath); err != nil {
					return fmt.Errorf("detach overlay: %w", err)
				}
			}
			return nil
		}},
		{Name: "cleanup:cgroup-removed", Do: func(ctx context.Context, c *cleanupRun) error {
			// The VMM's confinement: its cgroup, and its jail when
			// firecracker ran under the jailer.
			return errors.Join(d.removeCgroup(*c.vm), d.removeJail(*c.vm))
		}},
	}
}

// finishCleanup forgets the run's handles once the cleanup steps ran:
// the API socket and handles go; the tap and cgroup are cleared from the
// row only when everything was freed (else the next cleanup needs them).
func (d *Daemon) finishCleanup(c *cleanupRun) {
	os.Remove(c.vm.Runtime.APISockPath)
	d.clearVMHandles(c.vm.ID, c.vm.Runtime.VMDir)
	if len(c.errs) == 0 {
		c.vm.Runtime.TapDevice = ""
		c.vm.Runtime.Cgroup = ""
	}
}

// cleanupRuntime undoes a run of a VM whose VMM is gone (cleanupSteps),
// for reconcile and the VMM watcher. NAT cleanup and tap release use the
// handle cache and fall back to Runtime.TapDevice. It goes on past errors
// and returns them all.
func (d *Daemon) cleanupRuntime(ctx context.Context, vm *model.VMRecord, h vmHandles) error {
	c := &cleanupRun{vm: vm, h: h, log: d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))}
	err := runSteps(ctx, d.steps(c.log), continueOnError, d.cleanupSteps(), c)
	if err != nil {
		c.errs = append(c.errs, err)
	}
	d.finishCleanup(c)
	return err
}

// ResetSystem implements api.Backend: a stopped VM gets a fresh system
// overlay from its image; /root is kept.
func (d *Daemon) ResetSystem(ctx context.Context, ref string) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if vm.State == model.VMStateRunning {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is running; stop it first (`banger vm stop %s`)", vm.Name, vm.Name)
	}
	if vm.State == model.VMStateSuspended {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is suspended: its saved memory expects the system disk it has; resume it (`banger vm start %s`) and stop it, or drop the saved state with `banger vm stop %s`, then reset it", vm.Name, vm.Name, vm.Name)
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return api.VMView{}, err
	}
	if err := d.checkImageUsable(img); err != nil {
		return api.VMView{}, err
	}
	spec := d.overlaySpec(vm, img)
	if _, err := os.Stat(spec.OverlayPath); errors.Is(err, os.ErrNotExist) {
		// Never started: the first start makes a fresh overlay anyway.
		return d.GetVM(ctx, vm.ID)
	}
	if err := d.poolOverlaySpec(ctx, vm, &spec); err != nil {
		return api.VMView{}, err
	}
	if err := d.storage.ResetOverlay(context.WithoutCancel(ctx), spec); err != nil {
		return api.VMView{}, err
	}
	// The fresh system disk has the image's files, not the VM's host key.
	vm.Runtime.HostKeyInstalled = false
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return api.VMView{}, err
	}
	d.logger.Info("system disk reset", "vm", vm.Name)
	return d.GetVM(ctx, vm.ID)
}

// applySet stores a changed spec, growing the work disk of a stopped VM
// and switching NAT on a running one. The caller holds the VM's lock and
// has validated next against the VM's state.
func (d *Daemon) applySet(ctx context.Context, vm *model.VMRecord, next model.VMSpec) error {
	ctx = context.WithoutCancel(ctx)
	if next.WorkDiskSizeBytes != vm.Spec.WorkDiskSizeBytes {
		if _, err := os.Stat(vm.Runtime.WorkDiskPath); err == nil {
			owner, err := d.vmUser(*vm)
			if err != nil {
				return err
			}
			if err := d.storage.GrowWorkDisk(ctx, vm.Runtime.WorkDiskPath, next.WorkDiskSizeBytes, owner); err != nil {
				return err
			}
		}
	}
	if vm.State == model.VMStateRunning && next.NATEnabled != vm.Spec.NATEnabled {
		h := d.currentHandles(ctx, *vm)
		tap := tapFor(*vm, h)
		if tap == "" {
			return fmt.Errorf("vm %s is running without a known tap; restart it", vm.Name)
		}
		n := network.NAT{VMID: vm.ID, GuestIP: vm.Runtime.GuestIP, Tap: tap}
		if next.NATEnabled {
			if err := d.net.EnsureIPForward(ctx); err != nil {
				return err
			}
			if err := d.net.EnableNAT(ctx, n); err != nil {
				return err
			}
		} else if err := d.net.DisableNAT(ctx, n); err != nil {
			return err
		}
	}
	if vm.State == model.VMStateRunning && next.Egress.String() != vm.Spec.Egress.String() {
		if err := d.applyEgressLive(ctx, *vm, next.Egress); err != nil {
			return err
		}
	}
	vm.Spec = next
	vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}

// deleteRun is the state of one delete.
type deleteRun struct {
	vm       model.VMRecord
	progress api.ProgressFunc
}

// deleteSteps remove a VM: stopped (killed) first, then the row, then its
// files, so a crash part way leaves only files that reconcile removes as
// orphans.
func (d *Daemon) deleteSteps() []step[deleteRun] {
	return []step[deleteRun]{
		{Name: "rm:stopped", Do: func(ctx context.Context, r *deleteRun) error {
			vm, err := d.stopLocked(ctx, r.vm, true, r.progress)
			r.vm = vm
			return err
		}},
		{Name: "rm:row-deleted", Do: func(ctx context.Context, r *deleteRun) error {
			return d.store.DeleteVM(ctx, r.vm.ID)
		}},
		{Name: "rm:dir-removed", Do: func(ctx context.Context, r *deleteRun) error {
			if err := os.RemoveAll(r.vm.Runtime.VMDir); err != nil {
				return fmt.Errorf("remove vm dir: %w", err)
			}
			return d.removePoolDisks(r.vm)
		}},
	}
}

// deleteLocked removes a VM by running deleteSteps. The caller holds the
// lock. It returns ECONFLICT for a running VM without force, or one with
// workspace work the user has not fetched.
func (d *Daemon) deleteLocked(ctx context.Context, vm model.VMRecord, opts api.VMDeleteOptions, progress api.ProgressFunc) error {
	if vm.State == model.VMStateRunning && !opts.Force {
		return model.Errorf(model.ECONFLICT, "vm %q is running; stop it first or pass --force", vm.Name)
	}
	if vm.State == model.VMStateSuspended && !opts.Force {
		return model.Errorf(model.ECONFLICT, "vm %q is suspended (its processes are saved); stop it first (`banger vm stop %s` drops the saved state) or pass --force", vm.Name, vm.Name)
	}
	if !opts.Force {
		// Workspace work the user has not fetched dies with the vm.
		if err := d.checkUnfetched(ctx, vm); err != nil {
			return err
		}
	}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	if err := runSteps(ctx, d.steps(log), undoOnError, d.deleteSteps(), &deleteRun{vm: vm, progress: progress}); err != nil {
		return err
	}
	log.Info("vm removed")
	progress(api.Progress{Step: "removed", Message: vm.Name})
	return nil
}
