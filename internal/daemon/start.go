package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/fsutil"
	"banger/internal/model"
	"banger/internal/storage"
	"banger/internal/termsafe"
)

// StartVM implements api.Backend. It returns ENOTFOUND for a VM the
// caller cannot see, ECONFLICT when the VM is already running,
// EUNAVAILABLE when the host cannot run VMs (no network, no VMM, a full
// disk), and the failed step's error otherwise, with the VM left in state
// error and every step undone.
func (d *Daemon) StartVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if vm.State == model.VMStateRunning {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is already running", vm.Name)
	}
	if vm.State == model.VMStateSuspended {
		// A start of a suspended VM restores it (resume.go).
		if _, err := d.resumeLocked(context.WithoutCancel(ctx), vm, progress); err != nil {
			return api.VMView{}, err
		}
		return d.GetVM(ctx, vm.ID)
	}
	if vm.State == model.VMStateCreated {
		// A first start restores the image's warm state when one fits
		// (warmcreate.go).
		warm, err := d.firstStartWarm(context.WithoutCancel(ctx), &vm, progress)
		if err != nil {
			return api.VMView{}, err
		}
		if warm {
			return d.GetVM(ctx, vm.ID)
		}
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

// startRun is the state of one start, passed from step to step.
type startRun struct {
	vm       model.VMRecord
	img      model.Image
	spec     storage.OverlaySpec
	h        vmHandles
	launch   *vmmLaunch
	proc     *firecracker.Process
	received time.Time
	progress api.ProgressFunc
	log      *slog.Logger
	// restore is the saved state a resume loads (resume.go); nil for a
	// boot.
	restore *restoreFiles
	// held is the session the suspend left in the guest to set its
	// clock (suspend_vmm.go); nil when there is none.
	held clockHold
	// fork is the identity a fork's child is restored with (fork.go);
	// nil otherwise.
	fork *forkIdentity
	// renames are the workspace branches a fork's child renames.
	renames []branchRename
}

// startSteps are the steps of a start, in order. The VMM steps go
// through d.boot, the seam unit tests replace.
func (d *Daemon) startSteps() []step[startRun] {
	return []step[startRun]{
		{Name: "start:disks", Do: d.startDisks},
		{Name: "start:overlay-attached", Do: d.startAttach, Undo: d.undoAttach},
		{Name: "start:host-key", Do: d.startHostKey},
		{Name: "start:tap-acquired", Do: d.startTap, Undo: d.undoTap},
		{Name: "start:tap-recorded", Do: d.startRecordTap},
		// The VMM is launched before the capabilities so that it starts
		// up (its API socket) while the filter and NAT rules are made;
		// the guest still runs only at InstanceStart, after both.
		{Name: "start:vmm-launched", Do: d.startLaunch, Undo: d.undoLaunch},
		{Name: "start:capabilities", Do: d.startCapabilities, Undo: d.undoCapabilities},
		{Name: "start:configured", Do: func(ctx context.Context, s *startRun) error { return d.boot.configure(ctx, s) }},
		{Name: "start:instance-started", Do: func(ctx context.Context, s *startRun) error { return d.boot.instanceStart(ctx, s) }},
		{Name: "start:guest-ready", Do: func(ctx context.Context, s *startRun) error { return d.boot.waitReady(ctx, s) }},
		{Name: "start:ready", Do: d.startSaveRunning},
	}
}

// startLocked boots a VM by running startSteps. Any failure undoes every
// step done so far and leaves the VM in state error with LastError set.
// The caller holds the VM's lock.
func (d *Daemon) startLocked(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) (model.VMRecord, error) {
	s := &startRun{vm: vm, received: time.Now(), progress: progress, log: d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))}
	if err := d.requireNetwork(ctx); err != nil {
		return vm, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, fmt.Errorf("image of vm %s: %w", vm.Name, err)
	}
	if err := d.checkImageUsable(img); err != nil {
		return vm, err
	}
	s.img = img
	if err := d.boot.check(); err != nil {
		return vm, err
	}
	if err := runSteps(ctx, d.steps(s.log), undoOnError, d.startSteps(), s); err != nil {
		return d.startFailed(ctx, s, err)
	}
	// Keep the pool full for the next start, off the path to SSH.
	if err := d.net.Refill(ctx); err != nil {
		s.log.Warn("refill tap pool", "err", err)
	}
	return s.vm, nil
}

// steps is the daemon's step runner for one operation's log.
func (d *Daemon) steps(log *slog.Logger) stepRunner {
	return stepRunner{log: log, crash: d.crashPoint, times: &d.stepTimes}
}

