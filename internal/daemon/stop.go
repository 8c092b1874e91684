package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/network"
)

// currentHandles returns a VM's handles: the cache, else handles.json,
// else what the OS shows. The PID is always checked against the process
// that owns the VM's API socket, so a reused PID is never signalled.
func (d *Daemon) currentHandles(ctx context.Context, vm model.VMRecord) vmHandles {
	h, ok := d.handles.get(vm.ID)
	if !ok {
		if fh, err := readHandlesFile(vm.Runtime.VMDir); err == nil {
			h = fh
		} else if !errors.Is(err, os.ErrNotExist) {
			d.logger.Warn("ignoring handles.json", "vm", vm.Name, "err", err)
		}
	}
	pid, err := firecracker.FindPID(vm.Runtime.APISockPath)
	if err != nil {
		pid = 0
	}
	h.PID = pid
	if h.Tap == "" {
		h.Tap = vm.Runtime.TapDevice
	}
	return h
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

// stopLocked ends a VM's VMM (Ctrl-Alt-Del then SIGKILL after the stop
// timeout, or SIGKILL at once when kill is set) and cleans up its runtime.
// A VM that is not running is only cleaned up. The caller holds the lock.
func (d *Daemon) stopLocked(ctx context.Context, vm model.VMRecord, kill bool, progress api.ProgressFunc) (model.VMRecord, error) {
	op := "stop"
	if kill {
		op = "kill"
	}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	h := d.currentHandles(ctx, vm)
	if vm.State != model.VMStateRunning && h.PID == 0 && tapFor(vm, h) == "" && h.Overlay.DMName == "" && len(h.Overlay.Loops) == 0 {
		// Nothing runs and nothing is held: just make the state honest.
		if vm.State == model.VMStateError {
			vm.State = model.VMStateStopped
			vm.UpdatedAt = model.Now()
			return vm, d.store.UpdateVM(ctx, vm)
		}
		return vm, nil
	}
	if !kill && vm.State == model.VMStateRunning && h.PID > 0 {
		// The guest's workspace work is captured while it still runs, so
		// it can be fetched from the stopped VM.
		d.captureBeforeStop(ctx, vm, progress)
	}
	if h.PID > 0 {
		if kill {
			progress(api.Progress{Step: op, Message: "killing the VMM"})
		} else {
			progress(api.Progress{Step: op, Message: fmt.Sprintf("Ctrl-Alt-Del, waiting up to %s", d.cfg.StopTimeout)})
		}
		var client *firecracker.Client
		timeout := time.Duration(0)
		if !kill {
			client = firecracker.NewClient(vm.Runtime.APISockPath)
			timeout = d.cfg.StopTimeout
		}
		d.crashPoint(op + ":signalled")
		res, err := firecracker.Stop(ctx, client, h.PID, timeout)
		if err != nil {
			return vm, fmt.Errorf("%s vm %s: %w", op, vm.Name, err)
		}
		switch {
		case res.Clean:
			log.Info("vmm exited cleanly")
		case res.Killed:
			log.Info("vmm killed", "requested", kill, "ctrl_alt_del_err", res.CtrlAltDelErr)
			if !kill {
				progress(api.Progress{Step: op, Message: "the guest did not shut down in time; killed it", Warning: true})
			}
		}
	}
	d.crashPoint(op + ":vmm-exited")
	vm.State = model.VMStateStopped
	if err := d.cleanupRuntime(ctx, &vm, h); err != nil {
		vm.State = model.VMStateError
		vm.Runtime.LastError = fmt.Sprintf("%s: cleanup incomplete: %v", op, err)
	} else {
		vm.Runtime.LastError = ""
	}
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return vm, err
	}
	d.crashPoint(op + ":state-saved")
	progress(api.Progress{Step: op, Message: "stopped"})
	if vm.State == model.VMStateError {
		return vm, errors.New(vm.Runtime.LastError)
	}
	return vm, nil
}

// cleanupRuntime undoes a run of a VM whose VMM is gone: capabilities'
// cleanup (NAT, DNS), the tap back to the pool, the overlay detached, the
// handles forgotten and Runtime.TapDevice cleared. NAT cleanup and tap
// release use the handle cache and fall back to Runtime.TapDevice. It goes
// on past errors and returns them all.
func (d *Daemon) cleanupRuntime(ctx context.Context, vm *model.VMRecord, h vmHandles) error {
	var errs []error
	for i := len(d.caps) - 1; i >= 0; i-- {
		if err := d.caps[i].cleanup(ctx, *vm, h); err != nil {
			errs = append(errs, fmt.Errorf("%s cleanup: %w", d.caps[i].name(), err))
		}
	}
	d.crashPoint("cleanup:capabilities")
	if tap := tapFor(*vm, h); tap != "" {
		if err := d.net.Release(ctx, tap); err != nil {
			errs = append(errs, fmt.Errorf("release tap %s: %w", tap, err))
		}
	}
	d.crashPoint("cleanup:tap-released")
	if h.Overlay.DMName != "" || len(h.Overlay.Loops) > 0 {
		if err := d.storage.DetachOverlay(ctx, h.Overlay); err != nil {
			errs = append(errs, fmt.Errorf("detach overlay: %w", err))
		}
	} else if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		// The handles were lost: find what is attached from the OS.
		if err := d.storage.DetachVM(ctx, vm.ID, vm.Runtime.SystemOverlay, img.RootfsPath); err != nil {
			errs = append(errs, fmt.Errorf("detach overlay: %w", err))
		}
	}
	d.crashPoint("cleanup:overlay-detached")
	os.Remove(vm.Runtime.APISockPath)
	d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	if len(errs) == 0 {
		vm.Runtime.TapDevice = ""
	}
	return errors.Join(errs...)
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
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return api.VMView{}, err
	}
	spec := d.overlaySpec(vm, img)
	if _, err := os.Stat(spec.OverlayPath); errors.Is(err, os.ErrNotExist) {
		// Never started: the first start makes a fresh overlay anyway.
		return d.GetVM(ctx, vm.ID)
	}
	if err := d.storage.ResetOverlay(context.WithoutCancel(ctx), spec); err != nil {
		return api.VMView{}, err
	}
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
			if err := d.storage.GrowWorkDisk(ctx, vm.Runtime.WorkDiskPath, next.WorkDiskSizeBytes); err != nil {
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

// deleteLocked removes a VM: stopped first when forced, then the row, so
// a crash part way leaves only files that reconcile removes as orphans.
// The caller holds the lock.
func (d *Daemon) deleteLocked(ctx context.Context, vm model.VMRecord, opts api.VMDeleteOptions, progress api.ProgressFunc) error {
	if vm.State == model.VMStateRunning && !opts.Force {
		return model.Errorf(model.ECONFLICT, "vm %q is running; stop it first or pass --force", vm.Name)
	}
	if !opts.Force {
		// Workspace work the user has not fetched dies with the vm.
		if err := d.checkUnfetched(ctx, vm); err != nil {
			return err
		}
	}
	var err error
	if vm, err = d.stopLocked(ctx, vm, true, progress); err != nil {
		return err
	}
	d.crashPoint("rm:stopped")
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return err
	}
	d.crashPoint("rm:row-deleted")
	if err := os.RemoveAll(vm.Runtime.VMDir); err != nil {
		return fmt.Errorf("remove vm dir: %w", err)
	}
	d.logger.Info("vm removed", "vm", vm.Name, "id", vm.ID)
	progress(api.Progress{Step: "removed", Message: vm.Name})
	return nil
}
