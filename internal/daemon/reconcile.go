package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/internal/model"
	"banger/internal/network"
)

// reconcile makes the host and the database agree: observe every row and
// everything banger-shaped on the host, plan (a pure function), apply
// (idempotent). It runs at startup and from the stale sweep. Rows whose
// lock is held by another operation are left alone.
func (d *Daemon) reconcile(ctx context.Context, why string) error {
	start := time.Now()
	// A child of a cut-short fork goes first, whole (fork.go).
	d.removeHalfForks(ctx)
	// So do what a cut-short `image warm` left (warm.go).
	d.reconcileWarm(ctx)
	host, err := d.observeHost(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: observe host: %w", err)
	}
	rows, unlock, err := d.observeRows(ctx, host)
	defer unlock()
	if err != nil {
		return fmt.Errorf("reconcile: observe vms: %w", err)
	}
	plan := planReconcile(d.layout.vmsDir(), rows, host)
	err = d.applyPlan(ctx, plan, rows)
	if why == "startup" {
		// A daemon that died during a suspend may have left a VM paused.
		d.resumePaused(ctx, plan, rows)
	}
	if perr := d.reconcilePool(ctx, rows); perr != nil {
		err = errors.Join(err, perr)
	}
	if host.FiltersSeen {
		if ferr := d.applyFilterPlan(ctx, planFilters(rows), rows, host); ferr != nil {
			err = errors.Join(err, ferr)
		}
	}
	if n := len(plan.Adopt) + len(plan.Cleanup) + len(plan.KillVMMs) + len(plan.RemoveDMs) + len(plan.DetachLoops) + len(plan.RemoveDirs) + len(plan.RemoveCgroups) + len(plan.DropSaved) + len(plan.RemoveSavedPartial); n > 0 || why == "startup" {
		d.logger.Info("reconciled", "why", why, "adopted", len(plan.Adopt), "cleaned", len(plan.Cleanup),
			"orphan_vmms", len(plan.KillVMMs), "orphan_dms", len(plan.RemoveDMs), "orphan_loops", len(plan.DetachLoops),
			"orphan_dirs", len(plan.RemoveDirs), "took", time.Since(start).Round(time.Millisecond), "err", err)
	}
	return err
}

// observeHost lists banger-shaped things on the host.
func (d *Daemon) observeHost(ctx context.Context) (hostObservation, error) {
	host := hostObservation{StateDir: d.cfg.StateDir}
	if d.pool != nil {
		// As the kernel names a loop's backing file: symlinks resolved.
		host.PoolFile = d.pool.File
		if p, err := filepath.EvalSymlinks(d.pool.File); err == nil {
			host.PoolFile = p
		}
	}
	var errs []error
	if taps, err := d.net.ListTaps(ctx); err == nil {
		for _, t := range taps {
			host.Taps = append(host.Taps, t.Name)
		}
	} else {
		errs = append(errs, err)
	}
	if nat, err := d.net.ListNAT(ctx); err == nil {
		host.NAT = nat
	} else {
		errs = append(errs, err)
	}
	// A host where nft fails has no filters to see (and starts no VMs);
	// the rest of reconcile goes on.
	if filters, base, err := d.net.FilterStatus(ctx); err == nil {
		host.Filters, host.FilterBase = filters, base
		host.FiltersSeen = true
	} else {
		d.logger.Warn("reconcile: cannot list packet filters", "err", err)
	}
	if d.strategy == "dm-snapshot" {
		if dms, err := d.storage.ListDM(ctx); err == nil {
			host.DMs = dms
		} else {
			errs = append(errs, err)
		}
	}
	if loops, err := d.storage.ListLoops(ctx); err == nil {
		host.Loops = loops
	} else {
		errs = append(errs, err)
	}
	procs, err := d.procs.List()
	if err != nil {
		errs = append(errs, err)
	}
	host.Procs = procs
	host.VMMs = d.strayVMMs(procs)
	if d.cgroups != nil {
		if names, err := d.cgroups.List(); err == nil {
			host.Cgroups = names
		} else {
			errs = append(errs, err)
		}
	}
	if entries, err := os.ReadDir(d.layout.vmsDir()); err == nil {
		for _, e := range entries {
			host.VMDirs = append(host.VMDirs, e.Name())
		}
	} else {
		errs = append(errs, err)
	}
	return host, errors.Join(errs...)
}