// startFailed records a failed start: the steps are undone; the VM is in
// state error with the reason.
func (d *Daemon) startFailed(ctx context.Context, s *startRun, err error) (model.VMRecord, error) {
	if errors.Is(err, syscall.ENOSPC) {
		err = &model.Error{Code: model.EUNAVAILABLE, Err: err, Message: fmt.Sprintf("%v (the disk holding %s is full: free space there, or give the VM smaller disks)", err, d.cfg.StateDir)}
	}
	vm := s.vm
	d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	vm.State = model.VMStateError
	vm.Runtime.LastError = err.Error()
	vm.Runtime.TapDevice = ""
	vm.Runtime.Cgroup = ""
	vm.UpdatedAt = model.Now()
	if uerr := d.store.UpdateVM(ctx, vm); uerr != nil {
		s.log.Error("record failed start", "err", uerr)
	}
	s.log.Error("start failed", "err", err)
	return vm, err
}

// startDisks makes the system overlay and the work disk on the first
// start (they are kept across stops) and gives them to the VM's uid.
func (d *Daemon) startDisks(ctx context.Context, s *startRun) error {
	vm := &s.vm
	// Paths follow the current layout (a VM made by an older daemon had
	// its API socket beside its disks, not in the VMM's own directory).
	d.vmStrategy(vm)
	d.layout.vmPaths(vm.ID, &vm.Runtime)
	if d.jailerBinary(d.vmmBinary()) != "" {
		// Firecracker under its jailer: its socket and metrics are in
		// the VM's chroot.
		vm.Runtime.APISockPath = d.jailedSocket(*vm)
		vm.Runtime.MetricsPath = filepath.Join(filepath.Dir(filepath.Dir(vm.Runtime.APISockPath)), jailMetricsPath)
	}
	s.progress(api.Progress{Step: "disks", Message: "preparing system and work disks"})
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	s.spec = d.overlaySpec(*vm, s.img)
	if vm.Runtime.OverlayStrategy == "" {
		vm.Runtime.OverlayStrategy = string(s.spec.Strategy)
	}
	_, oerr := os.Stat(s.spec.OverlayPath)
	_, werr := os.Stat(vm.Runtime.WorkDiskPath)
	workSeed := s.img.WorkSeedPath
	if s.spec.Strategy == storage.StrategyPool {
		// Pool VMs' disks are clones of templates in the pool.
		var err error
		if workSeed, err = d.poolDisks(ctx, *vm, s.img, &s.spec, errors.Is(oerr, os.ErrNotExist), errors.Is(werr, os.ErrNotExist)); err != nil {
			return err
		}
	}
	if errors.Is(oerr, os.ErrNotExist) {
		s.progress(api.Progress{Step: "disks", Message: fmt.Sprintf("creating the %s system disk (%s)", s.spec.Strategy, model.FormatSizeBytes(s.spec.SizeBytes))})
		if err := d.storage.CreateOverlay(ctx, s.spec); err != nil {
			return err
		}
		vm.Runtime.HostKeyInstalled = false
	}
	if errors.Is(werr, os.ErrNotExist) {
		s.progress(api.Progress{Step: "disks", Message: fmt.Sprintf("creating the work disk (%s)", model.FormatSizeBytes(vm.Spec.WorkDiskSizeBytes))})
		owner, err := d.vmUser(*vm)
		if err != nil {
			return err
		}
		if err := d.storage.CreateWorkDisk(ctx, workSeed, vm.Runtime.WorkDiskPath, vm.Spec.WorkDiskSizeBytes, owner); err != nil {
			return err
		}
	}
	uid, err := d.vmmUID(*vm)
	if err != nil {
		return err
	}
	vm.Runtime.VMMUID = uid
	if d.cgroups != nil {
		vm.Runtime.Cgroup = d.cgroups.Path(vmCgroupName(vm.ID))
	}
	// The disks belong to the VM's own uid: its VMM and the sandboxed
	// tools that work on them run as that uid, not as root.
	for _, p := range []string{s.spec.OverlayPath, vm.Runtime.WorkDiskPath} {
		if err := d.storage.OwnDisk(p, uid); err != nil {
			return err
		}
	}
	return nil
}

// startAttach attaches the system overlay for this run.
func (d *Daemon) startAttach(ctx context.Context, s *startRun) error {
	att, err := d.storage.AttachOverlay(ctx, s.spec)
	if err != nil {
		return err
	}
	s.h.Overlay = att
	if err := d.setVMHandles(s.vm.ID, s.vm.Runtime.VMDir, s.h); err != nil {
		return err
	}
	return d.storage.OwnAttached(att, s.vm.Runtime.VMMUID)
}

