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
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "%s %s (Firecracker API %s, QEMU backend)\n", qemuvmm.AppName, qemuvmm.Version, qemuvmm.APIVersion)
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
	}
	tapFiles, err := tapFiles(taps, inherited)
	if err != nil {
		fmt.Fprintf(stderr, "banger-vmm-qemu: %v\n", err)
		return 2
	}
	// Like Firecracker, refuse to start over an existing socket file:
	// the caller removes stale ones.
	ln, err := net.Listen("unix", *apiSock)
	if err != nil {
		fmt.Fprintf(stderr, "banger-vmm-qemu: Failed to open the API socket at: %s. Check that it is not already used. (%v)\n", *apiSock, err)
		return 1
	}
	probe := qemuvmm.StartAccelProbe(*qemu, *accel, probeTimeout, cache)
	starter := &qemuvmm.QEMUStarter{Bin: *qemu, Stdout: stdout, Stderr: stderr}
	vmm := qemuvmm.New(qemuvmm.Config{
		ID: *id, APISock: *apiSock, Accel: probe, Start: starter.Start, LogOutput: stderr,
		InheritedFD: func(n int) bool { return inherited[n] },
		TapFiles:    tapFiles, OpenTap: firecracker.OpenTap,
	})
	starter.Log = log
	srv := &http.Server{Handler: vmm, ErrorLog: nil}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	code := 0
	select {
	case <-vmm.Done():
		// The guest rebooted or powered off, or QEMU died: exit 0 only
		// for a guest-initiated end, as Firecracker does.
		if err := vmm.ExitErr(); err != nil {
			log.Error("exiting", "err", err)
			code = 1
		}
	case sig := <-sigs:
		log.Info("exiting on signal", "signal", sig.String())
		code = 128 + int(sig.(syscall.Signal))
	case err := <-serveErr:
		log.Error("api server failed", "err", err)
		code = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	srv.Shutdown(ctx)
	cancel()
	vmm.Close()
	removeIfExists(stderr, *apiSock)
	removeIfExists(stderr, vmm.QMPSocket())
	return code
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
