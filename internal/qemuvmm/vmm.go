// Package qemuvmm serves the part of Firecracker's HTTP API that banger
// uses, with Firecracker's semantics, and runs the VM with QEMU: a microvm
// machine with ACPI, an i8042, virtio-mmio drives and NICs, booted by PVH
// (or the Linux boot protocol for a bzImage). It lets banger's one VMM
// code path, the Firecracker client, run VMs where Firecracker cannot
// (no usable KVM, nested or PVM hosts, CI).
package qemuvmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Identity reported by the API.
const (
	// AppName is GET /'s app_name ("Firecracker" for the real one).
	AppName = "banger-vmm-qemu"
	// APIVersion is the Firecracker release whose API this implements;
	// GET / reports it as vmm_version and GET /version as
	// firecracker_version, so clients gate features the same way.
	APIVersion = "1.16.1"
	// Version is banger-vmm-qemu's own version.
	Version = "0.1.0"
)

// Instance states, as GET / reports them.
const (
	stateNotStarted = "Not started"
	stateRunning    = "Running"
	statePaused     = "Paused"
)

// Firecracker's fault messages for calls made in the wrong state.
const (
	msgNotAfterBoot  = "The requested operation is not supported after starting the microVM."
	msgNotBeforeBoot = "The requested operation is not supported before starting the microVM."
)

// defaultBootArgs is Firecracker's command line when boot_args is left
// out.
const defaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

// maxPayload is Firecracker's default --http-api-max-payload-size.
const maxPayload = 51200

// Config configures a VMM.
type Config struct {
	// ID is the instance id (--id).
	ID string
	// APISock is the API socket path; QEMU's QMP socket is APISock+".qmp".
	APISock string
	// Accel resolves the accelerator; InstanceStart waits for it.
	Accel *AccelProbe
	// Start starts the machine; QEMUStarter.Start in production.
	Start StartFunc
	// LogOutput receives the VMM's log until PUT /logger names a file;
	// default os.Stderr.
	LogOutput io.Writer
	// VhostVsockPath is the vhost-vsock device; default /dev/vhost-vsock.
	VhostVsockPath string
	// SysClassNet is where tap counters are read; default /sys/class/net.
	SysClassNet string
	// MetricsPeriod is the interval of automatic metrics flushes after
	// InstanceStart; default 60 s, as Firecracker's.
	MetricsPeriod time.Duration
	// StartTimeout bounds InstanceStart's wait for QEMU and QMP; default
	// 30 s.
	StartTimeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// InheritedFD reports whether descriptor n was inherited at start
	// and may be named as /dev/fd/N; nil accepts any n above 2.
	InheritedFD func(n int) bool
	// TapFiles are taps opened by whoever started the VMM (--tap-fd
	// NAME=N), used by PUT /network-interfaces for host_dev_name NAME.
	TapFiles map[string]*os.File
	// OpenTap attaches to a tap by name, for a host_dev_name without a
	// TapFiles entry; firecracker.OpenTap in production. Nil refuses.
	OpenTap func(name string) (*os.File, error)
}

type bootConfig struct {
	kernel, initrd, args string
	argsSet              bool
	// kernelFile and initrdFile are set when kernel or initrd name an
	// inherited descriptor.
	kernelFile, initrdFile *inheritedFile
}

func (b *bootConfig) close() {
	if b != nil {
		b.kernelFile.close()
		b.initrdFile.close()
	}
}

type driveConfig struct {
	DriveSpec
	root     bool
	partUUID string
	// file is set when path_on_host names an inherited descriptor.
	file *inheritedFile
}

type nicConfig struct {
	NICSpec
	// tap is the tap's descriptor; owned says the VMM opened it (and
	// closes it), rather than being given it with --tap-fd.
	tap   *os.File
	owned bool
}

func (n nicConfig) close() {
	if n.owned && n.tap != nil {
		n.tap.Close()
	}
}

type vsockConfig struct {
	cid uint32
}

