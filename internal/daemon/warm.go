package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/image"
	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/storage"
)

// An image's warm state is a snapshot of the image booted once: `image
// warm` boots a hidden VM from it (a VM row carrying WarmOf, made and
// started as any VM), waits until it answers SSH, has it flush its
// disks, pauses it, takes its snapshot, and keeps the snapshot and its
// disks, with what they were made with (warmMeta), in the image's dir
// under the state dir; then the hidden VM is removed. A first start of
// a VM whose vCPUs, memory and disk sizes match, when the warm state is
// still valid (the daemon's SSH key and the image are those it was made
// with), restores a copy of it as a fork restores its children
// (fork_vmm.go): the VM becomes its own machine behind a quarantined
// tap, then the per-VM first boot (file sync, the user's keys) runs.
// Otherwise the VM boots cold, and says why.
//
// The warm state appears only whole: it is written in warm.new and
// renamed into place. A crash leaves the previous warm state or the new
// one, never half of one: reconcile removes warm.new, puts a warm.old
// back when the swap was cut short, and removes the hidden VM. A VM
// being made from the warm state carries ForkOf (warmForkOf) until it
// is its own machine; one a crash left is removed as a fork's child is.

const (
	warmDirName    = "warm"
	warmNewDirName = "warm.new"
	warmOldDirName = "warm.old"
	warmMetaName   = "warm.json"
	warmSystemName = "system.img"
	warmWorkName   = "work.ext4"
)

// warmForkOf marks a VM being made from the warm state of image id.
func warmForkOf(imageID string) string { return "warm:" + imageID }

// warmLockKey is the lock an image's warm state is made and read under.
func warmLockKey(imageID string) string { return "warm-state:" + imageID }

// warmWaiterPort is the port the waiter in a warm state listens on
// (guest.WaiterCommand); the quarantine lets its replies through.
const warmWaiterPort = network.WaiterPort

// warmDir is where an image's warm state is kept.
func (l layout) warmDir(imageID string) string {
	return filepath.Join(l.imageDir(imageID), warmDirName)
}

// warmMeta is what a warm state was made with, kept beside it.
type warmMeta struct {
	VCPUCount             int       `json:"vcpu_count"`
	MemoryMiB             int       `json:"memory_mib"`
	SystemOverlaySizeByte int64     `json:"system_overlay_size_bytes"`
	WorkDiskSizeBytes     int64     `json:"work_disk_size_bytes"`
	OverlayStrategy       string    `json:"overlay_strategy"`
	MadeAt                time.Time `json:"made_at"`
	// KeyFingerprint is the daemon's SSH key's: the guest authorizes
	// that key only.
	KeyFingerprint string `json:"key_fingerprint"`
	// ImageIdentity is imageIdentity of the image it was made from.
	ImageIdentity string `json:"image_identity"`
	// The hidden VM's identity, which a VM restored from it sheds.
	SrcID      string `json:"src_id"`
	SrcName    string `json:"src_name"`
	SrcIP      string `json:"src_ip"`
	SrcHostKey string `json:"src_host_key"`
	SizeBytes  int64  `json:"size_bytes"`
	// DisksDir, when set, holds the disks: a directory of the storage
	// pool's (warmDisksRoot), so that a VM's copies of them are reflink
	// clones there; otherwise they are in the warm state's own dir.
	DisksDir string `json:"disks_dir,omitempty"`
	// WaiterPort and WaiterToken, when set, are the waiter left in the
	// snapshot (guest.WaiterCommand): it listens at SrcIP:WaiterPort
	// and runs identityProgram for the token, without an SSH handshake.
	WaiterPort  int    `json:"waiter_port,omitempty"`
	WaiterToken string `json:"waiter_token,omitempty"`
}

// warmFiles are the files of the warm state m in dir.
func warmFiles(dir string, m warmMeta) (system, work, state, mem string) {
	disks := dir
	if m.DisksDir != "" {
		disks = m.DisksDir
	}
	return filepath.Join(disks, warmSystemName), filepath.Join(disks, warmWorkName),
		filepath.Join(dir, savedStateName), filepath.Join(dir, savedMemName)
}