func (d *Daemon) undoAttach(ctx context.Context, s *startRun) {
	if err := d.storage.DetachOverlay(ctx, s.h.Overlay); err != nil {
		s.log.Warn("undo: detach overlay", "err", err)
	}
}

// startHostKey puts the host key the daemon made for the VM on its
// system disk, before the guest boots from it.
func (d *Daemon) startHostKey(ctx context.Context, s *startRun) error {
	return d.ensureHostKey(ctx, &s.vm, s.h.Overlay.Device, s.vm.Runtime.VMMUID)
}

// startTap takes a tap from the pool.
func (d *Daemon) startTap(ctx context.Context, s *startRun) error {
	tap, err := d.net.Acquire(ctx)
	if err != nil {
		return err
	}
	s.h.Tap = tap
	return nil
}

func (d *Daemon) undoTap(ctx context.Context, s *startRun) {
	if err := d.net.Release(ctx, s.h.Tap); err != nil {
		s.log.Warn("undo: release tap", "tap", s.h.Tap, "err", err)
	}
}

// startRecordTap records the tap in the cache, handles.json and the row,
// so its cleanup survives losing any one of them.
func (d *Daemon) startRecordTap(ctx context.Context, s *startRun) error {
	if err := d.setVMHandles(s.vm.ID, s.vm.Runtime.VMDir, s.h); err != nil {
		return err
	}
	s.vm.Runtime.TapDevice = s.h.Tap
	s.vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, s.vm)
}

// startCapabilities runs each capability's start hook (NAT rules, DNS
// record, ...); on failure every one is cleaned up. The hooks are
// independent of each other (each has its own host objects and lock), so
// they run at once: the filter's nft and NAT's iptables-restore, a
// process each, side by side. The guest runs only after all are done.
func (d *Daemon) startCapabilities(ctx context.Context, s *startRun) error {
	errs := make([]error, len(d.caps))
	var wg sync.WaitGroup
	for i, c := range d.caps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.start(ctx, s.vm, s.h); err != nil {
				errs[i] = fmt.Errorf("%s: %w", c.name(), err)
			}
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return nil
	}
	// Cleanup removes what is gone without error: every capability is
	// cleaned, whether its start succeeded or not.
	for j := len(d.caps) - 1; j >= 0; j-- {
		if cerr := d.caps[j].cleanup(context.WithoutCancel(ctx), s.vm, s.h); cerr != nil {
			s.log.Warn("undo: capability cleanup", "cap", d.caps[j].name(), "err", cerr)
		}
	}
	return err
}

func (d *Daemon) undoCapabilities(ctx context.Context, s *startRun) {
	for i := len(d.caps) - 1; i >= 0; i-- {
		if err := d.caps[i].cleanup(ctx, s.vm, s.h); err != nil {
			s.log.Warn("undo: capability cleanup", "cap", d.caps[i].name(), "err", err)
		}
	}
}

// startLaunch starts the VMM, detached so it outlives the request and
// the daemon, and records its PID.
func (d *Daemon) startLaunch(ctx context.Context, s *startRun) error {
	if err := d.boot.launch(ctx, s); err != nil {
		return err
	}
	return d.setVMHandles(s.vm.ID, s.vm.Runtime.VMDir, s.h)
}

func (d *Daemon) undoLaunch(ctx context.Context, s *startRun) {
	d.boot.kill(ctx, s)
}

// startSaveRunning records the VM as running.
func (d *Daemon) startSaveRunning(ctx context.Context, s *startRun) error {
	vm := &s.vm
	vm.State = model.VMStateRunning
	vm.Runtime.LastError = ""
	vm.Runtime.StartedAt = model.Now()
	vm.UpdatedAt = model.Now()
	vm.LastTouchedAt = model.Now()
	if err := d.store.UpdateVM(ctx, *vm); err != nil {
		return err
	}
	ready := time.Since(s.received)
	s.log.Info("vm running", "ready_ms", ready.Milliseconds(), "pid", s.h.PID, "tap", s.h.Tap)
	s.progress(api.Progress{Step: "ready", Message: fmt.Sprintf("SSH answered after %.1fs", ready.Seconds())})
	d.watchVMM(*vm, s.h.PID, s.h.launched)
	return nil
}

// lastLines returns up to n trailing lines of a file (the guest's
// console), its control characters made visible: the text becomes an
// error message, stored as the VM's LastError and shown to users.
func lastLines(path string, n int) string {
	s, err := fsutil.Tail(path, n, 16384)
	if err != nil {
		return "(no console output)"
	}
	return termsafe.String(s)
}
