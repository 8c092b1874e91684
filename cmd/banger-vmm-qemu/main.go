// Command banger-vmm-qemu serves Firecracker's HTTP API on --api-sock and
// runs the VM with QEMU, for hosts where Firecracker cannot run. bangerd
// starts it exactly as it starts firecracker.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/firecracker"
	"banger/internal/qemuvmm"
)

func main() {
	// The descriptors held now are the ones the VMM was started with: the
	// only ones an API request may name as /dev/fd/N.
	inherited, err := qemuvmm.InheritedFDs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger-vmm-qemu: %v\n", err)
		os.Exit(1)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, inherited))
}

// instanceIDRe is Firecracker's rule for --id.
var instanceIDRe = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// probeTimeout bounds the KVM probe guest.
const probeTimeout = 5 * time.Second

// tapFlag collects --tap-fd NAME=N flags.
type tapFlag map[string]int

func (t tapFlag) String() string { return fmt.Sprint(map[string]int(t)) }

func (t tapFlag) Set(v string) error {
	i := strings.LastIndexByte(v, '=')
	if i < 0 {
		return fmt.Errorf("want NAME=N, got %q", v)
	}
	name, num := v[:i], v[i+1:]
	if err := firecracker.CheckTapName(name); err != nil {
		return err
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 3 {
		return fmt.Errorf("descriptor %q: want a number of 3 or more", num)
	}
	if _, dup := t[name]; dup {
		return fmt.Errorf("tap %s given twice", name)
	}
	t[name] = n
	return nil
}

// tapFiles checks each --tap-fd descriptor: inherited, a tap, attached to
// the tap it is named after.
func tapFiles(taps tapFlag, inherited map[int]bool) (map[string]*os.File, error) {
	out := map[string]*os.File{}
	for name, n := range taps {
		if !inherited[n] {
			return nil, fmt.Errorf("--tap-fd %s=%d: descriptor %d was not inherited", name, n, n)
		}
		f := os.NewFile(uintptr(n), "tap:"+name)
		got, flags, err := firecracker.TapName(f)
		if err != nil {
			return nil, fmt.Errorf("--tap-fd %s=%d: %w", name, n, err)
		}
		if got != name {
			return nil, fmt.Errorf("--tap-fd %s=%d: the descriptor is attached to tap %s", name, n, got)
		}
		if flags&firecracker.TapFlags != firecracker.TapFlags {
			return nil, fmt.Errorf("--tap-fd %s=%d: tap flags %#x lack %#x (open it with firecracker.OpenTap)", name, n, flags, firecracker.TapFlags)
		}
		out[name] = f
	}
	return out, nil
}

// fcFlags are Firecracker's own command-line flags, accepted so that
// clients written for Firecracker (the Go SDK, firectl, jailer setups)
// start banger-vmm-qemu unchanged.
type fcFlags struct {
	noSeccomp                                bool
	seccompFilter                            string
	logPath, level, module                   string
	showLevel, showLogOrigin                 bool
	metricsPath                              string
	bootTimer, enablePCI, noAPI              bool
	configFile, metadata                     string
	mmdsSizeLimit                            int
	maxPayload                               int
	startTimeUS, startTimeCPUUS, parentCPUUS int64
	snapshotVersion                          bool
	describeSnapshot                         string
}

func (f *fcFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.noSeccomp, "no-seccomp", false, "run QEMU without its seccomp sandbox (Firecracker: no seccomp filters)")
	fs.StringVar(&f.seccompFilter, "seccomp-filter", "", "Firecracker's BPF filter file: accepted and ignored (QEMU keeps its own sandbox)")
	fs.StringVar(&f.logPath, "log-path", "", "configure the logger at start: a file or FIFO (as PUT /logger)")
	fs.StringVar(&f.level, "level", "", "logger level: Error, Warning, Info, Debug, Trace or Off")
	fs.StringVar(&f.module, "module", "", "logger module filter: accepted and ignored")
	fs.BoolVar(&f.showLevel, "show-level", false, "show the level in log lines")
	fs.BoolVar(&f.showLogOrigin, "show-log-origin", false, "show the source of log lines")
	fs.StringVar(&f.metricsPath, "metrics-path", "", "configure metrics at start: a file or FIFO (as PUT /metrics)")
	fs.BoolVar(&f.bootTimer, "boot-timer", false, "Firecracker's boot timer device: accepted and ignored")
	fs.BoolVar(&f.enablePCI, "enable-pci", false, "Firecracker's PCI transport: accepted and ignored (devices stay on virtio-mmio)")
	fs.StringVar(&f.configFile, "config-file", "", "configure and boot the VM from Firecracker's JSON configuration")
	fs.BoolVar(&f.noAPI, "no-api", false, "serve no API (needs --config-file)")
	fs.StringVar(&f.metadata, "metadata", "", "MMDS content: accepted and ignored (MMDS is not available)")
	fs.IntVar(&f.mmdsSizeLimit, "mmds-size-limit", 0, "MMDS store limit: accepted and ignored")
	fs.IntVar(&f.maxPayload, "http-api-max-payload-size", qemuvmm.DefaultMaxPayload, "largest API request body, in bytes")
	fs.Int64Var(&f.startTimeUS, "start-time-us", 0, "process start time for Firecracker's metrics: accepted and ignored")
	fs.Int64Var(&f.startTimeCPUUS, "start-time-cpu-us", 0, "process start CPU time: accepted and ignored")
	fs.Int64Var(&f.parentCPUUS, "parent-cpu-time-us", 0, "parent CPU time: accepted and ignored")
	fs.BoolVar(&f.snapshotVersion, "snapshot-version", false, "print the snapshot format version and exit")
	fs.StringVar(&f.describeSnapshot, "describe-snapshot", "", "print the format version of a snapshot state file and exit")
}