// warmDisksRoot is where warm states keep their disks in the storage
// pool, one directory per warm state (<image id>.<when>), or "" when no
// pool is open.
func (d *Daemon) warmDisksRoot() string {
	if d.pool == nil {
		return ""
	}
	return filepath.Join(d.pool.Dir, "warm")
}

// pruneWarmDisks removes the disk directories in the pool of imageID's
// warm states but keep (none when keep is ""): those of a warm state
// replaced, dropped, or cut short.
func (d *Daemon) pruneWarmDisks(imageID, keep string) {
	root := d.warmDisksRoot()
	if root == "" {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(root, imageID+".*"))
	for _, dir := range dirs {
		if dir == keep {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			d.logger.Warn("remove a warm state's disks", "dir", dir, "err", err)
		}
	}
}

// imageIdentity names what an image is made of: its ID, times and
// files (paths, sizes, modification times). A rebuild or a new
// registration changes it.
func imageIdentity(img model.Image) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%d\n%d\n", img.ID, img.CreatedAt.UnixNano(), img.UpdatedAt.UnixNano())
	for _, f := range imageFiles(img) {
		fmt.Fprintf(h, "%s=%s", f.role, f.path)
		if fi, err := os.Stat(f.path); err == nil && f.path != "" {
			fmt.Fprintf(h, " %d %d", fi.Size(), fi.ModTime().UnixNano())
		}
		fmt.Fprintln(h)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// keyFingerprint is the fingerprint of the daemon's SSH key.
func (d *Daemon) keyFingerprint() (string, error) {
	_, fp, err := image.EnsureSSHKey(d.cfg.SSHKeyPath)
	if err != nil {
		return "", model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	return fp, nil
}

// readWarm reads the warm state in dir and checks its files are the
// daemon's own: regular files with one link, owned by the daemon's uid,
// readable by it alone. Its disks are in dir, or in a directory of
// disksRoot's (warmDisksRoot; "": none may be elsewhere). It returns
// fs.ErrNotExist when there is none.
func readWarm(dir, disksRoot string) (warmMeta, error) {
	var m warmMeta
	fi, err := os.Lstat(dir)
	if err != nil {
		return m, err
	}
	if !fi.IsDir() {
		return m, fmt.Errorf("%s is not a directory", dir)
	}
	if err := checkWarmFile(fi); err != nil {
		return m, fmt.Errorf("%s: %w", dir, err)
	}
	metaPath := filepath.Join(dir, warmMetaName)
	if fi, err := os.Lstat(metaPath); err != nil {
		return m, fmt.Errorf("incomplete: %w", err)
	} else if !fi.Mode().IsRegular() {
		return m, fmt.Errorf("%s: not a regular file", metaPath)
	} else if err := checkWarmFile(fi); err != nil {
		return m, fmt.Errorf("%s: %w", metaPath, err)
	}
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", warmMetaName, err)
	}
	if m.WaiterToken != "" && (!guest.ValidWaiterToken(m.WaiterToken) || m.WaiterPort <= 0 || m.WaiterPort > 65535) {
		return m, fmt.Errorf("%s: a malformed waiter (port %d)", warmMetaName, m.WaiterPort)
	}
	var total int64
	if m.DisksDir != "" {
		if disksRoot == "" {
			return m, fmt.Errorf("its disks are in the storage pool (%s), which is not open", m.DisksDir)
		}
		if filepath.Dir(m.DisksDir) != disksRoot || filepath.Clean(m.DisksDir) != m.DisksDir {
			return m, fmt.Errorf("its disks are said to be in %s, not in %s", m.DisksDir, disksRoot)
		}
		fi, err := os.Lstat(m.DisksDir)
		if err != nil {
			return m, fmt.Errorf("incomplete: %w", err)
		}
		if !fi.IsDir() {
			return m, fmt.Errorf("%s is not a directory", m.DisksDir)
		}
		if err := checkWarmFile(fi); err != nil {
			return m, fmt.Errorf("%s: %w", m.DisksDir, err)
		}
	}
	sys, work, st, mem := warmFiles(dir, m)
	for _, p := range []string{metaPath, sys, work, st, mem} {
		fi, err := os.Lstat(p)
		if err != nil {
			return m, fmt.Errorf("incomplete: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return m, fmt.Errorf("%s: not a regular file", p)
		}
		if err := checkWarmFile(fi); err != nil {
			return m, fmt.Errorf("%s: %w", p, err)
		}
		total += allocated(fi)
	}
	m.SizeBytes = total
	return m, nil
}

// checkWarmFile refuses a warm state's file or dir that is not the
// daemon's alone.
func checkWarmFile(fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("belongs to uid %d, not the daemon's", st.Uid)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("mode %o: others may read it", fi.Mode().Perm())
	}
	if fi.Mode().IsRegular() && st.Nlink != 1 {
		return fmt.Errorf("has %d links", st.Nlink)
	}
	return nil
}

// warmCheck says why the warm state m of img cannot make a VM of spec
// ("" when it can).
func (d *Daemon) warmCheck(img model.Image, m warmMeta) string {
	fp, err := d.keyFingerprint()
	if err != nil {
		return err.Error()
	}
	if m.KeyFingerprint != fp {
		return "the daemon's SSH key changed since it was made; warm the image again"
	}
	if m.ImageIdentity != imageIdentity(img) {
		return "the image changed since it was made (rebuilt or registered again); warm it again"
	}
	if m.OverlayStrategy != d.newVMStrategy() {
		return fmt.Sprintf("it was made with %s system disks and new VMs get %s ones; warm the image again", m.OverlayStrategy, d.newVMStrategy())
	}
	if err := d.boot.snapshots(); err != nil {
		return err.Error()
	}
	return ""
}

// warmMismatch says how spec differs from what m was made with ("" when
// it does not).
func warmMismatch(m warmMeta, spec model.VMSpec) string {
	switch {
	case m.VCPUCount != spec.VCPUCount || m.MemoryMiB != spec.MemoryMiB:
		return fmt.Sprintf("it has %d vCPUs and %d MiB, this VM asks %d and %d MiB", m.VCPUCount, m.MemoryMiB, spec.VCPUCount, spec.MemoryMiB)
	case m.SystemOverlaySizeByte != spec.SystemOverlaySizeByte || m.WorkDiskSizeBytes != spec.WorkDiskSizeBytes:
		return fmt.Sprintf("it has a %s system disk and a %s work disk, this VM asks %s and %s",
			model.FormatSizeBytes(m.SystemOverlaySizeByte), model.FormatSizeBytes(m.WorkDiskSizeBytes),
			model.FormatSizeBytes(spec.SystemOverlaySizeByte), model.FormatSizeBytes(spec.WorkDiskSizeBytes))
	}
	return ""
}

// warmView is the API's view of img's warm state; nil when it has none.
func (d *Daemon) warmView(img model.Image) *api.WarmState {
	m, err := readWarm(d.layout.warmDir(img.ID), d.warmDisksRoot())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	w := &api.WarmState{VCPUCount: m.VCPUCount, MemoryMiB: m.MemoryMiB, SystemOverlaySizeByte: m.SystemOverlaySizeByte,
		WorkDiskSizeBytes: m.WorkDiskSizeBytes, SizeBytes: m.SizeBytes, MadeAt: m.MadeAt}
	if err != nil {
		w.Invalid = err.Error()
		return w
	}
	w.Invalid = d.warmCheck(img, m)
	w.Valid = w.Invalid == ""
	return w
}

// warmRun is the state of one `image warm`, passed from step to step.
type warmRun struct {
	img      model.Image
	spec     model.VMSpec
	vm       model.VMRecord
	unlockVM func()
	meta     warmMeta
	// disksDir is the pool directory warmSave made for the disks, if
	// any.
	disksDir string
	progress api.ProgressFunc
	log      *slog.Logger
}

// warmSteps are the steps of `image warm`. The hidden VM's boot is a
// start (startSteps, with their crash points); its removal a delete.
func (d *Daemon) warmSteps() []step[warmRun] {
	return []step[warmRun]{
		{Name: "warm:vm-reserved", Do: d.warmReserve, Undo: d.undoWarmReserve},
		{Name: "warm:booted", Do: d.warmBoot},
		{Name: "warm:flushed", Do: d.warmFlush},
		{Name: "warm:paused", Do: d.warmPause},
		{Name: "warm:snapshot-written", Do: d.warmSnapshot},
		{Name: "warm:saved", Do: d.warmSave, Undo: d.undoWarmSave},
		{Name: "warm:vm-removed", Do: d.warmRemoveVM},
	}
}

// WarmImage implements api.Backend: it makes img's warm state, in
// place of the one it had.
func (d *Daemon) WarmImage(ctx context.Context, ref string, req api.ImageWarmRequest, progress api.ProgressFunc) (api.WarmState, error) {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return api.WarmState{}, err
	}
	if !api.CallerFrom(ctx).Owns(img.OwnerUID) {
		return api.WarmState{}, model.Errorf(model.EFORBIDDEN, "image %q belongs to uid %d; only its owner, root or an admin can warm it", img.Name, img.OwnerUID)
	}
	if req.VCPUCount != 0 {
		if err := model.ValidateVCPUCount(req.VCPUCount); err != nil {
			return api.WarmState{}, err
		}
	}
	if req.MemoryMiB != 0 {
		if err := model.ValidateMemoryMiB(req.MemoryMiB); err != nil {
			return api.WarmState{}, err
		}
	}
	if err := d.checkImageUsable(img); err != nil {
		return api.WarmState{}, err
	}
	if err := d.boot.check(); err != nil {
		return api.WarmState{}, err
	}
	if err := d.boot.snapshots(); err != nil {
		return api.WarmState{}, err
	}
	if err := d.requireNetwork(ctx); err != nil {
		return api.WarmState{}, err
	}
	fp, err := d.keyFingerprint()
	if err != nil {
		return api.WarmState{}, err
	}
	// The spec a `vm create` with these vCPUs and memory and no other
	// flags gets: the warm state serves exactly those.
	spec := d.specFromRequest(model.VMCreateRequest{VCPUCount: req.VCPUCount, MemoryMiB: req.MemoryMiB})
	spec.AutoStopAfterSeconds = nil
	spec.IdleAction = ""
	spec.NATEnabled = false
	if err := model.ValidateSpec(spec); err != nil {
		return api.WarmState{}, err
	}
	unlock, ok := d.locks.tryLock(warmLockKey(img.ID))
	if !ok {
		return api.WarmState{}, model.Errorf(model.ECONFLICT, "image %q is being warmed already", img.Name)
	}
	defer unlock()
	log := d.logger.With("image", img.Name, "op", "warm")
	s := &warmRun{img: img, spec: spec, progress: progress, log: log}
	s.meta = warmMeta{VCPUCount: spec.VCPUCount, MemoryMiB: spec.MemoryMiB, SystemOverlaySizeByte: spec.SystemOverlaySizeByte,
		WorkDiskSizeBytes: spec.WorkDiskSizeBytes, KeyFingerprint: fp, ImageIdentity: imageIdentity(img)}
	defer func() {
		if s.unlockVM != nil {
			s.unlockVM()
		}
	}()
	// A warm run outlives the request, as a start does.
	wctx := context.WithoutCancel(ctx)
	start := time.Now()
	if err := runSteps(wctx, d.steps(log), undoOnError, d.warmSteps(), s); err != nil {
		return api.WarmState{}, fmt.Errorf("warm image %s: %w (its warm state is as it was)", img.Name, err)
	}
	w := d.warmView(img)
	if w == nil {
		return api.WarmState{}, fmt.Errorf("warm image %s: the warm state is gone", img.Name)
	}
	log.Info("image warmed", "took_ms", time.Since(start).Milliseconds(), "bytes", w.SizeBytes)
	progress(api.Progress{Step: "warm", Message: fmt.Sprintf("warm state of %s kept (%d vCPUs, %d MiB, %s) after %.1fs; `banger vm create` with these uses it", img.Name, w.VCPUCount, w.MemoryMiB, sizeMiB(w.SizeBytes), time.Since(start).Seconds())})
	return *w, nil
}

