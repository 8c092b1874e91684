package daemon

import (
	"context"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// idleAction is what the idle policy does to vm: its own setting, else
// the daemon's auto_stop_mode, else suspend where the VMM can snapshot
// and stop where it cannot.
func (d *Daemon) idleAction(vm model.VMRecord) string {
	a := vm.Spec.IdleAction
	if a == "" {
		a = d.cfg.AutoStopMode
	}
	if a == "" || a == model.IdleSuspend {
		if d.boot != nil && d.boot.snapshots() == nil {
			return model.IdleSuspend
		}
		return model.IdleStop
	}
	return a
}

// idleLocked applies the idle policy to a VM idle for idle (past after):
// it is suspended, or stopped. A suspend that fails leaves the VM
// running; it is then stopped, so an idle VM never holds its VMM for
// good. The caller holds the lock.
func (d *Daemon) idleLocked(ctx context.Context, vm model.VMRecord, idle, after time.Duration) {
	log := d.logger.With("vm", vm.Name, "idle_for", idle.Round(time.Second), "after", after)
	if d.idleAction(vm) == model.IdleSuspend {
		log.Info("suspending an idle vm")
		next, err := d.suspendLocked(ctx, vm, api.NoProgress)
		if err == nil || next.State != model.VMStateRunning {
			if err != nil {
				log.Warn("auto-suspend", "err", err)
			}
			return
		}
		log.Warn("auto-suspend failed; stopping the vm instead", "err", err)
		vm = next
	} else {
		log.Info("auto-stopping an idle vm")
	}
	if _, err := d.stopLocked(ctx, vm, false, api.NoProgress); err != nil {
		log.Warn("auto-stop", "err", err)
	}
}

// checkSetSuspended refuses the changes a suspended VM's saved state
// cannot take: its vCPUs, memory and work disk size are in it.
func checkSetSuspended(vm model.VMRecord, req model.VMSetRequest) error {
	if vm.State != model.VMStateSuspended {
		return nil
	}
	what := ""
	switch {
	case req.VCPUCount != nil && *req.VCPUCount != vm.Spec.VCPUCount:
		what = "vCPUs"
	case req.MemoryMiB != nil && *req.MemoryMiB != vm.Spec.MemoryMiB:
		what = "memory"
	case req.WorkDiskSizeBytes != nil && *req.WorkDiskSizeBytes != vm.Spec.WorkDiskSizeBytes:
		what = "the work disk's size"
	default:
		return nil
	}
	return model.Errorf(model.ECONFLICT, "vm %q is suspended and its saved state keeps its %s as they were: resume it (`banger vm start %s`) and stop it, or drop the saved state with `banger vm stop %s`, then change it", vm.Name, what, vm.Name, vm.Name)
}
