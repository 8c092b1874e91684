package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"banger/internal/api"
	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/model"
)

// A VM's first start from its image's warm state (warm.go): a copy of
// the warm state becomes the VM's disks and saved state, and the VM is
// resumed from it as a fork's child is (ForkOf set, its tap
// quarantined, re-identified, then admitted), followed by the first
// boot's per-VM setup. Any failure puts the VM back as it was before
// its first start and boots it cold.

// warmCreateRun is the state of one first start from a warm state.
type warmCreateRun struct {
	vm       model.VMRecord
	img      model.Image
	meta     warmMeta
	dir      string
	progress api.ProgressFunc
}

// warmCreateSteps are the steps up to the resume (resumeSteps, as for
// a fork's child).
func (d *Daemon) warmCreateSteps() []step[warmCreateRun] {
	return []step[warmCreateRun]{
		{Name: "warm-create:reserved", Do: d.warmCreateReserve},
		{Name: "warm-create:copied", Do: d.warmCreateCopy},
		{Name: "warm-create:saved", Do: d.warmCreateSave},
	}
}

// firstStartWarm is the first start of vm (state created) when its
// image has a warm state that fits: it returns the VM running and true,
// or false when the VM is to boot cold (the reason recorded in
// vm.Runtime.CreatedFrom and said in progress). The caller holds the
// VM's lock.
func (d *Daemon) firstStartWarm(ctx context.Context, vm *model.VMRecord, progress api.ProgressFunc) (bool, error) {
	cold := func(why string) (bool, error) {
		vm.Runtime.CreatedFrom = "cold boot"
		if why != "" {
			vm.Runtime.CreatedFrom += " (" + why + ")"
			progress(api.Progress{Step: "boot", Message: "booting cold: " + why})
		} else {
			progress(api.Progress{Step: "boot", Message: "booting cold"})
		}
		// Recorded with the start's own first write of the row.
		return false, nil
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return false, nil // the start says so
	}
	dir := d.layout.warmDir(img.ID)
	m, err := readWarm(dir, d.warmDisksRoot())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return cold("")
	case err != nil:
		return cold(fmt.Sprintf("the warm state of %s is unusable: %v", img.Name, err))
	}
	if vm.Runtime.Cold {
		return cold("--cold")
	}
	if why := warmMismatch(m, vm.Spec); why != "" {
		return cold(fmt.Sprintf("the warm state of %s does not fit: %s", img.Name, why))
	}
	if why := d.warmCheck(img, m); why != "" {
		return cold(fmt.Sprintf("the warm state of %s is invalid: %s", img.Name, why))
	}
	if err := d.requireNetwork(ctx); err != nil {
		return false, err
	}
	// The warm state is not remade or dropped while it is copied.
	unlock, ok := d.locks.tryLock(warmLockKey(img.ID))
	if !ok {
		return cold(fmt.Sprintf("the warm state of %s is being remade", img.Name))
	}
	s := &warmCreateRun{vm: *vm, img: img, meta: m, dir: dir, progress: progress}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID), "op", "warm-create")
	progress(api.Progress{Step: "warm", Message: fmt.Sprintf("restoring from the warm state of %s (made %s ago)", img.Name, roughAge(m.MadeAt))})
	err = func() error {
		defer unlock()
		return runSteps(ctx, d.steps(log), undoOnError, d.warmCreateSteps(), s)
	}()
	if err == nil {
		id := forkIdentity{srcID: m.SrcID, srcName: m.SrcName, srcIP: m.SrcIP, srcHostKey: m.SrcHostKey, firstBoot: true}
		if m.WaiterToken != "" {
			id.waiterAddr, id.waiterToken = net.JoinHostPort(m.SrcIP, strconv.Itoa(m.WaiterPort)), m.WaiterToken
		}
		var got model.VMRecord
		got, err = d.resumeLockedWith(ctx, s.vm, progress, &id)
		if err == nil {
			*vm = got
			return true, nil
		}
	}
	// Back to what it was before its first start, then cold.
	log.Warn("warm create failed; booting cold", "err", err)
	progress(api.Progress{Step: "warm", Message: fmt.Sprintf("the warm state did not make the VM (%v); booting cold", err), Warning: true})
	if rerr := d.unwarm(ctx, vm); rerr != nil {
		return false, fmt.Errorf("warm create failed (%v) and undoing it failed: %w", err, rerr)
	}
	return cold(fmt.Sprintf("the warm state of %s failed: %v", img.Name, err))
}