// warmReserve makes the hidden VM's row (root's, WarmOf set) and locks
// it.
func (d *Daemon) warmReserve(ctx context.Context, s *warmRun) error {
	d.createMu.Lock()
	defer d.createMu.Unlock()
	used, err := d.store.GuestIPs(ctx)
	if err != nil {
		return err
	}
	ip, err := network.AllocateIP(d.cfg.BridgeIP, d.cfg.CIDR, used)
	if err != nil {
		return err
	}
	mac, err := network.MACForIP(ip)
	if err != nil {
		return err
	}
	id, err := model.NewID()
	if err != nil {
		return err
	}
	name := "warm-" + model.ShortID(id)
	if _, err := d.store.GetVM(ctx, name); err == nil {
		return fmt.Errorf("vm %q already exists", name)
	}
	now := model.Now()
	vm := model.VMRecord{
		ID: id, Name: name, ImageID: s.img.ID, State: model.VMStateCreated,
		CreatedAt: now, UpdatedAt: now, LastTouchedAt: now,
		Spec: s.spec,
		Runtime: model.VMRuntime{
			State: model.VMStateCreated, GuestIP: ip, GuestMAC: mac,
			DNSName: model.DNSName(name, d.cfg.DNSDomain), WarmOf: s.img.ID,
			OverlayStrategy: d.newVMStrategy(),
		},
	}
	d.layout.vmPaths(id, &vm.Runtime)
	if _, err := os.Stat(vm.Runtime.VMDir); err == nil {
		return fmt.Errorf("vm dir for new id %s already exists", model.ShortID(id))
	}
	s.unlockVM = d.locks.lock(id)
	s.vm = vm
	if err := d.store.CreateVM(ctx, vm); err != nil {
		return err
	}
	s.meta.OverlayStrategy = vm.Runtime.OverlayStrategy
	s.progress(api.Progress{Step: "warm", Message: fmt.Sprintf("booting %s once (%d vCPUs, %d MiB) as hidden vm %s", s.img.Name, s.spec.VCPUCount, s.spec.MemoryMiB, name)})
	return nil
}