// VMM is one Firecracker-API instance. It handles one request at a time,
// and replies after acting, as Firecracker does.
type VMM struct {
	cfg  Config
	logp atomic.Pointer[slog.Logger]

	mu          sync.Mutex
	state       string
	logFile     *os.File
	vcpus       int
	memMiB      int
	boot        *bootConfig
	drives      []driveConfig
	nics        []nicConfig
	vsock       *vsockConfig
	metricsFile *os.File
	metricsPrev counters
	m           Machine

	wg      sync.WaitGroup
	closing chan struct{}
	closed  bool
	done    chan struct{}
	exitErr error
}

// New returns a VMM in state "Not started".
func New(cfg Config) *VMM {
	if cfg.LogOutput == nil {
		cfg.LogOutput = os.Stderr
	}
	if cfg.VhostVsockPath == "" {
		cfg.VhostVsockPath = "/dev/vhost-vsock"
	}
	if cfg.SysClassNet == "" {
		cfg.SysClassNet = "/sys/class/net"
	}
	if cfg.MetricsPeriod == 0 {
		cfg.MetricsPeriod = 60 * time.Second
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OpenTap == nil {
		cfg.OpenTap = func(name string) (*os.File, error) {
			return nil, errors.New("this VMM was given no way to open taps; pass --tap-fd")
		}
	}
	if cfg.Accel == nil {
		cfg.Accel = FixedAccel(AccelTCG)
	}
	v := &VMM{
		cfg: cfg, state: stateNotStarted, vcpus: 1, memMiB: 128,
		closing: make(chan struct{}), done: make(chan struct{}),
	}
	v.logp.Store(newLogger(cfg.LogOutput, cfg.ID, slog.LevelInfo, true, false))
	return v
}

func (v *VMM) logger() *slog.Logger { return v.logp.Load() }

// QMPSocket returns the path of QEMU's QMP socket.
func (v *VMM) QMPSocket() string { return v.cfg.APISock + ".qmp" }

// Done is closed when the VM has ended after InstanceStart.
func (v *VMM) Done() <-chan struct{} { return v.done }

// ExitErr is nil when the VM ended cleanly (the guest rebooted or powered
// off), else why it ended. Valid once Done is closed.
func (v *VMM) ExitErr() error {
	<-v.done
	return v.exitErr
}

// Close kills the VM if it runs, waits for the VMM's goroutines and
// closes its files. It is safe to call more than once.
func (v *VMM) Close() {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return
	}
	v.closed = true
	close(v.closing)
	if v.m != nil {
		v.m.Kill()
	}
	v.mu.Unlock()
	v.wg.Wait()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.metricsFile != nil {
		v.metricsFile.Close()
	}
	if v.logFile != nil {
		v.logp.Store(newLogger(v.cfg.LogOutput, v.cfg.ID, slog.LevelInfo, true, false))
		v.logFile.Close()
	}
	v.boot.close()
	for _, d := range v.drives {
		d.file.close()
	}
	for _, n := range v.nics {
		n.close()
	}
}

// ServeHTTP answers one API request.
func (v *VMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPayload+1))
	var reply any
	switch {
	case err != nil:
		err = faultf("Cannot read the request body: %v.", err)
	case len(body) > maxPayload:
		err = faultf("Request payload with size %d is larger than the limit of %d allowed by server.", len(body), maxPayload)
	default:
		v.mu.Lock()
		reply, err = v.handle(r.Context(), r.Method, r.URL.Path, body)
		v.mu.Unlock()
	}
	w.Header().Set("Server", "Firecracker API")
	if err != nil {
		var f *fault
		msg := err.Error()
		if !errors.As(err, &f) {
			v.logger().Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"fault_message": msg})
		return
	}
	if reply == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, reply)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // fault messages hold "->" and paths, not HTML
	enc.Encode(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(bytes.TrimRight(buf.Bytes(), "\n"))
}

// unsupportedPaths are Firecracker endpoints banger-vmm-qemu does not
// implement; they get a clear refusal rather than "invalid path".
var unsupportedPaths = []string{
	"/balloon", "/mmds", "/snapshot/", "/entropy", "/serial", "/cpu-config",
	"/vm/config", "/hotplug/", "/pmem/",
}