// observeRows reads every VM row and what the OS shows of it. It takes
// the lock of every row it can; the returned function releases them.
func (d *Daemon) observeRows(ctx context.Context, host hostObservation) ([]vmObservation, func(), error) {
	var unlocks []func()
	release := func() {
		for _, u := range unlocks {
			u()
		}
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, release, err
	}
	images := map[string]string{}
	if imgs, err := d.store.ListImages(ctx); err == nil {
		for _, img := range imgs {
			images[img.ID] = img.RootfsPath
		}
	}
	var out []vmObservation
	for _, vm := range vms {
		obs := vmObservation{VM: vm}
		unlock, ok := d.locks.tryLock(vm.ID)
		if !ok {
			obs.Busy = true
			obs.Handles, _ = d.handles.get(vm.ID)
			out = append(out, obs)
			continue
		}
		unlocks = append(unlocks, unlock)
		// Re-read under the lock: an operation may have finished since.
		if fresh, err := d.store.GetVM(ctx, vm.ID); err == nil {
			vm = fresh
			obs.VM = fresh
		}
		h, cached := d.handles.get(vm.ID)
		if !cached {
			fh, err := readHandlesFile(vm.Runtime.VMDir)
			switch {
			case err == nil:
				h = fh
			case errors.Is(err, os.ErrNotExist):
				if vm.State == model.VMStateRunning {
					obs.HandlesNote = "handles.json missing; rebuilt from the OS"
				}
			default:
				obs.HandlesNote = fmt.Sprintf("%v; rebuilt from the OS", err)
			}
		}
		m := d.findVMM(vm, h.PID, host.Procs)
		if m.Ambiguous {
			// Someone copies the VMM's command line: which process is
			// the VMM cannot be told, so nothing of the VM is touched.
			obs.Busy = true
			obs.Handles = h
			out = append(out, obs)
			continue
		}
		obs.PID = m.PID
		h.PID = obs.PID
		obs.Saved = readSavedState(vm.Runtime.VMDir)
		if h.Tap == "" {
			h.Tap = vm.Runtime.TapDevice
		}
		if att, err := d.storage.FindAttached(ctx, vm.ID, vm.Runtime.SystemOverlay, images[vm.ImageID]); err == nil {
			if att.DMName != "" || len(att.Loops) > 0 {
				h.Overlay = att
			} else if h.Overlay.DMName == "" {
				h.Overlay.Device = vm.Runtime.SystemOverlay
			}
		}
		short := model.ShortID(vm.ID)
		for _, n := range host.NAT {
			if n.VMID == short || n.VMID == vm.ID {
				obs.NATRules = true
				obs.NATFull = !n.Partial
				if h.Tap == "" {
					h.Tap = n.Tap
				}
			}
		}
		for _, f := range host.Filters {
			if f.VMID == short {
				obs.FilterFull = !f.Partial && f.Tap == h.Tap && f.GuestIP == vm.Runtime.GuestIP
			}
		}
		obs.Handles = h
		out = append(out, obs)
	}
	return out, release, nil
}