func (d *Daemon) undoWarmReserve(ctx context.Context, s *warmRun) {
	if err := d.removeWarmVM(ctx, s.vm); err != nil {
		s.log.Warn("undo: remove the hidden vm", "vm", s.vm.Name, "err", err)
	}
}

// removeWarmVM removes a hidden VM: its VMM, tap, rules, disks, row.
func (d *Daemon) removeWarmVM(ctx context.Context, vm model.VMRecord) error {
	if fresh, err := d.store.GetVM(ctx, vm.ID); err == nil {
		vm = fresh
	} else if model.ErrorCode(err) == model.ENOTFOUND {
		os.RemoveAll(vm.Runtime.VMDir)
		d.removePoolDisks(vm)
		return nil
	}
	if err := d.deleteLocked(ctx, vm, api.VMDeleteOptions{Force: true}, func(api.Progress) {}); err != nil {
		return err
	}
	d.locks.forget(vm.ID)
	return nil
}

// warmBoot boots the hidden VM as any VM boots, until it answers SSH.
func (d *Daemon) warmBoot(ctx context.Context, s *warmRun) error {
	vm, err := d.startLocked(ctx, s.vm, s.progress)
	s.vm = vm
	return err
}

// warmFlush leaves a waiter in the guest (startWaiter), then has the
// guest flush its disks.
func (d *Daemon) warmFlush(ctx context.Context, s *warmRun) error {
	s.meta.WaiterPort, s.meta.WaiterToken = 0, ""
	if token, err := d.boot.startWaiter(ctx, s.vm, warmWaiterPort); err != nil {
		// A VM made from the state then gets its identity over SSH.
		s.log.Warn("no waiter in the warm state; its VMs are re-identified over SSH", "err", err)
	} else {
		s.meta.WaiterPort, s.meta.WaiterToken = warmWaiterPort, token
	}
	h, err := d.boot.prepareSuspend(ctx, s.vm)
	if err != nil {
		return fmt.Errorf("flush the guest's disks: %w", err)
	}
	h.Close()
	return nil
}

