package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/network"
)

// A fork makes running copies of a running VM. The source is paused
// only while its VMM writes a snapshot and its disks are copied (reflink
// clones where the filesystem has them), then runs on. Each child is a
// new VM whose saved state is a copy of that snapshot: the fork resumes
// it (resume.go) with its tap quarantined (network/quarantine.go), so
// the restored guest, which still holds the source's address, MAC and
// keys, reaches nobody but the daemon. Over that path the daemon reseeds
// its RNG, gives it its own host key, machine-id and hostname, sets its
// clock and re-addresses it; only once it answers on its own address
// with its own key does its tap join the bridge. A child row carries
// ForkOf until then: one left by a crash is removed by reconcile.

// forkRun is the state of one fork, passed from step to step.
type forkRun struct {
	src      model.VMRecord
	h        vmHandles
	names    []string
	children []*forkChild
	// pausedAt is when the source's vCPUs stopped; paused is how long.
	pausedAt time.Time
	paused   time.Duration
	cloned   bool
	progress api.ProgressFunc
	log      *slog.Logger
}

// forkChild is one child of a fork and its lock, held for the whole
// fork so that reconcile leaves it alone.
type forkChild struct {
	vm     model.VMRecord
	unlock func()
}

// forkIdentity is what a child is restored with and must shed.
type forkIdentity struct {
	srcID, srcName, srcIP, srcHostKey string
	// firstBoot: the child is a VM made from an image's warm state
	// (warmcreate.go), which gets a cold boot's per-VM setup (file
	// sync, the user's keys) once admitted.
	firstBoot bool
	// waiterAddr and waiterToken, when set, reach the waiter the warm
	// state was left with (guest.CallWaiter), which runs
	// identityProgram without an SSH handshake.
	waiterAddr, waiterToken string
}

// forkSteps are the steps of a fork up to its children's resumes (each
// a resume, with the fork's steps in it).
func (d *Daemon) forkSteps() []step[forkRun] {
	return []step[forkRun]{
		{Name: "fork:children-reserved", Do: d.forkReserve, Undo: d.undoForkReserve},
		{Name: "fork:paused", Do: d.forkPause, Undo: d.undoForkPause},
		{Name: "fork:snapshot-written", Do: d.forkSnapshot, Undo: d.undoForkSnapshot},
		{Name: "fork:copied", Do: d.forkCopy},
		{Name: "fork:source-resumed", Do: d.forkResumeSource},
		{Name: "fork:copies-made", Do: d.forkCopyRest},
		{Name: "fork:children-saved", Do: d.forkSaveChildren},
	}
}

// ForkVM implements api.Backend.
func (d *Daemon) ForkVM(ctx context.Context, ref string, req model.VMForkRequest, progress api.ProgressFunc) ([]api.VMView, error) {
	src, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if src.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %q is %s; only a running VM can be forked (start it with `banger vm start %s`)", src.Name, src.State, src.Name)
	}
	if err := d.boot.snapshots(); err != nil {
		return nil, err
	}
	names, err := d.forkNames(ctx, src.Name, req)
	if err != nil {
		return nil, err
	}
	if err := d.requireNetwork(ctx); err != nil {
		return nil, err
	}
	h, m := d.currentHandlesMatch(ctx, src)
	if m.Ambiguous {
		return nil, model.Errorf(model.ECONFLICT, "fork vm %s: several processes claim to be its VMM; check `ps` for processes naming %s", src.Name, src.Runtime.APISockPath)
	}
	if h.PID == 0 {
		return nil, model.Errorf(model.ECONFLICT, "fork vm %s: its VMM is not running (the daemon will notice and clean up)", src.Name)
	}
	log := d.logger.With("vm", src.Name, "id", model.ShortID(src.ID), "op", "fork")
	s := &forkRun{src: src, h: h, names: names, progress: progress, log: log}
	defer func() {
		for _, c := range s.children {
			if c.unlock != nil {
				c.unlock()
			}
		}
	}()
	// A fork outlives the request that asked for it, as a start does.
	fctx := context.WithoutCancel(ctx)
	received := time.Now()
	if err := runSteps(fctx, d.steps(log), undoOnError, d.forkSteps(), s); err != nil {
		return nil, fmt.Errorf("fork vm %s: %w (it keeps running; no child was made)", src.Name, err)
	}
	id := forkIdentity{srcID: src.ID, srcName: src.Name, srcIP: src.Runtime.GuestIP, srcHostKey: src.Runtime.SSHHostKey}
	views, errs := d.forkResumeChildren(fctx, s.children, &id, progress)
	if err := d.net.Refill(fctx); err != nil {
		log.Warn("refill tap pool", "err", err)
	}
	log.Info("forked", "children", len(views), "paused_ms", s.paused.Milliseconds(), "all_ready_ms", time.Since(received).Milliseconds())
	if len(errs) > 0 {
		return views, fmt.Errorf("fork vm %s: %w", src.Name, errors.Join(errs...))
	}
	progress(api.Progress{Step: "forked", Message: fmt.Sprintf("%d children answer SSH %.1fs after the request; %s was paused %dms", len(views), time.Since(received).Seconds(), src.Name, s.paused.Milliseconds())})
	return views, nil
}