// ignored logs the Firecracker flags that have no QEMU meaning.
func (f *fcFlags) logIgnored(log *slog.Logger) {
	for _, i := range []struct {
		set  bool
		flag string
		why  string
	}{
		{f.seccompFilter != "", "--seccomp-filter", "a Firecracker BPF filter does not fit QEMU; QEMU keeps its own sandbox"},
		{f.module != "", "--module", "the logger has no module filter"},
		{f.bootTimer, "--boot-timer", "there is no boot timer device"},
		{f.enablePCI, "--enable-pci", "devices stay on virtio-mmio"},
		{f.metadata != "", "--metadata", "MMDS is not available on banger-vmm-qemu"},
		{f.mmdsSizeLimit != 0, "--mmds-size-limit", "MMDS is not available on banger-vmm-qemu"},
		{f.startTimeUS != 0 || f.startTimeCPUUS != 0 || f.parentCPUUS != 0, "--start-time-us/--start-time-cpu-us/--parent-cpu-time-us", "startup metrics are not kept"},
	} {
		if i.set {
			log.Info("flag ignored", "flag", i.flag, "why", i.why)
		}
	}
	if f.noSeccomp {
		log.Warn("--no-seccomp: QEMU runs without its seccomp sandbox")
	}
}

func run(args []string, stdout, stderr *os.File, inherited map[int]bool) int {
	flags := flag.NewFlagSet("banger-vmm-qemu", flag.ContinueOnError)
	flags.SetOutput(stderr)
	apiSock := flags.String("api-sock", "/run/firecracker.socket", "path of the API unix socket; must not exist")
	id := flags.String("id", "anonymous-instance", "instance id: letters, digits and hyphens, at most 64")
	accel := flags.String("accel", qemuvmm.AccelAuto, "accelerator: auto (KVM if a probe guest runs under it, else TCG), kvm or tcg")
	qemu := flags.String("qemu", "qemu-system-x86_64", "QEMU binary")
	version := flags.Bool("version", false, "print the version and exit")
	taps := tapFlag{}
	flags.Var(taps, "tap-fd", "NAME=N: use inherited descriptor N (opened with TUNSETIFF) for tap NAME; repeatable")
	probeAccel := flags.Bool("probe-accel", false, "choose the accelerator (running the probe guest unless this boot's answer is cached), cache it, print it and exit")
	accelCache := flags.String("accel-cache", qemuvmm.DefaultAccelCacheDir, "directory of the per-boot accelerator choice")
	var fc fcFlags
	fc.register(flags)
	if err := flags.Parse(args); err != nil {
		return 2
	}
	switch {
	case *version:
		fmt.Fprintf(stdout, "%s %s (Firecracker API %s, QEMU backend)\n", qemuvmm.AppName, qemuvmm.Version, qemuvmm.APIVersion)
		return 0
	case fc.snapshotVersion:
		fmt.Fprintf(stdout, "v%d.0.0\n", qemuvmm.SnapshotFormat)
		return 0
	case fc.describeSnapshot != "":
		v, err := qemuvmm.DescribeSnapshot(fc.describeSnapshot)
		if err != nil {
			fmt.Fprintf(stderr, "banger-vmm-qemu: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "v%d.0.0\n", v)
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("id", *id)
	cache := &qemuvmm.AccelCache{Dir: *accelCache, Log: log}
	if *probeAccel {
		return runProbe(*qemu, *accel, cache, stdout, stderr)
	}
	switch {
	case flags.NArg() > 0:
		fmt.Fprintf(stderr, "banger-vmm-qemu: unexpected arguments %q\n", flags.Args())
		return 2
	case !instanceIDRe.MatchString(*id):
		fmt.Fprintf(stderr, "banger-vmm-qemu: invalid instance id %q: want 1 to 64 letters, digits or hyphens\n", *id)
		return 2
	case *accel != qemuvmm.AccelAuto && *accel != qemuvmm.AccelKVM && *accel != qemuvmm.AccelTCG:
		fmt.Fprintf(stderr, "banger-vmm-qemu: --accel %q: want auto, kvm or tcg\n", *accel)
		return 2
	case fc.noSeccomp && fc.seccompFilter != "":
		fmt.Fprintf(stderr, "banger-vmm-qemu: --no-seccomp and --seccomp-filter cannot be used together\n")
		return 2
	case fc.noAPI && fc.configFile == "":
		fmt.Fprintf(stderr, "banger-vmm-qemu: --no-api needs --config-file\n")
		return 2
	case fc.maxPayload < 1:
		fmt.Fprintf(stderr, "banger-vmm-qemu: --http-api-max-payload-size %d: want a positive size\n", fc.maxPayload)
		return 2
	}
	var config []byte
	if fc.configFile != "" {
		var err error
		if config, err = os.ReadFile(fc.configFile); err != nil {
			fmt.Fprintf(stderr, "banger-vmm-qemu: --config-file: %v\n", err)
			return 1
		}
	}
	tapFiles, err := tapFiles(taps, inherited)
	if err != nil {
		fmt.Fprintf(stderr, "banger-vmm-qemu: %v\n", err)
		return 2
	}
	fc.logIgnored(log)
	// Like Firecracker, refuse to start over an existing socket file:
	// the caller removes stale ones.
	var ln net.Listener
	if !fc.noAPI {
		if ln, err = net.Listen("unix", *apiSock); err != nil {
			fmt.Fprintf(stderr, "banger-vmm-qemu: Failed to open the API socket at: %s. Check that it is not already used. (%v)\n", *apiSock, err)
			return 1
		}
	}
	probe := qemuvmm.StartAccelProbe(*qemu, *accel, probeTimeout, cache)
	starter := &qemuvmm.QEMUStarter{Bin: *qemu, Stdout: stdout, Stderr: stderr}
	vmm := qemuvmm.New(qemuvmm.Config{
		ID: *id, APISock: *apiSock, Accel: probe, Start: starter.Start, LogOutput: stderr,
		InheritedFD: func(n int) bool { return inherited[n] },
		TapFiles:    tapFiles, OpenTap: firecracker.OpenTap,
		MaxPayload: fc.maxPayload, NoSandbox: fc.noSeccomp,
	})
	starter.Log = log
	code := serve(vmm, ln, fc, config, log)
	vmm.Close()
	if ln != nil {
		removeIfExists(stderr, *apiSock)
	}
	removeIfExists(stderr, vmm.QMPSocket())
	return code
}

// startupRequest is one API call made before the API is served.
type startupRequest struct {
	path string
	body []byte
}

// startupRequests are the logger and metrics the command line asks for,
// as API calls.
func (f *fcFlags) startupRequests() []startupRequest {
	var out []startupRequest
	if f.logPath != "" || f.level != "" || f.showLevel || f.showLogOrigin {
		l := map[string]any{"show_level": f.showLevel, "show_log_origin": f.showLogOrigin}
		if f.logPath != "" {
			l["log_path"] = f.logPath
		}
		if f.level != "" {
			l["level"] = f.level
		}
		raw, _ := json.Marshal(l)
		out = append(out, startupRequest{"/logger", raw})
	}
	if f.metricsPath != "" {
		raw, _ := json.Marshal(map[string]string{"metrics_path": f.metricsPath})
		out = append(out, startupRequest{"/metrics", raw})
	}
	return out
}

// serve applies the command line's configuration, serves the API on ln
// (nil with --no-api) and waits for the VM to end or a signal; it returns
// the exit status.
func serve(vmm *qemuvmm.VMM, ln net.Listener, fc fcFlags, config []byte, log *slog.Logger) int {
	ctx := context.Background()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for _, r := range fc.startupRequests() {
		if _, err := vmm.Do(ctx, http.MethodPut, r.path, r.body); err != nil {
			log.Error("configure from the command line", "path", r.path, "err", err)
			return 1
		}
	}
	serveErr := make(chan error, 1)
	var srv *http.Server
	if ln != nil {
		srv = &http.Server{Handler: vmm, ErrorLog: nil}
		go func() { serveErr <- srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			srv.Shutdown(sctx)
			cancel()
		}()
	}
	if config != nil {
		if err := vmm.BootFromConfig(ctx, config); err != nil {
			log.Error("boot from --config-file", "err", err)
			return 1
		}
	}
	select {
	case <-vmm.Done():
		// The guest rebooted or powered off, or QEMU died: exit 0 only
		// for a guest-initiated end, as Firecracker does.
		if err := vmm.ExitErr(); err != nil {
			log.Error("exiting", "err", err)
			return 1
		}
		return 0
	case sig := <-sigs:
		log.Info("exiting on signal", "signal", sig.String())
		return 128 + int(sig.(syscall.Signal))
	case err := <-serveErr:
		log.Error("api server failed", "err", err)
		return 1
	}
}

// runProbe is --probe-accel: it prints the choice as JSON.
func runProbe(qemu, accel string, cache *qemuvmm.AccelCache, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*probeTimeout)
	defer cancel()
	c, err := qemuvmm.ChooseAccel(ctx, qemu, accel, probeTimeout, cache)
	if err != nil {
		fmt.Fprintf(stderr, "banger-vmm-qemu: %v\n", err)
		return 1
	}
	json.NewEncoder(stdout).Encode(map[string]any{"accel": c.Accel, "why": c.Why, "tsc_khz": c.TSCkHz})
	return 0
}

func removeIfExists(stderr io.Writer, path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "banger-vmm-qemu: remove %s: %v\n", path, err)
	}
}
