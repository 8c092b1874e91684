package qemuvmm

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The pre-boot configuration calls: PUT /logger, /metrics,
// /machine-config, /boot-source, /drives/{id}, /network-interfaces/{id}
// and /vsock.

func (v *VMM) putLogger(body []byte) error {
	var req loggerReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	level := slog.LevelInfo
	if req.Level != nil {
		l, err := parseLevel(*req.Level)
		if err != nil {
			return faultf("Cannot initialize the logger: %v.", err)
		}
		level = l
	}
	out := v.cfg.LogOutput
	var f *nonblockFile
	if req.LogPath != nil {
		var err error
		if f, err = openNonblock(*req.LogPath, true); err != nil {
			return faultf("Cannot initialize the logger: %v.", err)
		}
		out = f
	}
	v.logp.Store(newLogger(out, v.cfg.ID, level, req.ShowLevel != nil && *req.ShowLevel, req.ShowLogOrigin != nil && *req.ShowLogOrigin))
	if v.logFile != nil {
		v.logFile.Close()
	}
	v.logFile = f
	if req.Module != nil {
		v.logger().Info("logger module filter is ignored", "module", *req.Module)
	}
	return nil
}

func (v *VMM) putMetrics(body []byte) error {
	var req metricsReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if req.MetricsPath == nil {
		return missing("metrics_path")
	}
	if v.metricsFile != nil {
		return faultf("Reinitialization of metrics not allowed.")
	}
	// Opened as Firecracker opens it: created if missing, neither
	// truncated nor appended to, so callers give a fresh file or a FIFO.
	f, err := openNonblock(*req.MetricsPath, false)
	if err != nil {
		return faultf("Cannot initialize the metrics system: %v.", err)
	}
	v.metricsFile = f
	return nil
}

func (v *VMM) putMachineConfig(body []byte) error {
	var req machineReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.VCPUCount == nil:
		return missing("vcpu_count")
	case req.MemSizeMiB == nil:
		return missing("mem_size_mib")
	}
	// A PUT resets every optional field it leaves out, as Firecracker's.
	return v.setMachineConfig(machineConfig{vcpus: 1, memMiB: 128}, req)
}

// patchMachineConfig is PATCH /machine-config: only the fields given
// change.
func (v *VMM) patchMachineConfig(body []byte) error {
	var req machineReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	return v.setMachineConfig(machineConfig{vcpus: v.vcpus, memMiB: v.memMiB, smt: v.smt, trackDirty: v.trackDirty}, req)
}

type machineConfig struct {
	vcpus, memMiB   int
	smt, trackDirty bool
}