// forkParallel is how many of a fork's children are restored and made
// their own machines at once. Under TCG on a 2-core host a child's time
// is almost all its guest's CPU, so children side by side only share
// the same cores: measured here, two at a time was no faster, and one
// such run did not finish within minutes (cause not found), so children
// are restored one after another. A host with cores to spare may raise
// it; each child still keeps its own quarantine, re-identification and
// admission order.
const forkParallel = 1

// forkResumeChildren resumes the children (each its own resume: its own
// tap, quarantine, re-identification and admission, in that order),
// forkParallel at a time, and returns the views of those that became
// their own machines, in the children's order. A child that did not is
// removed: no half child is left.
func (d *Daemon) forkResumeChildren(ctx context.Context, children []*forkChild, id *forkIdentity, progress api.ProgressFunc) ([]api.VMView, []error) {
	// The children's progress is interleaved into one stream.
	var mu sync.Mutex
	say := func(p api.Progress) {
		mu.Lock()
		defer mu.Unlock()
		progress(p)
	}
	type result struct {
		vm   model.VMRecord
		errs []error
	}
	results := make([]result, len(children))
	sem := make(chan struct{}, forkParallel)
	var wg sync.WaitGroup
	// Every goroutine is waited for before the function returns.
	for i, c := range children {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			vm, err := d.resumeLockedWith(ctx, c.vm, say, id)
			r := &results[i]
			r.vm = vm
			if err != nil {
				// No half child: one that did not become its own
				// machine goes.
				r.errs = append(r.errs, fmt.Errorf("child %s: %w", c.vm.Name, err))
				if derr := d.removeForkChild(ctx, vm); derr != nil {
					r.errs = append(r.errs, fmt.Errorf("remove child %s: %w", c.vm.Name, derr))
				}
			}
		}()
	}
	wg.Wait()
	var views []api.VMView
	var errs []error
	for _, r := range results {
		if len(r.errs) > 0 {
			errs = append(errs, r.errs...)
			continue
		}
		views = append(views, d.view(r.vm))
	}
	return views, errs
}

// removeForkChild removes a child that did not become its own machine:
// its VMM, tap, rules, row and files.
func (d *Daemon) removeForkChild(ctx context.Context, vm model.VMRecord) error {
	if fresh, err := d.store.GetVM(ctx, vm.ID); err == nil {
		vm = fresh
	} else if model.ErrorCode(err) == model.ENOTFOUND {
		os.RemoveAll(vm.Runtime.VMDir)
		return nil
	}
	err := d.deleteLocked(ctx, vm, api.VMDeleteOptions{Force: true}, func(api.Progress) {})
	if err == nil {
		d.locks.forget(vm.ID)
	}
	return err
}

// forkNames checks the requested names, or makes count of them
// (src-1, src-2, ... the first that are free).
func (d *Daemon) forkNames(ctx context.Context, src string, req model.VMForkRequest) ([]string, error) {
	switch {
	case len(req.Names) > 0 && req.Count != 0 && req.Count != len(req.Names):
		return nil, model.Errorf(model.EINVALID, "give the children's names or --count, not both")
	case req.Count < 0:
		return nil, model.Errorf(model.EINVALID, "count %d: give a number of children from 1 to %d", req.Count, model.MaxForkChildren)
	case len(req.Names) > model.MaxForkChildren || req.Count > model.MaxForkChildren:
		return nil, model.Errorf(model.EINVALID, "at most %d children per fork", model.MaxForkChildren)
	}
	taken := func(name string) (bool, error) {
		_, err := d.store.GetVM(ctx, name)
		if err == nil {
			return true, nil
		}
		if model.ErrorCode(err) == model.ENOTFOUND {
			return false, nil
		}
		return false, err
	}
	seen := map[string]bool{}
	if len(req.Names) > 0 {
		for _, n := range req.Names {
			if err := model.ValidateVMName(n); err != nil {
				return nil, err
			}
			if seen[n] {
				return nil, model.Errorf(model.EINVALID, "child name %q given twice", n)
			}
			seen[n] = true
			t, err := taken(n)
			if err != nil {
				return nil, err
			}
			if t {
				return nil, model.Errorf(model.ECONFLICT, "vm %q already exists; pick another name for the child", n)
			}
		}
		return req.Names, nil
	}
	count := max(req.Count, 1)
	var names []string
	for i := 1; len(names) < count && i < 10000; i++ {
		n := src + "-" + strconv.Itoa(i)
		if err := model.ValidateVMName(n); err != nil {
			return nil, model.Errorf(model.EINVALID, "%s's children would be named %s...: %v; name them instead", src, n, err)
		}
		t, err := taken(n)
		if err != nil {
			return nil, err
		}
		if !t {
			names = append(names, n)
		}
	}
	return names, nil
}