// applyPlan carries a plan out, going on past errors.
func (d *Daemon) applyPlan(ctx context.Context, p reconcilePlan, rows []vmObservation) error {
	byID := map[string]model.VMRecord{}
	for _, r := range rows {
		byID[r.VM.ID] = r.VM
	}
	var errs []error
	for _, v := range p.KillVMMs {
		d.logger.Warn("killing a VMM no VM owns", "pid", v.PID, "api_sock", v.APISock)
		if err := d.killVMM(ctx, v.PID); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range p.Cleanup {
		vm := byID[c.VMID]
		log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
		if c.KillPID > 0 {
			if err := d.killVMM(ctx, c.KillPID); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		vm.State = c.NewState
		was := byID[c.VMID].State
		if err := d.cleanupRuntime(ctx, &vm, c.Handles); err != nil {
			vm.State = model.VMStateError
			vm.Runtime.LastError = fmt.Sprintf("cleanup after a dead VMM failed: %v", err)
			errs = append(errs, err)
		} else if (c.NewState == model.VMStateStopped || c.NewState == model.VMStateSuspended) && was != c.NewState {
			vm.Runtime.LastError = c.Reason
		}
		if c.NewState == model.VMStateSuspended && was != model.VMStateSuspended {
			vm.Runtime.SuspendedAt = c.Saved.At
			vm.Runtime.SavedStateBytes = c.Saved.Bytes
		}
		if was == model.VMStateSuspended && c.NewState != model.VMStateSuspended {
			vm.Runtime.SuspendedAt = time.Time{}
			vm.Runtime.SavedStateBytes = 0
			if err := dropSavedState(vm.Runtime.VMDir); err != nil {
				errs = append(errs, err)
			}
		}
		vm.UpdatedAt = model.Now()
		if err := d.store.UpdateVM(ctx, vm); err != nil {
			errs = append(errs, err)
		}
		log.Info("reconcile: cleaned up", "reason", c.Reason, "state", vm.State)
	}
	for _, a := range p.Adopt {
		vm := byID[a.VMID]
		log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
		if err := d.setVMHandles(vm.ID, vm.Runtime.VMDir, a.Handles); err != nil {
			errs = append(errs, err)
		}
		if a.Handles.Tap != "" && vm.Runtime.TapDevice != a.Handles.Tap {
			vm.Runtime.TapDevice = a.Handles.Tap
			if err := d.store.UpdateVM(ctx, vm); err != nil {
				errs = append(errs, err)
			}
		}
		if a.RestoreNAT && a.Handles.Tap != "" {
			if err := d.net.EnsureIPForward(ctx); err != nil {
				errs = append(errs, err)
			}
			if err := d.net.EnableNAT(ctx, network.NAT{VMID: vm.ID, GuestIP: vm.Runtime.GuestIP, Tap: a.Handles.Tap}); err != nil {
				errs = append(errs, err)
			}
			log.Info("reconcile: restored NAT rules")
		}
		if d.dns != nil {
			if err := d.dns.SetVM(vm.Name, vm.Runtime.GuestIP, vm.ID, vm.Spec.Egress); err != nil {
				errs = append(errs, err)
			}
		}
		if a.Note != "" {
			log.Warn("reconcile: adopted", "note", a.Note)
		}
		d.watchVMM(vm, a.Handles.PID, nil)
	}
	for _, name := range p.RemoveDMs {
		d.logger.Warn("removing an orphan dm device", "name", name)
		if err := d.storage.RemoveDM(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dev := range p.DetachLoops {
		d.logger.Warn("detaching an orphan loop device", "dev", dev)
		if err := d.storage.DetachLoop(ctx, dev); err != nil {
			errs = append(errs, err)
		}
	}
	if removed, err := d.net.RemoveOrphanRules(ctx, p.NATKeep); err != nil {
		errs = append(errs, err)
	} else if len(removed) > 0 {
		d.logger.Warn("removed orphan NAT rules", "vms", len(removed))
	}
	if d.netReady() {
		if err := d.net.Sync(ctx, p.TapsInUse); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range p.RemoveCgroups {
		d.logger.Warn("removing a cgroup no running VM owns", "cgroup", name)
		if err := d.cgroups.Remove(name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range p.DropSaved {
		d.logger.Warn("dropping a saved state whose VM is not suspended", "dir", dir)
		if err := dropSavedState(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range p.RemoveSavedPartial {
		d.logger.Warn("removing what a cut-short suspend or resume left", "dir", dir)
		if err := removeSavedPartial(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range p.RemoveDirs {
		if readSavedState(dir).Complete {
			d.logger.Warn("removing the saved state of a VM no row owns", "dir", dir)
		}
		d.logger.Warn("removing a VM dir no VM owns", "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// netReady reports whether the bridge is set up (taps need it).
func (d *Daemon) netReady() bool {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	return d.netOK
}

// resumePaused lets the vCPUs of adopted VMs run again where a daemon
// that died during a suspend (or a resume) left them paused: their rows
// say running, and nothing else would ever resume them.
func (d *Daemon) resumePaused(ctx context.Context, p reconcilePlan, rows []vmObservation) {
	byID := map[string]model.VMRecord{}
	for _, r := range rows {
		byID[r.VM.ID] = r.VM
	}
	for _, a := range p.Adopt {
		vm := byID[a.VMID]
		c := d.vmmClient(vm)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err := c.Describe(cctx)
		if err == nil && info.State == "Paused" {
			err = c.Resume(cctx)
			if err == nil {
				d.logger.Warn("reconcile: resumed a VM a cut-short suspend or resume left paused", "vm", vm.Name)
			}
		}
		cancel()
		if err != nil {
			d.logger.Warn("reconcile: could not check whether the VM is paused", "vm", vm.Name, "err", err)
		}
	}
}
