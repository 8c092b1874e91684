package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/model"
	"banger/internal/storage"
)

// The storage pool (storage.Pool): where the state directory cannot
// reflink and the host has no device-mapper, VM disks live in an XFS
// pool file loop-mounted on <state>/pool and are reflink clones of
// templates made from the images' files. A VM's strategy is fixed when
// it is created: VMs made before the pool keep their disks in their own
// directory ("copy" or "reflink"), VMs made with it have them in
// <pool>/vms/<id> ("pool").

// poolFile is the pool's backing file for the configured storage_pool.
func (d *Daemon) poolFile() string {
	switch sp := d.cfg.StoragePool; sp {
	case "", "auto", "off":
		return d.layout.poolFile()
	default:
		return sp
	}
}

// setupPool opens the storage pool when the configuration asks for it,
// or when VMs made with it exist (their disks are there), and makes it
// the strategy of new VMs in the first case. It runs at Start, after the
// overlay strategy was detected. A pool that cannot be opened leaves the
// detected strategy, with the reason logged and shown by doctor.
func (d *Daemon) setupPool(ctx context.Context) {
	d.baseStrategy = d.strategy
	var use bool
	switch sp := d.cfg.StoragePool; {
	case sp == "" || sp == "off":
		d.poolReason = "storage_pool is off"
	case sp == "auto" && d.storage.Forced() != "":
		d.poolReason = "not used: the overlay strategy is forced"
	case sp == "auto" && d.strategy != storage.StrategyCopy:
		d.poolReason = fmt.Sprintf("not needed: system disks are %s already", d.strategy)
	default:
		use = true
	}
	file := d.poolFile()
	if !use {
		if _, err := os.Stat(file); err != nil || !d.poolInUse(ctx) {
			return
		}
		d.poolReason += "; the pool stays mounted for the VMs whose disks are in it"
	}
	pool, err := d.storage.OpenPool(ctx, storage.PoolSpec{File: file, Dir: d.layout.poolDir()})
	if err != nil {
		d.poolReason = fmt.Sprintf("storage pool unusable: %v", err)
		d.logger.Error("storage pool", "err", err)
		return
	}
	d.pool = pool
	if use {
		d.strategy = storage.StrategyPool
		d.strategyReason = fmt.Sprintf("new VMs' disks are reflink clones in the storage pool %s mounted on %s (%s)", pool.File, pool.Dir, d.strategyReason)
		d.poolReason = "in use"
	}
	if u, err := pool.Usage(); err == nil {
		d.logger.Info("storage pool", "file", pool.File, "dir", pool.Dir, "usage", u.String(), "new_vms", use)
	}
}

// poolInUse reports whether any VM's disks are in the pool.
func (d *Daemon) poolInUse(ctx context.Context) bool {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		// Unknown: keep the pool mounted rather than strand disks.
		return true
	}
	for _, vm := range vms {
		if vm.Runtime.OverlayStrategy == string(storage.StrategyPool) {
			return true
		}
	}
	return false
}

// newVMStrategy is the overlay strategy recorded for a VM made now.
func (d *Daemon) newVMStrategy() string { return string(d.strategy) }

// vmStrategy fixes the strategy of a VM that has none recorded (made by
// an older daemon): disks already in its directory keep the strategy
// detected for the host; a VM without disks gets the current one.
func (d *Daemon) vmStrategy(vm *model.VMRecord) {
	if vm.Runtime.OverlayStrategy != "" {
		return
	}
	old := filepath.Join(d.layout.vmDir(vm.ID), "system.img")
	if _, err := os.Stat(old); err == nil && d.strategy == storage.StrategyPool {
		vm.Runtime.OverlayStrategy = string(d.baseStrategy)
		return
	}
	vm.Runtime.OverlayStrategy = string(d.strategy)
}

// requirePool returns why a VM whose disks are in the pool cannot use
// them now, if it cannot.
func (d *Daemon) requirePool(vm model.VMRecord) error {
	if vm.Runtime.OverlayStrategy != string(storage.StrategyPool) || d.pool != nil {
		return nil
	}
	return model.Errorf(model.EUNAVAILABLE, "vm %q has its disks in the storage pool, which is not mounted (%s); fix the pool (see `banger doctor`) and restart bangerd", vm.Name, d.poolReason)
}

// poolDisks prepares a pool VM's first start: its disk directory in the
// pool, and the templates its disks are cloned from. It sets the
// overlay's source to the rootfs template grown to the overlay's size
// and returns the work disk's source (the work seed grown to the work
// disk's size, or "" without a seed).
func (d *Daemon) poolDisks(ctx context.Context, vm model.VMRecord, img model.Image, spec *storage.OverlaySpec, needOverlay, needWork bool) (string, error) {
	if err := d.requirePool(vm); err != nil {
		return "", err
	}
	if !needOverlay && !needWork {
		return img.WorkSeedPath, nil
	}
	if err := os.MkdirAll(filepath.Dir(vm.Runtime.SystemOverlay), 0o700); err != nil {
		return "", fmt.Errorf("pool disk dir: %w", err)
	}
	// New disks need room for the guest's first writes.
	if err := d.pool.Reserve(ctx, 0); err != nil {
		return "", err
	}
	if needOverlay {
		t, err := d.pool.Template(ctx, img.RootfsPath, spec.SizeBytes)
		if err != nil {
			return "", err
		}
		spec.RootfsPath = t
	}
	if !needWork || img.WorkSeedPath == "" {
		return img.WorkSeedPath, nil
	}
	fi, err := os.Stat(img.WorkSeedPath)
	if err != nil || fi.Size() > vm.Spec.WorkDiskSizeBytes {
		// CreateWorkDisk says what is wrong.
		return img.WorkSeedPath, nil
	}
	return d.pool.Template(ctx, img.WorkSeedPath, vm.Spec.WorkDiskSizeBytes)
}