// forkReserve makes the children's rows (new IPs, MACs, DNS names, host
// keys; the source's spec and image), each marked ForkOf and locked.
func (d *Daemon) forkReserve(ctx context.Context, s *forkRun) error {
	d.createMu.Lock()
	defer d.createMu.Unlock()
	src := s.src
	add := usage{VMs: len(s.names), DiskBytes: int64(len(s.names)) * (src.Spec.SystemOverlaySizeByte + src.Spec.WorkDiskSizeBytes)}
	if err := d.checkLimits(ctx, api.CallerFrom(ctx), add); err != nil {
		return err
	}
	used, err := d.store.GuestIPs(ctx)
	if err != nil {
		return err
	}
	for _, name := range s.names {
		if _, err := d.store.GetVM(ctx, name); err == nil {
			return model.Errorf(model.ECONFLICT, "vm %q already exists; pick another name for the child", name)
		}
		ip, err := network.AllocateIP(d.cfg.BridgeIP, d.cfg.CIDR, used)
		if err != nil {
			return err
		}
		used = append(used, ip)
		mac, err := network.MACForIP(ip)
		if err != nil {
			return err
		}
		id, err := model.NewID()
		if err != nil {
			return err
		}
		now := model.Now()
		vm := model.VMRecord{
			ID: id, Name: name, ImageID: src.ImageID, State: model.VMStateCreated,
			CreatedAt: now, UpdatedAt: now, LastTouchedAt: now,
			Spec:     src.Spec,
			OwnerUID: src.OwnerUID,
			Runtime: model.VMRuntime{
				State:           model.VMStateCreated,
				GuestIP:         ip,
				GuestMAC:        mac,
				DNSName:         model.DNSName(name, d.cfg.DNSDomain),
				OverlayStrategy: src.Runtime.OverlayStrategy,
				ForkOf:          src.ID,
			},
		}
		d.layout.vmPaths(id, &vm.Runtime)
		if _, err := os.Stat(vm.Runtime.VMDir); err == nil {
			return fmt.Errorf("vm dir for new id %s already exists", model.ShortID(id))
		}
		if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
			return fmt.Errorf("vm dir: %w", err)
		}
		c := &forkChild{vm: vm, unlock: d.locks.lock(id)}
		s.children = append(s.children, c)
		// The child's own host key: installed in the guest by the
		// fork, over the daemon's first session.
		priv, pub, err := guest.NewHostKey()
		if err != nil {
			return err
		}
		if err := fsutil.WriteFileAtomic(hostKeyPath(vm.Runtime.VMDir), priv, 0o600); err != nil {
			return fmt.Errorf("host key: %w", err)
		}
		c.vm.Runtime.SSHHostKey = pub
		c.vm.Runtime.HostKeyInstalled = true
		if err := d.store.CreateVM(ctx, c.vm); err != nil {
			return err
		}
	}
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("children %s reserved", strings.Join(s.names, ", "))})
	return nil
}

func (d *Daemon) undoForkReserve(ctx context.Context, s *forkRun) {
	for _, c := range s.children {
		if err := d.store.DeleteVM(ctx, c.vm.ID); err != nil && model.ErrorCode(err) != model.ENOTFOUND {
			s.log.Warn("undo: delete child row", "child", c.vm.Name, "err", err)
		}
		os.RemoveAll(c.vm.Runtime.VMDir)
		// Disks in a pool dir outside the VM dir: the files, then the
		// dir if that left it empty.
		for _, p := range []string{c.vm.Runtime.SystemOverlay, c.vm.Runtime.WorkDiskPath} {
			os.Remove(p)
			os.Remove(p + ".part")
			os.Remove(filepath.Dir(p))
		}
		d.locks.forget(c.vm.ID)
		c.unlock()
		c.unlock = nil
	}
}

