package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/storage"
	"banger/internal/termsafe"
)

// StartVM implements api.Backend.
func (d *Daemon) StartVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if vm.State == model.VMStateRunning {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is already running", vm.Name)
	}
	// A start outlives the request that asked for it: a client that goes
	// away must not leave a VM half started.
	if _, err := d.startLocked(context.WithoutCancel(ctx), vm, progress); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// overlaySpec describes a VM's system overlay.
func (d *Daemon) overlaySpec(vm model.VMRecord, img model.Image) storage.OverlaySpec {
	st := storage.Strategy(vm.Runtime.OverlayStrategy)
	if st == "" {
		st = d.strategy
	}
	return storage.OverlaySpec{VMID: vm.ID, RootfsPath: img.RootfsPath, OverlayPath: vm.Runtime.SystemOverlay, SizeBytes: vm.Spec.SystemOverlaySizeByte, Strategy: st}
}

// startLocked boots a VM: disks, tap, capabilities, VMM, configuration,
// InstanceStart, then waits for SSH. Any failure undoes every step done so
// far and leaves the VM in state error with LastError set. The caller
// holds the VM's lock.
func (d *Daemon) startLocked(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	received := time.Now()
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	var undo []func()
	var h vmHandles
	fail := func(err error) (model.VMRecord, error) {
		if errors.Is(err, syscall.ENOSPC) {
			err = &model.Error{Code: model.EUNAVAILABLE, Err: err, Message: fmt.Sprintf("%v (the disk holding %s is full: free space there, or give the VM smaller disks)", err, d.cfg.StateDir)}
		}
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
		vm.State = model.VMStateError
		vm.Runtime.LastError = err.Error()
		vm.Runtime.TapDevice = ""
		vm.UpdatedAt = model.Now()
		if uerr := d.store.UpdateVM(ctx, vm); uerr != nil {
			log.Error("record failed start", "err", uerr)
		}
		log.Error("start failed", "err", err)
		return vm, err
	}

	if err := d.requireNetwork(ctx); err != nil {
		return vm, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, fmt.Errorf("image of vm %s: %w", vm.Name, err)
	}
	if err := d.boot.check(); err != nil {
		return vm, err
	}

	// Disks: the overlay and work disk are made once and kept across
	// stops; the overlay is attached for this run.
	progress(api.Progress{Step: "disks", Message: "preparing system and work disks"})
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
		return fail(fmt.Errorf("vm dir: %w", err))
	}
	spec := d.overlaySpec(vm, img)
	if vm.Runtime.OverlayStrategy == "" {
		vm.Runtime.OverlayStrategy = string(spec.Strategy)
	}
	if _, err := os.Stat(spec.OverlayPath); errors.Is(err, os.ErrNotExist) {
		progress(api.Progress{Step: "disks", Message: fmt.Sprintf("creating the %s system disk (%s)", spec.Strategy, model.FormatSizeBytes(spec.SizeBytes))})
		if err := d.storage.CreateOverlay(ctx, spec); err != nil {
			return fail(err)
		}
	}
	if _, err := os.Stat(vm.Runtime.WorkDiskPath); errors.Is(err, os.ErrNotExist) {
		progress(api.Progress{Step: "disks", Message: fmt.Sprintf("creating the work disk (%s)", model.FormatSizeBytes(vm.Spec.WorkDiskSizeBytes))})
		owner, err := d.vmUser(vm)
		if err != nil {
			return fail(err)
		}
		if err := d.storage.CreateWorkDisk(ctx, img.WorkSeedPath, vm.Runtime.WorkDiskPath, vm.Spec.WorkDiskSizeBytes, owner); err != nil {
			return fail(err)
		}
	}
	d.crashPoint("start:disks")
	att, err := d.storage.AttachOverlay(ctx, spec)
	if err != nil {
		return fail(err)
	}
	h.Overlay = att
	undo = append(undo, func() {
		if err := d.storage.DetachOverlay(context.Background(), att); err != nil {
			log.Warn("undo: detach overlay", "err", err)
		}
	})
	if err := d.setVMHandles(vm.ID, vm.Runtime.VMDir, h); err != nil {
		return fail(err)
	}
	d.crashPoint("start:overlay-attached")

	// The tap is recorded in the cache, handles.json and the row, so its
	// cleanup survives losing any one of them.
	tap, err := d.net.Acquire(ctx)
	if err != nil {
		return fail(err)
	}
	h.Tap = tap
	undo = append(undo, func() {
		if err := d.net.Release(context.Background(), tap); err != nil {
			log.Warn("undo: release tap", "tap", tap, "err", err)
		}
	})
	d.crashPoint("start:tap-acquired")
	if err := d.setVMHandles(vm.ID, vm.Runtime.VMDir, h); err != nil {
		return fail(err)
	}
	vm.Runtime.TapDevice = tap
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return fail(err)
	}
	d.crashPoint("start:tap-recorded")

	for _, c := range d.caps {
		c := c
		if err := c.start(ctx, vm, h); err != nil {
			return fail(fmt.Errorf("%s: %w", c.name(), err))
		}
		undo = append(undo, func() {
			if err := c.cleanup(context.Background(), vm, h); err != nil {
				log.Warn("undo: capability cleanup", "cap", c.name(), "err", err)
			}
		})
	}
	d.crashPoint("start:capabilities")

	// The VMM: launched detached, so it outlives this request and the
	// daemon; booted; and waited for until the guest answers SSH.
	hostKey, err := d.boot.boot(ctx, vm, img, &h, received, progress)
	if err != nil {
		return fail(err)
	}
	vm.Runtime.SSHHostKey = hostKey
	vm.State = model.VMStateRunning
	vm.Runtime.LastError = ""
	vm.Runtime.StartedAt = model.Now()
	vm.UpdatedAt = model.Now()
	vm.LastTouchedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return fail(err)
	}
	ready := time.Since(received)
	log.Info("vm running", "ready_ms", ready.Milliseconds(), "pid", h.PID, "tap", tap)
	progress(api.Progress{Step: "ready", Message: fmt.Sprintf("SSH answered after %.1fs", ready.Seconds())})
	d.crashPoint("start:ready")
	// Keep the pool full for the next start, off the path to SSH.
	if err := d.net.Refill(ctx); err != nil {
		log.Warn("refill tap pool", "err", err)
	}
	return vm, nil
}

// lastLines returns up to n trailing lines of a file (the guest's
// console), its control characters made visible: the text becomes an
// error message, stored as the VM's LastError and shown to users.
func lastLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no console output)"
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	start := size - 16384
	if start < 0 {
		start = 0
	}
	buf := make([]byte, size-start)
	f.ReadAt(buf, start)
	lines := strings.Split(strings.TrimRight(string(buf), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return termsafe.String(strings.Join(lines, "\n"))
}