// warmPause stops the hidden VM's vCPUs; it is removed after.
func (d *Daemon) warmPause(ctx context.Context, s *warmRun) error {
	if err := d.vmmClient(s.vm).Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// warmSnapshot has the hidden VM's VMM write its memory and device
// state into its dir.
func (d *Daemon) warmSnapshot(ctx context.Context, s *warmRun) error {
	if err := removeSavedPartial(s.vm.Runtime.VMDir); err != nil {
		return err
	}
	st, mem := stagingPaths(s.vm.Runtime.VMDir)
	req, err := firecracker.NewSnapshotCreate(st, mem)
	if err != nil {
		return err
	}
	if err := d.vmmClient(s.vm).CreateSnapshot(ctx, req); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	s.progress(api.Progress{Step: "warm", Message: "snapshot taken; keeping it and the disks"})
	return nil
}

// warmSave copies the snapshot and the disks (paused: as the snapshot
// saw them) into warm.new, root's alone, writes warmMeta, and swaps it
// in for the image's warm state.
func (d *Daemon) warmSave(ctx context.Context, s *warmRun) error {
	imgDir := d.layout.imageDir(s.img.ID)
	newDir := filepath.Join(imgDir, warmNewDirName)
	if err := os.RemoveAll(newDir); err != nil {
		return err
	}
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	if err := os.Mkdir(newDir, 0o700); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	sst, smem := stagingPaths(s.vm.Runtime.VMDir)
	for _, p := range []string{sst, smem} {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("warm: the VMM's snapshot: %w", err)
		}
		if err := checkSnapshotFile(fi, s.vm.Runtime.VMMUID); err != nil {
			return fmt.Errorf("warm: the VMM's %s: %w", filepath.Base(p), err)
		}
	}
	m := s.meta
	m.DisksDir = ""
	// Disks in the storage pool stay there, as reflink clones: a VM's
	// copies of them are clones too.
	if root := d.warmDisksRoot(); root != "" && s.vm.Runtime.OverlayStrategy == string(storage.StrategyPool) {
		if err := os.MkdirAll(root, 0o700); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		s.disksDir = filepath.Join(root, s.img.ID+"."+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err := os.Mkdir(s.disksDir, 0o700); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		m.DisksDir = s.disksDir
	}
	sys, work, st, mem := warmFiles(newDir, m)
	for _, cp := range []struct{ to, from string }{
		{sys, s.vm.Runtime.SystemOverlay}, {work, s.vm.Runtime.WorkDiskPath}, {st, sst}, {mem, smem},
	} {
		if _, err := d.storage.CopyFile(ctx, cp.to, cp.from); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		if err := os.Chown(cp.to, os.Geteuid(), os.Getegid()); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		if err := os.Chmod(cp.to, 0o600); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
	}
	m.MadeAt = model.Now()
	m.SrcID, m.SrcName, m.SrcIP, m.SrcHostKey = s.vm.ID, s.vm.Name, s.vm.Runtime.GuestIP, s.vm.Runtime.SSHHostKey
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(newDir, warmMetaName), b, 0o600); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	syncDir(newDir)
	if s.disksDir != "" {
		syncDir(s.disksDir)
	}
	if _, err := readWarm(newDir, d.warmDisksRoot()); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	if err := swapWarm(imgDir); err != nil {
		return err
	}
	d.pruneWarmDisks(s.img.ID, s.disksDir)
	return nil
}

