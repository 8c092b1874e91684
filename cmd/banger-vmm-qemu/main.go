// Command banger-vmm-qemu serves Firecracker's HTTP API on --api-sock and
// runs the VM with QEMU, for hosts where Firecracker cannot run. bangerd
// starts it exactly as it starts firecracker.
package main

import (
	"context"
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
	"syscall"
	"time"

	"banger/internal/qemuvmm"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// instanceIDRe is Firecracker's rule for --id.
var instanceIDRe = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// probeTimeout bounds the KVM probe guest.
const probeTimeout = 5 * time.Second

func run(args []string, stdout, stderr *os.File) int {
	flags := flag.NewFlagSet("banger-vmm-qemu", flag.ContinueOnError)
	flags.SetOutput(stderr)
	apiSock := flags.String("api-sock", "/run/firecracker.socket", "path of the API unix socket; must not exist")
	id := flags.String("id", "anonymous-instance", "instance id: letters, digits and hyphens, at most 64")
	accel := flags.String("accel", qemuvmm.AccelAuto, "accelerator: auto (KVM if a probe guest runs under it, else TCG), kvm or tcg")
	qemu := flags.String("qemu", "qemu-system-x86_64", "QEMU binary")
	version := flags.Bool("version", false, "print the version and exit")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "%s %s (Firecracker API %s, QEMU backend)\n", qemuvmm.AppName, qemuvmm.Version, qemuvmm.APIVersion)
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("id", *id)
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
	// Like Firecracker, refuse to start over an existing socket file:
	// the caller removes stale ones.
	ln, err := net.Listen("unix", *apiSock)
	if err != nil {
		fmt.Fprintf(stderr, "banger-vmm-qemu: Failed to open the API socket at: %s. Check that it is not already used. (%v)\n", *apiSock, err)
		return 1
	}
	probe := qemuvmm.StartAccelProbe(*qemu, *accel, probeTimeout)
	starter := &qemuvmm.QEMUStarter{Bin: *qemu, Stdout: stdout, Stderr: stderr}
	vmm := qemuvmm.New(qemuvmm.Config{
		ID: *id, APISock: *apiSock, Accel: probe, Start: starter.Start, LogOutput: stderr,
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

func removeIfExists(stderr io.Writer, path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "banger-vmm-qemu: remove %s: %v\n", path, err)
	}
}