// setMachineConfig applies req over base with Firecracker's rules: 1 to
// 32 vCPUs, 1 or an even number of them with SMT, memory above 0, no CPU
// template or huge pages (which QEMU's TCG cannot honour).
func (v *VMM) setMachineConfig(c machineConfig, req machineReq) error {
	if req.VCPUCount != nil {
		c.vcpus = *req.VCPUCount
	}
	if req.MemSizeMiB != nil {
		c.memMiB = *req.MemSizeMiB
	}
	if req.SMT != nil {
		c.smt = *req.SMT
	}
	if req.TrackDirtyPages != nil {
		c.trackDirty = *req.TrackDirtyPages
	}
	switch {
	case c.vcpus < 1 || c.vcpus > 32 || c.smt && c.vcpus > 1 && c.vcpus%2 == 1:
		return faultf("The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	case c.memMiB < 1:
		return faultf("The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	case req.CPUTemplate != nil && *req.CPUTemplate != "None":
		return faultf("CPU templates are not available on %s: QEMU runs the guest with its own CPU model.", AppName)
	case req.HugePages != nil && *req.HugePages != "None":
		return faultf("Huge pages are not available on %s.", AppName)
	}
	if c.trackDirty && !v.trackDirty {
		v.logger().Info("track_dirty_pages is recorded but has no effect: diff snapshots are not supported")
	}
	v.vcpus, v.memMiB, v.smt, v.trackDirty = c.vcpus, c.memMiB, c.smt, c.trackDirty
	v.configured = true
	return nil
}

func (v *VMM) putBootSource(body []byte) error {
	var req bootReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if req.KernelImagePath == nil {
		return missing("kernel_image_path")
	}
	b := &bootConfig{kernel: *req.KernelImagePath}
	kf, magic, err := v.openBootFile(b.kernel, "kernel")
	if err != nil {
		return faultf("The kernel file cannot be opened: %v", err)
	}
	b.kernelFile, b.kernelELF = kf, bytes.Equal(magic, []byte("\x7fELF"))
	if req.InitrdPath != nil {
		b.initrd = *req.InitrdPath
		inf, _, err := v.openBootFile(b.initrd, "initrd")
		if err != nil {
			b.close()
			return faultf("The initrd file cannot be opened: %v", err)
		}
		b.initrdFile = inf
	}
	if req.BootArgs != nil {
		b.args, b.argsSet = *req.BootArgs, true
	}
	v.boot.close()
	v.boot = b
	v.configured = true
	return nil
}

// openBootFile checks a kernel or initrd path and returns its first four
// bytes: an inherited descriptor is duplicated and must be a readable
// regular file; any other path must open for reading with the VMM's
// rights (QEMU opens it again at start).
func (v *VMM) openBootFile(path, what string) (*inheritedFile, []byte, error) {
	magic := make([]byte, 4)
	n, ok := fdFromPath(path)
	if !ok {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		f.ReadAt(magic, 0)
		return nil, magic, nil
	}
	f, err := v.openInherited(n, what)
	if err != nil {
		return nil, nil, err
	}
	if f.blockDev || !f.readable() {
		f.close()
		return nil, nil, fmt.Errorf("%s: descriptor %d must be a regular file open for reading", what, n)
	}
	f.f.ReadAt(magic, 0)
	return f, magic, nil
}

func (v *VMM) putDrive(id string, body []byte) error {
	var req driveReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := checkPathID("drive", id, req.DriveID, "drive_id"); err != nil {
		return err
	}
	switch {
	case req.IsRootDevice == nil:
		return missing("is_root_device")
	case req.Socket != nil:
		return faultf("vhost-user block devices are not supported by %s.", AppName)
	case req.PathOnHost == nil:
		return faultf("Unable to create the block device: path_on_host is required.")
	case req.CacheType != nil && *req.CacheType != "Unsafe" && *req.CacheType != "Writeback":
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Unsafe` or `Writeback`.", *req.CacheType)
	case req.IOEngine != nil && *req.IOEngine != "Sync" && *req.IOEngine != "Async":
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Sync` or `Async`.", *req.IOEngine)
	}
	d := driveConfig{DriveSpec: DriveSpec{ID: id, Path: *req.PathOnHost, Cache: "Unsafe"}, root: *req.IsRootDevice}
	if req.IsReadOnly != nil {
		d.ReadOnly = *req.IsReadOnly
	}
	if req.CacheType != nil {
		d.Cache = *req.CacheType
	}
	if req.PartUUID != nil {
		d.partUUID = *req.PartUUID
	}
	th, err := parseRateLimiter(req.RateLimiter, Throttle{})
	if err != nil {
		return err
	}
	d.Throttle = th
	if d.root {
		for _, o := range v.drives {
			if o.root && o.ID != id {
				return faultf("A root block device already exists!")
			}
		}
	}
	f, err := v.openDriveFile(d.Path, d.ReadOnly)
	if err != nil {
		return faultf("Unable to create the block device: %v", err)
	}
	d.file = f
	v.configured = true
	for i := range v.drives {
		if v.drives[i].ID == id {
			v.drives[i].file.close()
			v.drives[i] = d
			return nil
		}
	}
	v.drives = append(v.drives, d)
	return nil
}

// openDriveFile checks a drive's path_on_host: an inherited descriptor is
// duplicated and must be open for reading, and for writing unless the
// drive is read-only (QEMU takes it through an fd set, which matches the
// access mode exactly); any other path must open with the VMM's rights.
func (v *VMM) openDriveFile(path string, readOnly bool) (*inheritedFile, error) {
	n, ok := fdFromPath(path)
	if !ok {
		mode := os.O_RDWR
		if readOnly {
			mode = os.O_RDONLY
		}
		f, err := os.OpenFile(path, mode, 0)
		if err != nil {
			return nil, err
		}
		return nil, f.Close()
	}
	f, err := v.openInherited(n, "drive")
	if err != nil {
		return nil, err
	}
	switch {
	case readOnly && f.accMode != unix.O_RDONLY:
		f.close()
		return nil, fmt.Errorf("drive: descriptor %d is open for writing but the drive is read-only: pass a read-only descriptor (O_RDONLY)", n)
	case !readOnly && f.accMode != unix.O_RDWR:
		f.close()
		return nil, fmt.Errorf("drive: descriptor %d is not open for reading and writing (O_RDWR) but the drive is writable", n)
	}
	return f, nil
}

func (v *VMM) putNIC(id string, body []byte) error {
	var req nicReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := checkPathID("network interface", id, req.IfaceID, "iface_id"); err != nil {
		return err
	}
	switch {
	case req.HostDevName == nil:
		return missing("host_dev_name")
	case rawSet(req.RxRateLimiter) || rawSet(req.TxRateLimiter):
		return faultf("Rate limiters are not supported by %s.", AppName)
	case req.GuestMAC != nil && !macRe.MatchString(*req.GuestMAC):
		return faultf("An error occurred when deserializing the json body of a request: invalid MAC address %q.", *req.GuestMAC)
	case req.MTU != nil && (*req.MTU < 68 || *req.MTU > 65535):
		return faultf("Invalid MTU %d: must be between 68 and 65535.", *req.MTU)
	}
	n := nicConfig{NICSpec: NICSpec{ID: id, Tap: *req.HostDevName}}
	if req.GuestMAC != nil {
		n.MAC = *req.GuestMAC
	}
	if req.MTU != nil {
		n.MTU = *req.MTU
	}
	for _, o := range v.nics {
		if o.ID == id {
			continue
		}
		if o.Tap == n.Tap {
			return faultf("Could not create the network device: the host device %s is already in use.", n.Tap)
		}
		if n.MAC != "" && strings.EqualFold(o.MAC, n.MAC) {
			return faultf("Could not create the network device: the guest MAC address %s is already in use.", n.MAC)
		}
	}
	tap, owned, err := v.tapFile(n.Tap)
	if err != nil {
		return faultf("Could not create the network device: Open tap device failed: %s: %v", n.Tap, err)
	}
	n.tap, n.owned = tap, owned
	v.configured = true
	for i := range v.nics {
		if v.nics[i].ID == id {
			v.nics[i].close()
			v.nics[i] = n
			return nil
		}
	}
	v.nics = append(v.nics, n)
	return nil
}

// tapFile returns the descriptor of the tap name: the one given with
// --tap-fd, or one the VMM opens itself (owned), as Firecracker opens its
// taps when the interface is configured.
func (v *VMM) tapFile(name string) (*os.File, bool, error) {
	if f, ok := v.cfg.TapFiles[name]; ok {
		return f, false, nil
	}
	f, err := v.cfg.OpenTap(name)
	if err != nil {
		return nil, false, err
	}
	return f, true, nil
}

func (v *VMM) putVsock(body []byte) error {
	var req vsockReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.GuestCID == nil:
		return missing("guest_cid")
	case req.UDSPath == nil:
		return missing("uds_path")
	case *req.GuestCID < 3 || *req.GuestCID > 0xFFFFFFFF:
		return faultf("Invalid guest CID %d: must be 3 or more.", *req.GuestCID)
	}
	if _, err := os.Stat(v.cfg.VhostVsockPath); err != nil {
		return faultf("Cannot create the vsock device: %s maps vsock to vhost-vsock and %s is not available on this host (%v); load the vhost_vsock module.", AppName, v.cfg.VhostVsockPath, err)
	}
	// vhost-vsock is the kernel's AF_VSOCK: the host reaches the guest
	// with AF_VSOCK sockets on guest_cid, not through Firecracker's
	// hybrid unix socket, so uds_path is not served.
	v.logger().Warn("vsock: uds_path is not served; use AF_VSOCK to the guest cid", "uds_path", *req.UDSPath, "guest_cid", *req.GuestCID)
	v.vsock = &vsockConfig{cid: uint32(*req.GuestCID), udsPath: *req.UDSPath}
	v.configured = true
	return nil
}