// swapWarm puts warm.new in place of warm: the old one moves to
// warm.old first, and goes once the new one is in place.
func swapWarm(imgDir string) error {
	cur := filepath.Join(imgDir, warmDirName)
	old := filepath.Join(imgDir, warmOldDirName)
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if _, err := os.Lstat(cur); err == nil {
		if err := os.Rename(cur, old); err != nil {
			return fmt.Errorf("warm: %w", err)
		}
	}
	if err := os.Rename(filepath.Join(imgDir, warmNewDirName), cur); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	syncDir(imgDir)
	return os.RemoveAll(old)
}

func (d *Daemon) undoWarmSave(ctx context.Context, s *warmRun) {
	os.RemoveAll(filepath.Join(d.layout.imageDir(s.img.ID), warmNewDirName))
	if s.disksDir != "" {
		os.RemoveAll(s.disksDir)
	}
}

// warmRemoveVM removes the hidden VM: nothing of it is left.
func (d *Daemon) warmRemoveVM(ctx context.Context, s *warmRun) error {
	if err := d.removeWarmVM(ctx, s.vm); err != nil {
		return fmt.Errorf("remove the hidden vm %s: %w", s.vm.Name, err)
	}
	return nil
}

// DropWarm implements api.Backend: it removes img's warm state.
func (d *Daemon) DropWarm(ctx context.Context, ref string) error {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return err
	}
	if !api.CallerFrom(ctx).Owns(img.OwnerUID) {
		return model.Errorf(model.EFORBIDDEN, "image %q belongs to uid %d; only its owner, root or an admin can drop its warm state", img.Name, img.OwnerUID)
	}
	unlock, ok := d.locks.tryLock(warmLockKey(img.ID))
	if !ok {
		return model.Errorf(model.ECONFLICT, "image %q is being warmed or a VM is being made from its warm state; try again", img.Name)
	}
	defer unlock()
	dir := d.layout.warmDir(img.ID)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return model.Errorf(model.ENOTFOUND, "image %q has no warm state", img.Name)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("drop the warm state of %s: %w", img.Name, err)
	}
	d.pruneWarmDisks(img.ID, "")
	d.logger.Info("warm state dropped", "image", img.Name)
	return nil
}