// forkPause stops the source's vCPUs.
func (d *Daemon) forkPause(ctx context.Context, s *forkRun) error {
	if err := d.vmmClient(s.src).Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	s.pausedAt = time.Now()
	return nil
}

func (d *Daemon) undoForkPause(ctx context.Context, s *forkRun) {
	if err := d.vmmClient(s.src).Resume(ctx); err != nil {
		s.log.Warn("undo: resume the source's vcpus", "err", err)
	}
}

// forkSnapshot has the source's VMM write its memory and device state.
func (d *Daemon) forkSnapshot(ctx context.Context, s *forkRun) error {
	if err := removeSavedPartial(s.src.Runtime.VMDir); err != nil {
		return err
	}
	st, mem := stagingPaths(s.src.Runtime.VMDir)
	req, err := firecracker.NewSnapshotCreate(st, mem)
	if err != nil {
		return err
	}
	if err := d.vmmClient(s.src).CreateSnapshot(ctx, req); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

func (d *Daemon) undoForkSnapshot(ctx context.Context, s *forkRun) {
	if err := removeSavedPartial(s.src.Runtime.VMDir); err != nil {
		s.log.Warn("undo: remove the snapshot files", "err", err)
	}
}

// forkCopy moves the snapshot where the source's VMM cannot reach it
// (the source's saved.new, which reconcile removes from a running VM),
// checks it, and copies it and the source's disks into each child's
// directory. The disks are as the snapshot saw them: the source is
// still paused.
func (d *Daemon) forkCopy(ctx context.Context, s *forkRun) error {
	srcDir := s.src.Runtime.VMDir
	hold := filepath.Join(srcDir, savedNewDirName)
	if err := os.RemoveAll(hold); err != nil {
		return err
	}
	if err := os.Mkdir(hold, 0o700); err != nil {
		return fmt.Errorf("fork: %w", err)
	}
	defer os.RemoveAll(hold)
	sst, smem := stagingPaths(srcDir)
	held := map[string]string{}
	for _, f := range []struct{ from, name string }{{sst, savedStateName}, {smem, savedMemName}} {
		to := filepath.Join(hold, f.name)
		if err := os.Rename(f.from, to); err != nil {
			return fmt.Errorf("fork: the VMM's snapshot: %w", err)
		}
		fi, err := os.Lstat(to)
		if err != nil {
			return err
		}
		if err := checkSnapshotFile(fi, s.src.Runtime.VMMUID); err != nil {
			return fmt.Errorf("fork: the VMM's %s: %w", filepath.Base(f.from), err)
		}
		held[f.name] = to
	}
	// Only the first child's copies are made while the source is
	// paused; the others are copied from them once it runs again
	// (forkCopyRest), so the pause does not grow with the children.
	c := s.children[0]
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("copying %s's disks and state for %s", s.src.Name, c.vm.Name)})
	cloned, err := d.forkCopyChild(ctx, c, s.src.Runtime.SystemOverlay, s.src.Runtime.WorkDiskPath, held[savedStateName], held[savedMemName])
	if err != nil {
		return err
	}
	s.cloned = cloned
	return nil
}

// forkCopyChild copies a child's disks and saved state from the given
// files into its directory; the saved state appears only whole.
func (d *Daemon) forkCopyChild(ctx context.Context, c *forkChild, sys, work, state, mem string) (bool, error) {
	dir := c.vm.Runtime.VMDir
	newDir := filepath.Join(dir, savedNewDirName)
	if err := os.Mkdir(newDir, 0o700); err != nil {
		return false, fmt.Errorf("fork: %w", err)
	}
	// The disks may live outside the VM dir (a storage pool's dir).
	for _, p := range []string{c.vm.Runtime.SystemOverlay, c.vm.Runtime.WorkDiskPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return false, fmt.Errorf("fork: %w", err)
		}
	}
	// The four copies go at once: where they cannot be reflinks, the
	// system disk's takes longest and the others fit beside it.
	copies := []struct{ to, from string }{
		{c.vm.Runtime.SystemOverlay, sys},
		{c.vm.Runtime.WorkDiskPath, work},
		{filepath.Join(newDir, savedStateName), state},
		{filepath.Join(newDir, savedMemName), mem},
	}
	clones := make([]bool, len(copies))
	calls := make([]func() error, len(copies))
	for i, cp := range copies {
		calls[i] = func() error {
			ok, err := d.storage.CopyFile(ctx, cp.to, cp.from)
			clones[i] = ok
			return err
		}
	}
	if err := allAtOnce(calls...); err != nil {
		return false, err
	}
	cloned := !slices.Contains(clones, false)
	// The child's VMM opens its saved state by descriptor path, as its
	// own uid (a suspended VM's files are its VMM's, which wrote them).
	uid, err := d.vmmUID(c.vm)
	if err != nil {
		return false, err
	}
	for _, f := range []string{savedStateName, savedMemName} {
		if err := d.storage.OwnDisk(filepath.Join(newDir, f), uid); err != nil {
			return false, fmt.Errorf("fork: %w", err)
		}
	}
	syncDir(newDir)
	if err := os.Rename(newDir, savedDir(dir)); err != nil {
		return false, fmt.Errorf("fork: %w", err)
	}
	syncDir(dir)
	return cloned, nil
}

