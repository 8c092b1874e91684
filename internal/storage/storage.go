// Package storage makes and manages a VM's disks: the system overlay (a
// copy-on-write view of the image's root filesystem, kept across stop and
// start) and the work disk (/root, an ext4 file grown from the image's
// work seed). The overlay is a dm-snapshot over loop devices where
// device-mapper works, else a reflink clone of the rootfs, else a sparse
// copy. Every external command goes through a hostexec.Runner; file work
// (clone, sparse copy, truncate, block counts) uses syscalls.
package storage

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// Strategy is how a system overlay is made. Its values are the strings
// stored in model.VMRuntime.OverlayStrategy.
type Strategy string

// The overlay strategies, best first.
const (
	// StrategyDMSnapshot keeps only the changed blocks in a sparse COW
	// file, under a device-mapper snapshot of the rootfs.
	StrategyDMSnapshot Strategy = "dm-snapshot"
	// StrategyReflink clones the rootfs with FICLONE: instant, and only
	// changed blocks take space. Needs btrfs or XFS (or another
	// filesystem with reflink) under the state directory.
	StrategyReflink Strategy = "reflink"
	// StrategyCopy copies the rootfs, keeping its holes.
	StrategyCopy Strategy = "copy"
	// StrategyPool is reflink inside banger's storage pool (pool.go):
	// the VM's disks live in the pool, cloned from templates there.
	// It is chosen by the daemon, not by overlay_strategy.
	StrategyPool Strategy = "pool"
)

// ParseStrategy parses a strategy name. The empty string is the zero
// Strategy, meaning "detect".
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(s); st {
	case "", StrategyDMSnapshot, StrategyReflink, StrategyCopy:
		return st, nil
	}
	return "", model.Errorf(model.EINVALID, "unknown overlay strategy %q: use %q, %q or %q (or leave it empty to detect)", s, StrategyDMSnapshot, StrategyReflink, StrategyCopy)
}

// DMPrefix starts the name of every device-mapper device banger makes.
const DMPrefix = "banger-"

// DMName returns the device-mapper name of a VM's overlay.
func DMName(vmID string) string { return DMPrefix + model.ShortID(vmID) }

// Options configure a Manager.
type Options struct {
	// Strategy, when set, is used instead of detecting one.
	Strategy Strategy
	// Exists, when set, replaces the check for device nodes and files
	// (the device-mapper control node, /dev/mapper entries). Callers'
	// unit tests use it with a fake host to run the dm-snapshot path.
	Exists func(path string) bool
	// OpenDevice, when set, replaces os.OpenFile for attached devices
	// (the dm node a VM boots from), for the same tests.
	OpenDevice func(path string, flag int, perm os.FileMode) (*os.File, error)
	// Chown, when set, replaces (*os.File).Chown for the disks given to a
	// VM's uid, so unit tests run without root.
	Chown func(f *os.File, uid, gid int) error
	// Clone and Statfs, when set, replace FICLONE and statfs(2), so the
	// daemon's unit tests run a storage pool on a fake host.
	Clone  func(dst, src *os.File) error
	Statfs func(path string) (size, free int64, err error)
}

// Manager makes, attaches and removes VM disks. It keeps no state of its
// own (handles are rediscovered from the OS), so one Manager serves every
// VM; callers serialize work on one VM.
type Manager struct {
	run    hostexec.Runner
	logger *slog.Logger
	force  Strategy

	// The fields below are the host paths and hooks the Manager uses;
	// New sets them for a real host and tests replace them.
	dmControl  string // device-mapper control node
	dmSysfs    string // present while the kernel's device-mapper is loaded
	mapperDir  string // where dmsetup puts named device nodes
	devDir     string // where /dev/dm-N nodes live
	sysBlock   string // sysfs block directory, for dm-N names
	modulesDir string // kernel modules, for an autoloadable dm-snapshot
	release    func() string
	exists     func(path string) bool
	openDevice func(path string, flag int, perm os.FileMode) (*os.File, error)
	chown      func(f *os.File, uid, gid int) error
	clone      func(dst, src *os.File) error
	statfs     func(path string) (size, free int64, err error)
	sleep      func(ctx context.Context, d time.Duration) error
	// removeTries bounds the attempts at removing a busy dm device.
	removeTries int
}

// New returns a Manager that runs commands with run and logs to logger
// (nil discards).
func New(run hostexec.Runner, logger *slog.Logger, opts Options) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	exists := fileExists
	if opts.Exists != nil {
		exists = opts.Exists
	}
	openDevice := os.OpenFile
	if opts.OpenDevice != nil {
		openDevice = opts.OpenDevice
	}
	chown := (*os.File).Chown
	if opts.Chown != nil {
		chown = opts.Chown
	}
	clone := cloneFile
	if opts.Clone != nil {
		clone = opts.Clone
	}
	statfs := statfsBytes
	if opts.Statfs != nil {
		statfs = opts.Statfs
	}
	return &Manager{
		statfs:      statfs,
		openDevice:  openDevice,
		chown:       chown,
		run:         run,
		logger:      logger,
		force:       opts.Strategy,
		dmControl:   "/dev/mapper/control",
		dmSysfs:     "/sys/class/misc/device-mapper",
		mapperDir:   "/dev/mapper",
		devDir:      "/dev",
		sysBlock:    "/sys/block",
		modulesDir:  "/lib/modules",
		release:     kernelRelease,
		exists:      exists,
		clone:       clone,
		sleep:       sleepCtx,
		removeTries: 5,
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// canonical returns path with symlinks resolved, as the kernel reports a
// loop device's backing file, or the cleaned path if it cannot be
// resolved (for example because the file is gone).
func canonical(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	dir, base := filepath.Split(abs)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(r, base)
	}
	return abs
}