// removeWarmStates is the image removal's part: its warm state goes
// with it.
func (d *Daemon) removeWarmStates(img model.Image) {
	dir := d.layout.imageDir(img.ID)
	for _, n := range []string{warmDirName, warmNewDirName, warmOldDirName} {
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			d.logger.Warn("remove the image's warm state", "image", img.Name, "err", err)
		}
	}
	d.pruneWarmDisks(img.ID, "")
	if img.ArtifactDir != dir {
		os.Remove(dir) // only when that left it empty
	}
}

// reconcileWarm removes what a cut-short `image warm` left: the hidden
// VM, a warm.new, and puts a warm.old back when the swap was cut short.
func (d *Daemon) reconcileWarm(ctx context.Context) {
	d.removeLeftRows(ctx, "the hidden vm a cut-short warm run left",
		func(vm model.VMRecord) bool { return vm.Runtime.WarmOf != "" }, d.removeWarmVM)
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return
	}
	for _, img := range imgs {
		unlock, ok := d.locks.tryLock(warmLockKey(img.ID))
		if !ok {
			continue
		}
		dir := d.layout.imageDir(img.ID)
		os.RemoveAll(filepath.Join(dir, warmNewDirName))
		old := filepath.Join(dir, warmOldDirName)
		if _, err := os.Lstat(old); err == nil {
			if _, err := os.Lstat(filepath.Join(dir, warmDirName)); errors.Is(err, fs.ErrNotExist) {
				os.Rename(old, filepath.Join(dir, warmDirName))
			} else {
				os.RemoveAll(old)
			}
		}
		// Disks of a warm state replaced, dropped or cut short go; a
		// current warm state's stay, even one that no longer reads
		// whole (the pool's listing of them is all that is left).
		keep := ""
		if b, err := os.ReadFile(filepath.Join(dir, warmDirName, warmMetaName)); err == nil {
			var m warmMeta
			if json.Unmarshal(b, &m) == nil {
				keep = m.DisksDir
			}
		}
		d.pruneWarmDisks(img.ID, keep)
		unlock()
	}
}