// handle routes one request; the caller holds v.mu. A nil reply with a
// nil error is a 204.
func (v *VMM) handle(ctx context.Context, method, path string, body []byte) (any, error) {
	switch method {
	case http.MethodGet:
		if len(body) > 0 {
			return nil, faultf("GET request cannot have a body.")
		}
	case http.MethodPut, http.MethodPatch:
		if len(strings.TrimSpace(string(body))) == 0 {
			return nil, faultf("Empty %s request.", method)
		}
	}
	route := method + " " + path
	switch {
	case route == "GET /":
		return v.describe(), nil
	case route == "GET /version":
		return map[string]string{"firecracker_version": APIVersion}, nil
	case route == "GET /machine-config":
		return map[string]any{"vcpu_count": v.vcpus, "mem_size_mib": v.memMiB, "smt": false, "track_dirty_pages": false}, nil
	case route == "PUT /logger":
		return nil, v.preBoot(body, v.putLogger)
	case route == "PUT /metrics":
		return nil, v.preBoot(body, v.putMetrics)
	case route == "PUT /machine-config":
		return nil, v.preBoot(body, v.putMachineConfig)
	case route == "PUT /boot-source":
		return nil, v.preBoot(body, v.putBootSource)
	case route == "PUT /vsock":
		return nil, v.preBoot(body, v.putVsock)
	case method == http.MethodPut && strings.HasPrefix(path, "/drives/"):
		id := strings.TrimPrefix(path, "/drives/")
		return nil, v.preBoot(body, func(b []byte) error { return v.putDrive(id, b) })
	case method == http.MethodPut && strings.HasPrefix(path, "/network-interfaces/"):
		id := strings.TrimPrefix(path, "/network-interfaces/")
		return nil, v.preBoot(body, func(b []byte) error { return v.putNIC(id, b) })
	case route == "PUT /actions":
		return nil, v.action(ctx, body)
	case route == "PATCH /vm":
		return nil, v.patchVM(ctx, body)
	}
	for _, p := range unsupportedPaths {
		if path == strings.TrimSuffix(p, "/") || strings.HasPrefix(path, p) {
			return nil, faultf("%s %s is not supported by %s.", method, path, AppName)
		}
	}
	if (method == http.MethodPatch && (strings.HasPrefix(path, "/drives/") || strings.HasPrefix(path, "/network-interfaces/") || path == "/machine-config")) ||
		(method == http.MethodPut && path == "/vm") {
		return nil, faultf("%s %s is not supported by %s.", method, path, AppName)
	}
	return nil, faultf("Invalid request method and/or path: %s %s.", method, path)
}

func (v *VMM) describe() map[string]string {
	return map[string]string{"app_name": AppName, "id": v.cfg.ID, "state": v.state, "vmm_version": APIVersion}
}

