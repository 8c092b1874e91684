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
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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

// DefaultMaxPayload is Firecracker's default --http-api-max-payload-size.
const DefaultMaxPayload = 51200

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
	// MaxPayload bounds a request body (--http-api-max-payload-size);
	// default DefaultMaxPayload.
	MaxPayload int
	// NoSandbox starts QEMU without -sandbox (--no-seccomp).
	NoSandbox bool
}

type bootConfig struct {
	kernel, initrd, args string
	argsSet              bool
	// kernelFile and initrdFile are set when kernel or initrd name an
	// inherited descriptor.
	kernelFile, initrdFile *inheritedFile
	// kernelELF says the kernel is an ELF (booted by PVH), not a bzImage.
	kernelELF bool
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
	// gen counts the backing files PATCH has swapped in; fdset is the
	// QEMU fd set of the current descriptor (0 for a path).
	gen, fdset int
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
	cid     uint32
	udsPath string
}

// VMM is one Firecracker-API instance. It handles one request at a time,
// and replies after acting, as Firecracker does.
type VMM struct {
	cfg  Config
	logp atomic.Pointer[slog.Logger]

	mu          sync.Mutex
	state       string
	logFile     *nonblockFile
	vcpus       int
	memMiB      int
	boot        *bootConfig
	drives      []driveConfig
	nics        []nicConfig
	vsock       *vsockConfig
	metricsFile *nonblockFile
	metricsPrev counters
	m           Machine
	// configured says a boot-specific resource was configured, after
	// which a snapshot load is refused, as in Firecracker.
	configured bool
	// smt and trackDirty are machine-config's smt and
	// track_dirty_pages.
	smt, trackDirty bool
	// accel and qemuVersion are those of the running machine.
	accel, qemuVersion string
	// restored says the VM was loaded from a snapshot: it has no boot
	// source of its own, and cmdline is the one it was booted with.
	restored bool
	cmdline  string
	balloon  *balloonConfig
	entropy  *entropyConfig
	// ram is the guest memory's memfd, shared with QEMU.
	ram *os.File
	// fdsetSeq numbers the fd sets of descriptors passed at run time.
	fdsetSeq int

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
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = DefaultMaxPayload
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
	if v.ram != nil {
		v.ram.Close()
	}
}

// ServeHTTP answers one API request.
func (v *VMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit := v.cfg.MaxPayload
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	var reply any
	switch {
	case err != nil:
		err = faultf("Cannot read the request body: %v.", err)
	case len(body) > limit:
		err = faultf("Request payload with size %d is larger than the limit of %d allowed by server.", len(body), limit)
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

// Do runs one API request as if it came over the socket (for
// --config-file and the command-line logger and metrics) and returns the
// reply of a 200, or the fault.
func (v *VMM) Do(ctx context.Context, method, path string, body []byte) (any, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.handle(ctx, method, path, body)
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
		return map[string]any{"vcpu_count": v.vcpus, "mem_size_mib": v.memMiB, "smt": v.smt, "track_dirty_pages": v.trackDirty, "huge_pages": "None"}, nil
	case route == "PUT /logger":
		return nil, v.preBoot(body, v.putLogger)
	case route == "PUT /metrics":
		return nil, v.preBoot(body, v.putMetrics)
	case route == "PUT /machine-config":
		return nil, v.preBoot(body, v.putMachineConfig)
	case route == "PATCH /machine-config":
		return nil, v.preBoot(body, v.patchMachineConfig)
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
	case route == "PUT /snapshot/create":
		return nil, v.createSnapshot(ctx, body)
	case route == "PUT /snapshot/load":
		return nil, v.loadSnapshot(ctx, body)
	case route == "GET /vm/config":
		return v.vmConfig(), nil
	case method == http.MethodPatch && strings.HasPrefix(path, "/drives/"):
		return nil, v.patchDrive(ctx, strings.TrimPrefix(path, "/drives/"), body)
	case method == http.MethodPatch && strings.HasPrefix(path, "/network-interfaces/"):
		return nil, v.patchNIC(strings.TrimPrefix(path, "/network-interfaces/"), body)
	case route == "PUT /balloon":
		return nil, v.preBoot(body, v.putBalloon)
	case route == "GET /balloon":
		return v.getBalloon()
	case route == "PATCH /balloon":
		return nil, v.patchBalloon(ctx, body)
	case route == "GET /balloon/statistics":
		return v.getBalloonStats(ctx)
	case route == "PATCH /balloon/statistics":
		return nil, v.patchBalloonStats(ctx, body)
	case route == "PUT /entropy":
		return nil, v.preBoot(body, v.putEntropy)
	}
	if err := unavailableFault(path); err != nil {
		return nil, err
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
