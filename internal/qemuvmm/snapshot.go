package qemuvmm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Snapshots: PUT /snapshot/create saves a paused VM with QEMU's
// migration to a descriptor (QMP getfd + migrate fd:, the only transport
// -sandbox's spawn=deny leaves), PUT /snapshot/load starts a new QEMU
// with the recorded machine and -incoming defer and feeds it the stream
// (migrate-incoming fd:). The file format is in snapshotfile.go.

// snapshotFDName is the QMP name of the migration descriptor.
const snapshotFDName = "banger-snapshot"

// snapshotTimeout bounds one save or load.
const snapshotTimeout = 10 * time.Minute

type snapshotCreateReq struct {
	SnapshotType *string `json:"snapshot_type"`
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
}

type memBackendReq struct {
	BackendPath *string `json:"backend_path"`
	BackendType *string `json:"backend_type"`
}

type networkOverrideReq struct {
	IfaceID     *string `json:"iface_id"`
	HostDevName *string `json:"host_dev_name"`
}

type snapshotLoadReq struct {
	SnapshotPath        *string              `json:"snapshot_path"`
	MemFilePath         *string              `json:"mem_file_path"`
	MemBackend          *memBackendReq       `json:"mem_backend"`
	EnableDiffSnapshots *bool                `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool                `json:"track_dirty_pages"`
	ResumeVM            *bool                `json:"resume_vm"`
	NetworkOverrides    []networkOverrideReq `json:"network_overrides"`
	VsockOverride       *struct {
		UDSPath *string `json:"uds_path"`
	} `json:"vsock_override"`
	ClockRealtime *bool `json:"clock_realtime"`
}

// qmpMigrationInfo is the part of query-migrate used here.
type qmpMigrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the migration has ended.
func waitMigration(ctx context.Context, m Machine) error {
	for {
		var info qmpMigrationInfo
		if err := m.Execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if info.ErrorDesc == "" {
				info.ErrorDesc = "no reason given"
			}
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration did not finish: %w", ctx.Err())
		case <-m.Done():
			return errors.New("qemu exited during the migration")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// qmpVersion is query-version's reply.
type qmpVersion struct {
	QEMU struct {
		Major, Minor, Micro int
	} `json:"qemu"`
}

// queryQEMUVersion returns the machine's QEMU version as major.minor.micro.
func queryQEMUVersion(ctx context.Context, m Machine) (string, error) {
	var v qmpVersion
	if err := m.Execute(ctx, "query-version", nil, &v); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro), nil
}

// sendFD hands f to QEMU under name, for an fd:name URI.
func sendFD(ctx context.Context, m Machine, name string, f *os.File) error {
	return m.ExecuteFD(ctx, "getfd", map[string]string{"fdname": name}, nil, f)
}

func newSnapshotID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// snapshotState records the running VM's configuration.
func (v *VMM) snapshotState() (snapshotState, error) {
	st := snapshotState{
		ID: newSnapshotID(), VMMVersion: Version, QEMUVersion: v.qemuVersion,
		Created: v.cfg.Now().UTC(), Accel: v.accel,
		VCPUs: v.vcpus, SMT: v.smt, MemMiB: v.memMiB, Cmdline: v.cmdline,
	}
	if v.boot != nil {
		st.Kernel, st.Initrd, st.KernelELF = v.boot.kernel, v.boot.initrd, v.boot.kernelELF
	}
	for _, d := range v.drives {
		sd := snapshotDrive{ID: d.ID, Path: d.Path, Root: d.root, ReadOnly: d.ReadOnly, Cache: d.Cache, PartUUID: d.partUUID, Throttle: d.Throttle}
		size, err := driveSize(d)
		if err != nil {
			return st, fmt.Errorf("drive %s: %w", d.ID, err)
		}
		sd.Size = size
		st.Drives = append(st.Drives, sd)
	}
	for _, n := range v.nics {
		st.NICs = append(st.NICs, snapshotNIC{ID: n.ID, Tap: n.Tap, MAC: n.MAC, MTU: n.MTU})
	}
	if v.vsock != nil {
		st.VsockCID, st.VsockUDS = v.vsock.cid, v.vsock.udsPath
	}
	if v.balloon != nil {
		b := *v.balloon
		st.Balloon = &b
	}
	if v.entropy != nil {
		e := *v.entropy
		st.Entropy = &e
	}
	return st, nil
}

// driveSize is a drive's current size: its descriptor's, or its path's.
func driveSize(d driveConfig) (int64, error) {
	if d.file != nil {
		info, err := describeFile(d.file.f)
		if err != nil {
			return 0, err
		}
		return info.size, nil
	}
	f, err := os.Open(d.Path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	info, err := describeFile(f)
	if err != nil {
		return 0, err
	}
	return info.size, nil
}

func (v *VMM) createSnapshot(ctx context.Context, body []byte) error {
	var req snapshotCreateReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.SnapshotPath == nil:
		return missing("snapshot_path")
	case req.MemFilePath == nil:
		return missing("mem_file_path")
	case req.SnapshotType != nil && *req.SnapshotType != "Full" && *req.SnapshotType != "Diff":
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Diff` or `Full`.", *req.SnapshotType)
	case v.m == nil:
		return faultf(msgNotBeforeBoot)
	case req.SnapshotType != nil && *req.SnapshotType == "Diff":
		return faultf("Diff snapshots are not supported by %s: QEMU's migration stream holds all the guest's memory; take a Full snapshot (zero pages are left out, so it stays small).", AppName)
	case v.state != statePaused:
		return faultf("Create snapshot error: the microVM must be paused first (PATCH /vm with {\"state\": \"Paused\"}).")
	case *req.SnapshotPath == "" || *req.MemFilePath == "":
		return faultf("Create snapshot error: snapshot_path and mem_file_path must not be empty.")
	case filepath.Clean(*req.SnapshotPath) == filepath.Clean(*req.MemFilePath):
		return faultf("Create snapshot error: snapshot_path and mem_file_path must be different files.")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	start := time.Now()
	st, err := v.snapshotState()
	if err != nil {
		return faultf("Create snapshot error: %v", err)
	}
	if err := v.saveMemory(ctx, *req.MemFilePath, &st); err != nil {
		return faultf("Create snapshot error: %v", err)
	}
	raw, err := encodeState(st)
	if err != nil {
		return faultf("Create snapshot error: %v", err)
	}
	sf, err := newPendingFile(*req.SnapshotPath, 0o600)
	if err != nil {
		return faultf("Create snapshot error: %v", err)
	}
	if _, err := sf.f.Write(raw); err != nil {
		sf.Abort()
		return faultf("Create snapshot error: write %s: %v", *req.SnapshotPath, err)
	}
	if err := sf.Commit(); err != nil {
		sf.Abort()
		return faultf("Create snapshot error: %v", err)
	}
	syncDir(filepath.Dir(*req.SnapshotPath))
	v.logger().Info("snapshot created", "snapshot_path", *req.SnapshotPath, "mem_file_path", *req.MemFilePath,
		"ram_bytes", st.RAMBytes, "ms", time.Since(start).Milliseconds())
	return nil
}