// warmCreateReserve marks the VM as being made from the warm state
// (ForkOf: a crash from here on leaves a half-made VM that reconcile
// removes) and gives it its own host key, which the re-identification
// installs.
func (d *Daemon) warmCreateReserve(ctx context.Context, s *warmCreateRun) error {
	vm := &s.vm
	vm.Runtime.ForkOf = warmForkOf(s.img.ID)
	vm.Runtime.OverlayStrategy = s.meta.OverlayStrategy
	d.layout.vmPaths(vm.ID, &vm.Runtime)
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	priv, pub, err := guest.NewHostKey()
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(hostKeyPath(vm.Runtime.VMDir), priv, 0o600); err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	vm.Runtime.SSHHostKey = pub
	vm.Runtime.HostKeyInstalled = true
	vm.Runtime.CreatedFrom = "warm state of " + s.img.Name
	vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}

// warmCreateCopy copies the warm state's disks and snapshot to the VM,
// as a fork copies them to a child.
func (d *Daemon) warmCreateCopy(ctx context.Context, s *warmCreateRun) error {
	sys, work, st, mem := warmFiles(s.dir, s.meta)
	_, err := d.forkCopyChild(ctx, &forkChild{vm: s.vm}, sys, work, st, mem)
	return err
}

// warmCreateSave records the VM as suspended with its saved state (still
// ForkOf: the resume makes it its own machine).
func (d *Daemon) warmCreateSave(ctx context.Context, s *warmCreateRun) error {
	vm := &s.vm
	info := readSavedState(vm.Runtime.VMDir)
	if !info.Complete {
		return fmt.Errorf("the saved state copied from the warm state is incomplete")
	}
	vm.State = model.VMStateSuspended
	vm.Runtime.State = model.VMStateSuspended
	vm.Runtime.SuspendedAt = model.Now()
	vm.Runtime.SavedStateBytes = info.Bytes
	vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}

// unwarm puts a VM whose warm create failed back as it was before its
// first start (its resume's steps are undone already): no saved state,
// no disks, no host key installed, created.
func (d *Daemon) unwarm(ctx context.Context, vm *model.VMRecord) error {
	fresh, err := d.store.GetVM(ctx, vm.ID)
	if err != nil {
		return err
	}
	d.clearVMHandles(fresh.ID, fresh.Runtime.VMDir)
	dir := fresh.Runtime.VMDir
	for _, p := range []string{savedDir(dir), filepath.Join(dir, savedNewDirName), filepath.Join(dir, savedOldDirName)} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if err := removeSavedPartial(dir); err != nil {
		return err
	}
	for _, p := range []string{fresh.Runtime.SystemOverlay, fresh.Runtime.WorkDiskPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		os.Remove(p + ".part")
	}
	d.removePoolDisks(fresh)
	fresh.State = model.VMStateCreated
	fresh.Runtime.State = model.VMStateCreated
	fresh.Runtime.ForkOf = ""
	fresh.Runtime.SuspendedAt = time.Time{}
	fresh.Runtime.StartedAt = time.Time{}
	fresh.Runtime.SavedStateBytes = 0
	fresh.Runtime.HostKeyInstalled = false
	fresh.Runtime.TapDevice = ""
	fresh.Runtime.Cgroup = ""
	fresh.Runtime.LastError = ""
	fresh.Runtime.OverlayStrategy = d.newVMStrategy()
	d.layout.vmPaths(fresh.ID, &fresh.Runtime)
	fresh.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, fresh); err != nil {
		return err
	}
	*vm = fresh
	return nil
}