// poolOverlaySpec points a pool VM's overlay spec at its rootfs
// template, for a reset of its system disk.
func (d *Daemon) poolOverlaySpec(ctx context.Context, vm model.VMRecord, spec *storage.OverlaySpec) error {
	if spec.Strategy != storage.StrategyPool {
		return nil
	}
	if err := d.requirePool(vm); err != nil {
		return err
	}
	t, err := d.pool.Template(ctx, spec.RootfsPath, spec.SizeBytes)
	if err != nil {
		return err
	}
	spec.RootfsPath = t
	return nil
}

// removePoolDisks removes a deleted VM's disk directory in the pool.
func (d *Daemon) removePoolDisks(vm model.VMRecord) error {
	dir := d.layout.poolVMDir(vm.ID)
	if vm.Runtime.OverlayStrategy != string(storage.StrategyPool) && !exists(dir) {
		return nil
	}
	if d.pool == nil {
		// The mount point's own directory is the host's: nothing of the
		// VM is there while the pool is not mounted.
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pool disks: %w", err)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// reconcilePool checks the pool is mounted (mounting it again if not),
// removes disk directories in it that no row owns, and templates of
// images that are gone. It runs with reconcile, after the plan: rows
// is every VM.
func (d *Daemon) reconcilePool(ctx context.Context, rows []vmObservation) error {
	if d.pool == nil {
		return nil
	}
	if err := d.pool.Check(ctx); err != nil {
		return fmt.Errorf("storage pool: %w", err)
	}
	owned := map[string]bool{}
	busy := false
	for _, r := range rows {
		owned[model.ShortID(r.VM.ID)] = true
		busy = busy || r.Busy
	}
	var errs []error
	entries, err := os.ReadDir(filepath.Join(d.pool.Dir, "vms"))
	if err != nil {
		return fmt.Errorf("storage pool: %w", err)
	}
	for _, e := range entries {
		// A VM being created has no row yet while busy.
		if owned[e.Name()] || busy || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		d.logger.Info("reconcile: removing pool disks without a vm", "dir", e.Name())
		if err := os.RemoveAll(filepath.Join(d.pool.Dir, "vms", e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if n, err := d.pool.PruneTemplates(); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		d.logger.Info("reconcile: removed pool templates of removed images", "count", n)
	}
	return errors.Join(errs...)
}

// poolStatus describes the storage pool for doctor: its state and
// space, and whether new VMs use it.
func (d *Daemon) poolStatus(ctx context.Context) (string, bool, error) {
	if d.pool == nil {
		return d.poolReason + d.strategyCounts(ctx), false, nil
	}
	u, err := d.pool.Usage()
	if err != nil {
		return "", false, err
	}
	// A new disk needs the headroom, backed by the host beyond its
	// reserve (storage.Pool.Reserve).
	low := u.HostFreeBytes < 2*storage.PoolHeadroom
	return fmt.Sprintf("%s on %s: %s (%s)%s", d.pool.File, d.pool.Dir, u, d.poolReason, d.strategyCounts(ctx)), low, nil
}

// strategyCounts says how many VMs use each disk strategy, as
// "; VMs' disks: 2 pool, 1 copy", or "" without VMs.
func (d *Daemon) strategyCounts(ctx context.Context) string {
	vms, err := d.store.ListVMs(ctx)
	if err != nil || len(vms) == 0 {
		return ""
	}
	n := map[string]int{}
	for _, vm := range vms {
		st := vm.Runtime.OverlayStrategy
		if st == "" {
			st = "not yet made"
		}
		n[st]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", n[k], k)
	}
	return "; VMs' disks: " + strings.Join(parts, ", ")
}

// vmPoolView says, for `vm inspect`, where a VM's disks are: the pool's
// space for a pool VM, nothing for the others (their strategy says it).
func (d *Daemon) vmPoolView(vm model.VMRecord) string {
	if vm.Runtime.OverlayStrategy != string(storage.StrategyPool) {
		return ""
	}
	if d.pool == nil {
		return "not mounted: " + d.poolReason
	}
	u, err := d.pool.Usage()
	if err != nil {
		return fmt.Sprintf("%s (usage unknown: %v)", d.pool.Dir, err)
	}
	return fmt.Sprintf("%s: %s", d.pool.Dir, u)
}

// warmPool makes the pool templates of a new image for VMs of the
// default sizes, so their first start clones instead of copying. A
// failure is only logged: the first start makes what is missing.
func (d *Daemon) warmPool(ctx context.Context, img model.Image) {
	if d.pool == nil || d.strategy != storage.StrategyPool {
		return
	}
	spec := d.specFromRequest(model.VMCreateRequest{})
	ctx = context.WithoutCancel(ctx)
	if _, err := d.pool.Template(ctx, img.RootfsPath, spec.SystemOverlaySizeByte); err != nil {
		d.logger.Warn("storage pool: rootfs template", "image", img.Name, "err", err)
	}
	if img.WorkSeedPath == "" {
		return
	}
	if fi, err := os.Stat(img.WorkSeedPath); err != nil || fi.Size() > spec.WorkDiskSizeBytes {
		return
	}
	if _, err := d.pool.Template(ctx, img.WorkSeedPath, spec.WorkDiskSizeBytes); err != nil {
		d.logger.Warn("storage pool: work seed template", "image", img.Name, "err", err)
	}
}