// saveMemory writes the memory file, under no name until complete: the
// header, the device state QEMU migrates (its RAM left out: it is shared),
// then the guest memory copied from the memfd. It fills in st's memory
// layout and checksum.
func (v *VMM) saveMemory(ctx context.Context, path string, st *snapshotState) error {
	if v.ram == nil {
		return errors.New("the guest memory is not shared with the VMM")
	}
	st.RAMSize = int64(v.memMiB) << 20
	pf, err := newPendingFile(path, 0o600)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			pf.Abort()
		}
	}()
	hdr, err := memHeader(*st)
	if err != nil {
		return err
	}
	if _, err := pf.f.Write(hdr); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// QEMU writes the device state at the descriptor's offset: after the
	// memory image.
	streamOff := int64(memHeaderLen) + st.RAMSize
	if _, err := pf.f.Seek(streamOff, io.SeekStart); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// After a snapshot QEMU stays in "postmigrate" and refuses another
	// migration until the guest has run; a snapshot of a VM not resumed
	// since the last one lets it run for the moment between cont and stop.
	var status struct {
		Status string `json:"status"`
	}
	if err := v.m.Execute(ctx, "query-status", nil, &status); err != nil {
		return err
	}
	if status.Status == "postmigrate" {
		if err := v.m.Execute(ctx, "cont", nil, nil); err != nil {
			return err
		}
		if err := v.m.Execute(ctx, "stop", nil, nil); err != nil {
			return err
		}
	}
	if err := setIgnoreShared(ctx, v.m); err != nil {
		return err
	}
	if err := sendFD(ctx, v.m, snapshotFDName, pf.f); err != nil {
		return err
	}
	t0 := time.Now()
	if err := v.m.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + snapshotFDName}, nil); err != nil {
		v.m.Execute(ctx, "closefd", map[string]any{"fdname": snapshotFDName}, nil)
		return err
	}
	if err := waitMigration(ctx, v.m); err != nil {
		return err
	}
	migrated := time.Since(t0)
	end, err := pf.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	st.StreamLength, st.MemFileSize = end-streamOff, end
	// The VM is stopped and QEMU done with its memory: copy it.
	t1 := time.Now()
	if st.RAMCRC, st.RAMBytes, err = copyPages(v.ram, 0, pf.f, memHeaderLen, st.RAMSize); err != nil {
		return fmt.Errorf("save guest memory: %w", err)
	}
	copied := time.Since(t1)
	t2 := time.Now()
	if err := pf.Commit(); err != nil {
		return err
	}
	committed = true
	syncDir(filepath.Dir(path))
	v.logger().Info("snapshot memory written", "device_state_ms", migrated.Milliseconds(), "device_state_bytes", st.StreamLength,
		"memory_ms", copied.Milliseconds(), "memory_bytes", st.RAMBytes, "sync_ms", time.Since(t2).Milliseconds())
	return nil
}