// preBoot runs a configuration call, refused once the VM has started.
func (v *VMM) preBoot(body []byte, f func([]byte) error) error {
	if v.state != stateNotStarted {
		return faultf(msgNotAfterBoot)
	}
	return f(body)
}

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
	var f *os.File
	if req.LogPath != nil {
		var err error
		f, err = os.OpenFile(*req.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return faultf("Cannot initialize the logger: cannot open %s: %v.", *req.LogPath, err)
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
	f, err := os.OpenFile(*req.MetricsPath, os.O_WRONLY|os.O_CREATE|syscall.O_NONBLOCK, 0o640)
	if err != nil {
		return faultf("Cannot initialize the metrics system: cannot open %s: %v.", *req.MetricsPath, err)
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
	case *req.VCPUCount < 1 || *req.VCPUCount > 32:
		return faultf("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	case *req.MemSizeMiB < 1:
		return faultf("The memory size (MiB) is invalid.")
	case req.SMT != nil && *req.SMT:
		return faultf("SMT is not supported by %s.", AppName)
	case req.CPUTemplate != nil && *req.CPUTemplate != "None":
		return faultf("CPU templates are not supported by %s.", AppName)
	case req.HugePages != nil && *req.HugePages != "None":
		return faultf("Huge pages are not supported by %s.", AppName)
	}
	v.vcpus, v.memMiB = *req.VCPUCount, *req.MemSizeMiB
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
	kf, err := v.openBootFile(b.kernel, "kernel")
	if err != nil {
		return faultf("The kernel file cannot be opened: %v", err)
	}
	b.kernelFile = kf
	if req.InitrdPath != nil {
		b.initrd = *req.InitrdPath
		inf, err := v.openBootFile(b.initrd, "initrd")
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
	return nil
}

// openBootFile checks a kernel or initrd path: an inherited descriptor is
// duplicated and must be a readable regular file; any other path must
// open for reading with the VMM's rights (QEMU opens it again at start).
func (v *VMM) openBootFile(path, what string) (*inheritedFile, error) {
	n, ok := fdFromPath(path)
	if !ok {
		return nil, checkReadable(path)
	}
	f, err := v.openInherited(n, what)
	if err != nil {
		return nil, err
	}
	if f.blockDev || !f.readable() {
		f.close()
		return nil, fmt.Errorf("%s: descriptor %d must be a regular file open for reading", what, n)
	}
	return f, nil
}

func checkReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
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
	case rawSet(req.RateLimiter):
		return faultf("Rate limiters are not supported by %s.", AppName)
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
	v.vsock = &vsockConfig{cid: uint32(*req.GuestCID)}
	return nil
}

func (v *VMM) action(ctx context.Context, body []byte) error {
	var req actionReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if req.ActionType == nil {
		return missing("action_type")
	}
	switch *req.ActionType {
	case "InstanceStart":
		if v.state != stateNotStarted {
			return faultf(msgNotAfterBoot)
		}
		return v.instanceStart(ctx)
	case "SendCtrlAltDel":
		if v.m == nil {
			return faultf(msgNotBeforeBoot)
		}
		keys := map[string]any{"keys": []map[string]string{
			{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
		}}
		if err := v.m.Execute(ctx, "send-key", keys, nil); err != nil {
			return faultf("Failed to send Ctrl-Alt-Del: %v", err)
		}
		v.logger().Info("sent Ctrl-Alt-Del")
		return nil
	case "FlushMetrics":
		if v.m == nil {
			return faultf(msgNotBeforeBoot)
		}
		if err := v.flushMetricsLocked(ctx); err != nil {
			return faultf("Failed to flush metrics: %v", err)
		}
		return nil
	default:
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`.", *req.ActionType)
	}
}

func (v *VMM) patchVM(ctx context.Context, body []byte) error {
	var req vmReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if req.State == nil {
		return missing("state")
	}
	var cmd, next string
	switch *req.State {
	case "Paused":
		cmd, next = "stop", statePaused
	case "Resumed":
		cmd, next = "cont", stateRunning
	default:
		return faultf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`.", *req.State)
	}
	if v.m == nil {
		return faultf(msgNotBeforeBoot)
	}
	if err := v.m.Execute(ctx, cmd, nil, nil); err != nil {
		return faultf("Failed to set the VM state to %s: %v", *req.State, err)
	}
	v.state = next
	return nil
}

// machineSpec gathers the configuration into a MachineSpec. The root drive
// goes first, the others follow in the order they were first PUT.
// Inherited descriptors become QEMU's descriptors 3, 4, ...; a kernel or
// initrd given as a descriptor is copied into a memfd QEMU opens as
// /dev/fd/N. The returned memfds are the caller's to truncate and close
// once QEMU has loaded them.
func (v *VMM) machineSpec(accel string, tscKHz uint64) (spec MachineSpec, memfds []*os.File, err error) {
	if v.boot == nil {
		return MachineSpec{}, nil, faultf("Start microvm error: Cannot start microvm without kernel configuration.")
	}
	defer func() {
		if err != nil {
			for _, m := range memfds {
				m.Close()
			}
			memfds = nil
		}
	}()
	spec = MachineSpec{
		Accel: accel, VCPUs: v.vcpus, MemMiB: v.memMiB,
		Kernel: v.boot.kernel, Initrd: v.boot.initrd,
		QMPSocket: v.QMPSocket(),
	}
	addFile := func(f *os.File) int {
		spec.Files = append(spec.Files, f)
		return 2 + len(spec.Files)
	}
	bootFile := func(what string, in *inheritedFile) (string, error) {
		m, err := copyToMemfd("banger-vmm-"+what, in.f, in.size)
		if err != nil {
			return "", faultf("Start microvm error: %s: %v", what, err)
		}
		memfds = append(memfds, m)
		return "/dev/fd/" + strconv.Itoa(addFile(m)), nil
	}
	if v.boot.kernelFile != nil {
		if spec.Kernel, err = bootFile("kernel", v.boot.kernelFile); err != nil {
			return MachineSpec{}, nil, err
		}
	}
	if v.boot.initrdFile != nil {
		if spec.Initrd, err = bootFile("initrd", v.boot.initrdFile); err != nil {
			return MachineSpec{}, nil, err
		}
	}
	var root *driveConfig
	addDrive := func(d *driveConfig) {
		ds := d.DriveSpec
		if d.file != nil {
			ds.FD, ds.BlockDev = addFile(d.file.f), d.file.blockDev
		}
		spec.Drives = append(spec.Drives, ds)
	}
	for i := range v.drives {
		if v.drives[i].root {
			root = &v.drives[i]
			addDrive(root)
		}
	}
	for i := range v.drives {
		if !v.drives[i].root {
			addDrive(&v.drives[i])
		}
	}
	for _, n := range v.nics {
		ns := n.NICSpec
		ns.FD = addFile(n.tap)
		spec.NICs = append(spec.NICs, ns)
	}
	args := defaultBootArgs
	if v.boot.argsSet {
		args = v.boot.args
	}
	if accel == AccelTCG {
		args = withTSCHint(args, tscKHz)
	}
	if root != nil {
		spec.Cmdline = KernelCmdline(args, &root.DriveSpec, root.partUUID)
	} else {
		spec.Cmdline = KernelCmdline(args, nil, "")
	}
	if v.vsock != nil {
		spec.VsockCID = v.vsock.cid
	}
	return spec, memfds, nil
}

// releaseMemfds frees the kernel and initrd copies once QEMU has loaded
// them (QEMU's main loop, and so its QMP greeting, starts after the
// machine is built): truncating frees the memory although QEMU keeps its
// descriptor.
func releaseMemfds(memfds []*os.File) {
	for _, m := range memfds {
		m.Truncate(0)
		m.Close()
	}
}

func (v *VMM) instanceStart(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.StartTimeout)
	defer cancel()
	choice, err := v.cfg.Accel.Result(ctx)
	if err != nil {
		return faultf("Start microvm error: %v", err)
	}
	spec, memfds, err := v.machineSpec(choice.Accel, choice.TSCkHz)
	if err != nil {
		return err
	}
	defer releaseMemfds(memfds)
	v.logger().Info("starting microvm", "accel", choice.Accel, "accel_reason", choice.Why,
		"vcpus", spec.VCPUs, "mem_mib", spec.MemMiB, "cmdline", spec.Cmdline)
	m, err := v.cfg.Start(ctx, spec)
	if err != nil {
		return faultf("Start microvm error: %v", err)
	}
	v.m = m
	v.state = stateRunning
	v.wg.Add(1)
	go v.watch(m)
	if v.metricsFile != nil {
		v.wg.Add(1)
		go v.metricsLoop(v.cfg.MetricsPeriod, m.Done())
	}
	return nil
}

// watch waits for the machine to end and closes v.done; Close kills the
// machine, so this goroutine always ends.
func (v *VMM) watch(m Machine) {
	defer v.wg.Done()
	<-m.Done()
	err := m.ExitErr()
	if err != nil {
		v.logger().Error("microvm ended", "err", err)
	} else {
		v.logger().Info("microvm ended: the guest rebooted or powered off")
	}
	v.exitErr = err
	close(v.done)
}