// forkCopyRest copies the first child's disks and saved state, made
// while the source was paused, for the other children.
func (d *Daemon) forkCopyRest(ctx context.Context, s *forkRun) error {
	first := s.children[0].vm.Runtime
	st, mem := savedPaths(first.VMDir)
	for i, c := range s.children[1:] {
		s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("copying disks and state for %s (%d/%d)", c.vm.Name, i+2, len(s.children))})
		if _, err := d.forkCopyChild(ctx, c, first.SystemOverlay, first.WorkDiskPath, st, mem); err != nil {
			return err
		}
	}
	return nil
}

// forkResumeSource lets the source run again.
func (d *Daemon) forkResumeSource(ctx context.Context, s *forkRun) error {
	if err := d.vmmClient(s.src).Resume(ctx); err != nil {
		return fmt.Errorf("resume the source's vcpus: %w", err)
	}
	s.paused = time.Since(s.pausedAt)
	how := "copied"
	if s.cloned {
		how = "reflink-cloned"
	}
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("%s paused for %dms (snapshot taken, disks %s); it runs on", s.src.Name, s.paused.Milliseconds(), how)})
	if err := removeSavedPartial(s.src.Runtime.VMDir); err != nil {
		s.log.Warn("remove the snapshot files", "err", err)
	}
	return nil
}

// forkSaveChildren records each child as suspended with its saved
// state (still ForkOf: the resume makes it its own machine).
func (d *Daemon) forkSaveChildren(ctx context.Context, s *forkRun) error {
	for _, c := range s.children {
		vm := &c.vm
		info := readSavedState(vm.Runtime.VMDir)
		if !info.Complete {
			return fmt.Errorf("fork: the saved state of %s is incomplete", vm.Name)
		}
		vm.State = model.VMStateSuspended
		vm.Runtime.State = model.VMStateSuspended
		vm.Runtime.SuspendedAt = model.Now()
		vm.Runtime.SavedStateBytes = info.Bytes
		vm.UpdatedAt = model.Now()
		if err := d.store.UpdateVM(ctx, *vm); err != nil {
			return err
		}
	}
	return nil
}

// removeHalfForks removes the children a cut-short fork left (rows
// still ForkOf that no fork holds): a child is whole or not at all.
func (d *Daemon) removeHalfForks(ctx context.Context) {
	d.removeLeftRows(ctx, "a child a cut-short fork left",
		func(vm model.VMRecord) bool { return vm.Runtime.ForkOf != "" }, d.removeForkChild)
}

// removeLeftRows removes, for reconcile, every VM row left marked by an
// operation a crash cut short: each marked row no operation holds the
// lock of, and still marked once its lock is taken, goes through remove.
func (d *Daemon) removeLeftRows(ctx context.Context, what string, marked func(model.VMRecord) bool, remove func(context.Context, model.VMRecord) error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.logger.Warn("reconcile: list vms", "looking for", what, "err", err)
		return
	}
	for _, vm := range vms {
		if !marked(vm) {
			continue
		}
		unlock, ok := d.locks.tryLock(vm.ID)
		if !ok {
			continue // the operation is still in progress
		}
		fresh, err := d.store.GetVM(ctx, vm.ID)
		if err == nil && marked(fresh) {
			d.logger.Warn("reconcile: removing "+what, "vm", fresh.Name)
			if err := remove(ctx, fresh); err != nil {
				d.logger.Warn("reconcile: remove "+what, "vm", fresh.Name, "err", err)
			}
		}
		unlock()
	}
}