// setIgnoreShared makes QEMU's migration leave shared memory out: the
// guest memory is the VMM's memfd, saved and loaded by the VMM.
func setIgnoreShared(ctx context.Context, m Machine) error {
	return m.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

func (v *VMM) loadSnapshot(ctx context.Context, body []byte) error {
	var req snapshotLoadReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	var memPath string
	switch {
	case req.SnapshotPath == nil:
		return missing("snapshot_path")
	case req.MemFilePath != nil && req.MemBackend != nil:
		return faultf("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case req.MemFilePath == nil && req.MemBackend == nil:
		return faultf("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.")
	case req.MemBackend != nil && req.MemBackend.BackendPath == nil:
		return missing("backend_path")
	case req.MemBackend != nil && req.MemBackend.BackendType == nil:
		return missing("backend_type")
	case req.MemBackend != nil && *req.MemBackend.BackendType != "File" && *req.MemBackend.BackendType != "Uffd":
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `File` or `Uffd`.", *req.MemBackend.BackendType)
	case v.state != stateNotStarted:
		return faultf(msgNotAfterBoot)
	case v.configured:
		return faultf("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	case req.MemBackend != nil && *req.MemBackend.BackendType == "Uffd":
		return faultf("The Uffd memory backend is not supported by %s: QEMU loads the memory stream itself; use backend_type File.", AppName)
	case req.ClockRealtime != nil && *req.ClockRealtime:
		return faultf("clock_realtime is not supported by %s: the guest has no kvmclock to advance; set the guest's clock after the load.", AppName)
	}
	if req.MemFilePath != nil {
		memPath = *req.MemFilePath
	} else {
		memPath = *req.MemBackend.BackendPath
	}
	overrides := map[string]string{}
	for _, o := range req.NetworkOverrides {
		switch {
		case o.IfaceID == nil:
			return missing("iface_id")
		case o.HostDevName == nil:
			return missing("host_dev_name")
		}
		if _, dup := overrides[*o.IfaceID]; dup {
			return faultf("Load snapshot error: network interface %s is overridden twice.", *o.IfaceID)
		}
		overrides[*o.IfaceID] = *o.HostDevName
	}
	if req.TrackDirtyPages != nil && *req.TrackDirtyPages || req.EnableDiffSnapshots != nil && *req.EnableDiffSnapshots {
		v.logger().Info("track_dirty_pages is ignored: diff snapshots are not supported")
	}
	if req.VsockOverride != nil {
		v.logger().Info("vsock_override is ignored: vsock is served by vhost-vsock, not a unix socket")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	start := time.Now()
	if err := v.restore(ctx, *req.SnapshotPath, memPath, overrides); err != nil {
		v.resetConfig()
		return faultf("Load snapshot error: %v", err)
	}
	if req.ResumeVM != nil && *req.ResumeVM {
		if err := v.m.Execute(ctx, "cont", nil, nil); err != nil {
			return faultf("Load snapshot error: resume: %v", err)
		}
		v.state = stateRunning
	}
	v.logger().Info("snapshot loaded", "snapshot_path", *req.SnapshotPath, "state", v.state, "ms", time.Since(start).Milliseconds())
	return nil
}

// readState reads and checks a state file.
func readState(path string) (snapshotState, error) {
	f, err := os.Open(path)
	if err != nil {
		return snapshotState{}, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return snapshotState{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(raw) > maxStateFile {
		return snapshotState{}, fmt.Errorf("%s: %w (larger than %d bytes)", path, errNotSnapshot, maxStateFile)
	}
	st, err := decodeState(raw)
	if err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// openMemFile opens a memory file and checks it is st's and whole.
func openMemFile(path string, st snapshotState) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	hdr := make([]byte, memHeaderLen)
	if n, _ := f.ReadAt(hdr, 0); n < 8 || !strings.HasPrefix(string(hdr), memMagic) {
		f.Close()
		if fi.Size() < st.MemFileSize {
			return nil, fmt.Errorf("memory file %s is partial: %d of %d bytes", path, fi.Size(), st.MemFileSize)
		}
		return nil, fmt.Errorf("%s: not a banger-vmm-qemu snapshot memory file", path)
	}
	if err := checkMemHeader(hdr, st); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if fi.Size() != st.MemFileSize {
		f.Close()
		return nil, fmt.Errorf("memory file %s is partial or altered: %d bytes, the snapshot wrote %d", path, fi.Size(), st.MemFileSize)
	}
	return f, nil
}

// loadGuestRAM copies the memory image of mem into ram and checks it
// against the state file's checksum.
func loadGuestRAM(mem, ram *os.File, st snapshotState) error {
	crc, n, err := copyPages(mem, memHeaderLen, ram, 0, st.RAMSize)
	if err == nil && (crc != st.RAMCRC || n != st.RAMBytes) {
		err = fmt.Errorf("the memory file is damaged: its memory pages do not match the snapshot's checksum (%d bytes read, %d saved)", n, st.RAMBytes)
	}
	return err
}

// restore rebuilds the saved machine in this fresh VMM and loads the
// memory file into it; the VM is left paused. On error the caller resets
// the configuration.
func (v *VMM) restore(ctx context.Context, statePath, memPath string, overrides map[string]string) error {
	st, err := readState(statePath)
	if err != nil {
		return err
	}
	mem, err := openMemFile(memPath, st)
	if err != nil {
		return err
	}
	defer mem.Close()
	choice, err := v.cfg.Accel.Result(ctx)
	if err != nil {
		return err
	}
	if st.Accel == AccelKVM && choice.Accel != AccelKVM {
		return fmt.Errorf("the snapshot was taken under KVM, which is not usable here (%s)", choice.Why)
	}
	if st.Accel != AccelKVM && st.Accel != AccelTCG {
		return fmt.Errorf("the snapshot names an unknown accelerator %q", st.Accel)
	}
	for id := range overrides {
		found := false
		for _, n := range st.NICs {
			found = found || n.ID == id
		}
		if !found {
			return fmt.Errorf("network override for %s: the snapshot has no such interface", id)
		}
	}
	v.vcpus, v.smt, v.memMiB = st.VCPUs, st.SMT, st.MemMiB
	for _, sd := range st.Drives {
		f, err := v.openDriveFile(sd.Path, sd.ReadOnly)
		if err != nil {
			return fmt.Errorf("drive %s: %w", sd.ID, err)
		}
		d := driveConfig{DriveSpec: DriveSpec{ID: sd.ID, Path: sd.Path, ReadOnly: sd.ReadOnly, Cache: sd.Cache, Throttle: sd.Throttle}, root: sd.Root, partUUID: sd.PartUUID, file: f}
		v.drives = append(v.drives, d)
		size, err := driveSize(d)
		if err != nil {
			return fmt.Errorf("drive %s: %w", sd.ID, err)
		}
		if size != sd.Size {
			return fmt.Errorf("drive %s: %s is %d bytes, the snapshot was taken with %d", sd.ID, sd.Path, size, sd.Size)
		}
	}
	for _, sn := range st.NICs {
		n := nicConfig{NICSpec: NICSpec{ID: sn.ID, Tap: sn.Tap, MAC: sn.MAC, MTU: sn.MTU}}
		if tap, ok := overrides[sn.ID]; ok {
			n.Tap = tap
		}
		tap, owned, err := v.tapFile(n.Tap)
		if err != nil {
			return fmt.Errorf("network interface %s: open tap %s: %w", n.ID, n.Tap, err)
		}
		n.tap, n.owned = tap, owned
		v.nics = append(v.nics, n)
	}
	if st.VsockCID != 0 {
		v.vsock = &vsockConfig{cid: st.VsockCID, udsPath: st.VsockUDS}
	}
	v.balloon, v.entropy = st.Balloon, st.Entropy
	boot, err := v.restoreBoot(st)
	if err != nil {
		return err
	}
	v.boot = boot
	// The memory is copied while QEMU starts: QEMU maps the memfd but
	// leaves it alone until the device state comes (with -incoming it
	// does not write its ROMs into guest memory).
	if v.ram, err = newGuestRAM(st.MemMiB); err != nil {
		return err
	}
	t0 := time.Now()
	loaded := make(chan error, 1)
	// This goroutine ends when the copy does; restore always waits for
	// it below.
	go func(ram *os.File) { loaded <- loadGuestRAM(mem, ram, st) }(v.ram)
	spec, copies, err := v.machineSpec(st.Accel, 0)
	if err != nil {
		<-loaded
		return err
	}
	defer closeAll(copies)
	spec.Cmdline, spec.Incoming = st.Cmdline, true
	t1 := time.Now()
	m, err := v.cfg.Start(ctx, spec)
	lerr := <-loaded
	if err != nil {
		return err
	}
	v.logger().Info("qemu started for the load", "ms", time.Since(t1).Milliseconds())
	if lerr != nil {
		m.Kill()
		<-m.Done()
		return lerr
	}
	v.logger().Info("guest memory loaded", "bytes", st.RAMBytes, "ms", time.Since(t0).Milliseconds())
	if _, err := mem.Seek(memHeaderLen+st.RAMSize, io.SeekStart); err != nil {
		m.Kill()
		<-m.Done()
		return err
	}
	if err := v.receive(ctx, m, mem, st); err != nil {
		m.Kill()
		<-m.Done()
		return err
	}
	v.m, v.state, v.restored = m, statePaused, true
	v.accel, v.qemuVersion, v.cmdline = st.Accel, st.QEMUVersion, st.Cmdline
	// The balloon's target travels in the device state; the statistics
	// timer does not.
	if v.balloon != nil && v.balloon.StatsInterval > 0 {
		if err := v.setBalloonStatsInterval(ctx, v.balloon.StatsInterval); err != nil {
			v.logger().Warn("balloon statistics after load", "err", err)
		}
	}
	v.wg.Add(1)
	go v.watch(m)
	if v.metricsFile != nil {
		v.wg.Add(1)
		go v.metricsLoop(v.cfg.MetricsPeriod, m.Done())
	}
	return nil
}

// restoreBoot returns the boot configuration a load starts QEMU with. The
// kernel's code is in the saved memory, but QEMU builds the same machine
// only when it is given a kernel of the same kind: an ELF (PVH) kernel is
// replaced by the probe guest, so the load needs no kernel file; a
// bzImage must still be at its path (or descriptor).
func (v *VMM) restoreBoot(st snapshotState) (*bootConfig, error) {
	if st.KernelELF {
		m, err := memfdWith("banger-vmm-standin", ProbeELF())
		if err != nil {
			return nil, err
		}
		return &bootConfig{kernel: st.Kernel, kernelELF: true, kernelFile: &inheritedFile{f: m, size: int64(len(ProbeELF()))}}, nil
	}
	b := &bootConfig{kernel: st.Kernel, initrd: st.Initrd}
	kf, _, err := v.openBootFile(st.Kernel, "kernel")
	if err != nil {
		return nil, fmt.Errorf("the snapshot's bzImage kernel is needed to load it: %w", err)
	}
	b.kernelFile = kf
	if st.Initrd != "" {
		inf, _, err := v.openBootFile(st.Initrd, "initrd")
		if err != nil {
			b.close()
			return nil, fmt.Errorf("the snapshot's initrd is needed to load it: %w", err)
		}
		b.initrdFile = inf
	}
	return b, nil
}

// receive feeds the memory file to a QEMU waiting with -incoming defer.
func (v *VMM) receive(ctx context.Context, m Machine, mem *os.File, st snapshotState) error {
	ver, err := queryQEMUVersion(ctx, m)
	if err != nil {
		return err
	}
	if ver != st.QEMUVersion {
		return fmt.Errorf("the snapshot was taken with QEMU %s and this host runs QEMU %s; QEMU's microvm machine has no cross-version migration", st.QEMUVersion, ver)
	}
	if err := setIgnoreShared(ctx, m); err != nil {
		return err
	}
	if err := sendFD(ctx, m, snapshotFDName, mem); err != nil {
		return err
	}
	t0 := time.Now()
	if err := m.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + snapshotFDName}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, m); err != nil {
		return fmt.Errorf("%w (is the memory file damaged?)", err)
	}
	v.logger().Info("device state loaded", "ms", time.Since(t0).Milliseconds())
	return nil
}

// resetConfig forgets a failed load's configuration, so the VMM is fresh
// again.
func (v *VMM) resetConfig() {
	v.boot.close()
	v.boot = nil
	for _, d := range v.drives {
		d.file.close()
	}
	for _, n := range v.nics {
		n.close()
	}
	v.drives, v.nics, v.vsock, v.balloon, v.entropy = nil, nil, nil, nil, nil
	v.vcpus, v.memMiB, v.smt, v.trackDirty = 1, 128, false, false
	v.configured = false
	if v.ram != nil {
		v.ram.Close()
		v.ram = nil
	}
}
