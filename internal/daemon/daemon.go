// Package daemon is bangerd's orchestration: it combines the store, the
// network, storage, image and VMM subsystems into the lifecycle the API
// serves, under one lock per VM.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/store"
)

// Options configure a Daemon.
type Options struct {
	Config  model.DaemonConfig
	Logger  *slog.Logger
	Version api.VersionInfo
	// Runner runs host commands; nil means hostexec.Real.
	Runner hostexec.Runner
}

// Daemon is bangerd.
type Daemon struct {
	cfg     model.DaemonConfig
	logger  *slog.Logger
	version api.VersionInfo
	runner  hostexec.Runner
	store   *store.DB
	layout  layout
	locks   *vmLocks

	// createMu serialises name and IP allocation for new VMs.
	createMu sync.Mutex

	// wg tracks background goroutines; cancel stops them.
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// New opens the state directory (creating it) and the database.
func New(ctx context.Context, opts Options) (*Daemon, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	runner := opts.Runner
	if runner == nil {
		runner = hostexec.Real{}
	}
	d := &Daemon{
		cfg:     opts.Config,
		logger:  logger,
		version: opts.Version,
		runner:  runner,
		layout:  layout{stateDir: opts.Config.StateDir},
		locks:   newVMLocks(),
	}
	// The state dir holds VM disks and the daemon's private key: only
	// root may list it. Images and kernels below are root-only too.
	for _, dir := range []string{d.cfg.StateDir, d.layout.imagesDir(), d.layout.kernelsDir(), d.layout.vmsDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
	}
	db, err := store.Open(ctx, d.layout.dbPath())
	if err != nil {
		return nil, err
	}
	d.store = db
	return d, nil
}

// Start runs the background work (reconcile, sweeps, pollers) until Close.
func (d *Daemon) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	_ = ctx
	return nil
}

// Close stops background work and closes the database. Running VMs keep
// running: their VMMs do not belong to the daemon's process.
func (d *Daemon) Close() error {
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
	return d.store.Close()
}

// Version implements api.Backend.
func (d *Daemon) Version(context.Context) api.VersionInfo { return d.version }

// Config returns the daemon's configuration.
func (d *Daemon) Config() model.DaemonConfig { return d.cfg }
