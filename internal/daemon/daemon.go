// Package daemon is bangerd's orchestration: it combines the store, the
// network, storage, image and VMM subsystems into the lifecycle the API
// serves, under one lock per VM.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/firecracker"
	"banger/internal/hostexec"
	"banger/internal/image"
	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/proc"
	"banger/internal/storage"
	"banger/internal/store"
)

// Options configure a Daemon.
type Options struct {
	Config  model.DaemonConfig
	Logger  *slog.Logger
	Version api.VersionInfo
	// Runner runs host commands; nil means hostexec.Real.
	Runner hostexec.Runner
	// Storage configures the disk manager (tests force a strategy and
	// fake device nodes).
	Storage storage.Options
	// CgroupRoot is where the cgroup hierarchies are mounted; empty
	// means /sys/fs/cgroup. Tests point it at a fake tree.
	CgroupRoot string
	// Proc reads processes; the zero value means the host's /proc.
	Proc proc.Reader
	// OpenProc opens a handle on a VMM process (signal it, wait for
	// it); nil means the host's pidfds. Unit tests fake it along with
	// Proc and VMMClient.
	OpenProc func(pid int) (vmmProc, error)
	// VMMClient returns the API client for a VMM running as uid at
	// apiSock; nil means one that checks the peer's uid.
	VMMClient func(apiSock string, uid int) *firecracker.Client
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
	handles *handleCache

	net     *network.Manager
	dns     *network.DNSServer
	storage *storage.Manager
	caps    []capability
	boot    booter
	// cgroups puts each VMM in a group with its VM's limits; nil when
	// cgroup_parent is "off" or the host has no usable hierarchy.
	cgroups *cgroup.Manager
	// procs reads the host's processes (a fake tree in tests);
	// openProc and newVMMClient reach them (fakes in tests).
	procs        proc.Reader
	openProc     func(pid int) (vmmProc, error)
	newVMMClient func(apiSock string, uid int) *firecracker.Client
	// denied remembers which denied guest connections were logged.
	denied *deniedLog

	// strategy is how system overlays are made on this host.
	strategy       storage.Strategy
	strategyReason string
	// pool is the storage pool when mounted (pool.go); baseStrategy is
	// the strategy detected without it; poolReason says why it is used
	// or not.
	pool         *storage.Pool
	baseStrategy storage.Strategy
	poolReason   string

	// netMu guards netErr: the network is set up at Start; when that
	// fails, starting VMs fails with the reason until it works.
	netMu  sync.Mutex
	netOK  bool
	netErr error

	// createMu serialises name and IP allocation for new VMs.
	createMu sync.Mutex
	// vmList keeps the last list of VM rows for `vm ls` (vmlist.go).
	vmList vmListCache
	// builds runs kernel and image builds one at a time, taking users
	// in turn.
	builds *buildQueue
	// lookupUID turns the owner part of an image reference into a uid.
	lookupUID uidOf

	// crashAt is the fault-injection step (EnvCrashAt), for tests.
	crashAt string
	// onCrashPoint, when set, sees every crash point passed (tests).
	onCrashPoint func(step string)
	// noWatch turns off the VMM watcher (EnvNoWatch), for tests of the
	// sweep.
	noWatch bool
	// stepTimes are the last durations of each lifecycle step.
	stepTimes stepTimes

	// hostDNS is what setting up the host's name resolution of VMs did;
	// netnsDir is where `ip netns` names namespaces (/run/netns).
	hostDNS  hostDNSState
	netnsDir string

	// sessions counts open connect streams per VM, for idle detection.
	sessions *sessionCounter
	// poll is the stats poller's memory.
	poll pollState

	// clocks are the sessions suspended guests wait in to have their
	// clock set at the resume (suspend_vmm.go).
	clocks clockHolds

	// watchMu guards watching: the VMM PID each running VM is watched
	// for (see watch.go).
	watchMu  sync.Mutex
	watching map[string]int

	// bg is the daemon's lifetime context: background work runs in it.
	// wg tracks background goroutines; cancel stops them.
	bg     context.Context
	wg     sync.WaitGroup
	cancel context.CancelFunc
	// drops counts the saved states a resume left to remove in the
	// background (dropSavedStateSoon).
	drops sync.WaitGroup
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
		cfg:       opts.Config,
		logger:    logger,
		version:   opts.Version,
		runner:    runner,
		layout:    layout{stateDir: opts.Config.StateDir},
		locks:     newVMLocks(),
		handles:   newHandleCache(),
		crashAt:   os.Getenv(EnvCrashAt),
		noWatch:   os.Getenv(EnvNoWatch) == "1",
		sessions:  newSessionCounter(),
		denied:    newDeniedLog(),
		builds:    newBuildQueue(),
		lookupUID: hostUID,
		netnsDir:  "/run/netns",
	}
	// The state dir holds VM disks and the daemon's private key: only
	// root may list it.
	for _, dir := range []string{d.cfg.StateDir, d.layout.imagesDir(), d.layout.kernelsDir(), d.layout.vmsDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
	}
	netm, err := network.New(network.ConfigFrom(d.cfg), runner, logger.With("sub", "network"))
	if err != nil {
		return nil, err
	}
	if opts.Runner == nil {
		// On the real host a start reads its tap over netlink, not
		// through an ip process; a test's runner keeps seeing it all.
		netm.UseNetlink()
	}
	d.net = netm
	d.boot = d.newVMMBooter()
	d.procs = opts.Proc
	if d.procs.Root == "" {
		d.procs = proc.Host
	}
	d.openProc = opts.OpenProc
	if d.openProc == nil {
		d.openProc = openHostProc
	}
	d.newVMMClient = opts.VMMClient
	if d.newVMMClient == nil {
		d.newVMMClient = firecracker.NewClientAs
	}
	if d.cfg.CgroupParent != "off" && d.cfg.CgroupParent != "" {
		root := opts.CgroupRoot
		if root == "" {
			root = "/sys/fs/cgroup"
		}
		if opts.CgroupRoot == "" {
			// `ip netns exec` (how the quickstart and the tests run the
			// daemon) mounts a fresh /sys that hides the cgroup mounts:
			// mount them again in the daemon's own mount namespace.
			if what, err := cgroup.MountHidden(root); err != nil {
				logger.Warn("cgroups are hidden here and could not be mounted", "err", err)
			} else if what != "" {
				logger.Info("cgroups", "mounted", what)
			}
		}
		cg := cgroup.Detect(root, d.cfg.CgroupParent)
		if cg.Mode() == cgroup.ModeNone {
			logger.Warn("VMs run without resource limits", "why", cg.Why())
		} else {
			d.cgroups = cg
			logger.Info("VM limits", "cgroups", cg.Why())
		}
	}
	d.storage = storage.New(runner, logger.With("sub", "storage"), opts.Storage)
	db, err := store.Open(ctx, d.layout.dbPath())
	if err != nil {
		return nil, err
	}
	d.store = db
	return d, nil
}

// Start sets up the host side (bridge, tap pool, DNS), reconciles the
// database with the host, and runs the background loops until Close.
func (d *Daemon) Start(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	d.bg = bg
	if _, _, err := image.EnsureSSHKey(d.cfg.SSHKeyPath); err != nil {
		return fmt.Errorf("daemon ssh key: %w", err)
	}
	if bin := d.vmmBinary(); isQEMUVMM(bin) {
		// banger-vmm-qemu runs unprivileged and cannot cache its choice
		// of accelerator under /run itself: choose once, as root.
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := d.runner.Run(pctx, bin, "--probe-accel")
		cancel()
		if err != nil {
			d.logger.Warn("accelerator probe failed; each VMM will probe on its own", "err", err)
		} else {
			d.logger.Info("accelerator", "choice", strings.TrimSpace(string(out)))
		}
	}
	d.strategy, d.strategyReason = d.storage.DetectStrategy(ctx, d.layout.vmsDir())
	d.setupPool(ctx)
	d.logger.Info("system overlays", "strategy", d.strategy, "why", d.strategyReason)

	if d.cfg.DNSListen != "off" {
		dns, err := network.NewDNSServer(d.cfg.DNSDomain, d.logger.With("sub", "dns"))
		if err != nil {
			return err
		}
		if err := dns.SetForwarding(d.forwardConfig()); err != nil {
			return err
		}
		d.dns = dns
	}
	d.caps = []capability{filterCapability{net: d.net, denied: d.denied}, natCapability{net: d.net}, dnsCapability{dns: d.dns}}
	if err := d.setupNetwork(ctx); err != nil {
		d.logger.Error("network setup failed; VMs cannot start until it works", "err", err)
	}
	d.settleLegacyImages(ctx)
	d.logger.Info("access", "admin_group", d.cfg.AdminGroup, "user_limits", describeLimits(d.cfg.Limits), "build_timeout", d.cfg.BuildTimeout)
	if err := d.reconcile(ctx, "startup"); err != nil {
		d.logger.Error("reconcile at startup", "err", err)
	}
	d.listenDenied(bg)
	d.startLoops(bg)
	return nil
}

// setupNetwork creates the bridge, fills the tap pool and starts the DNS
// server. It is retried before a VM starts if it failed.
func (d *Daemon) setupNetwork(ctx context.Context) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if d.netOK {
		return nil
	}
	err := d.setupNetworkLocked(ctx)
	d.netErr = err
	d.netOK = err == nil
	return err
}

func (d *Daemon) setupNetworkLocked(ctx context.Context) error {
	if err := d.net.EnsureBridge(ctx); err != nil {
		return fmt.Errorf("bridge %s: %w", d.cfg.BridgeName, err)
	}
	// Guests are isolated before any can start: without the filter, no
	// VM gets a network.
	if err := d.net.EnsureFilter(ctx); err != nil {
		return fmt.Errorf("packet filter (is nft installed?): %w", err)
	}
	if d.dns != nil && d.dns.Addr() == "" {
		addr := d.cfg.DNSListen
		if addr == "" {
			addr = net.JoinHostPort(d.cfg.BridgeIP, "53")
		}
		if err := d.dns.Listen(addr); err != nil {
			return fmt.Errorf("dns server on %s: %w", addr, err)
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.dns.Serve(context.Background()); err != nil {
				d.logger.Warn("dns server stopped", "err", err)
			}
		}()
		d.logger.Info("dns server listening", "addr", d.dns.Addr(), "domain", d.cfg.DNSDomain)
	}
	d.setupHostDNS(ctx)
	return nil
}

// requireNetwork returns why VMs cannot get a network, if they cannot.
func (d *Daemon) requireNetwork(ctx context.Context) error {
	if err := d.setupNetwork(ctx); err != nil {
		return model.Errorf(model.EUNAVAILABLE, "host network is not set up: %v (see `banger doctor`)", err)
	}
	return nil
}

// Close stops background work and closes the database. Running VMs keep
// running: their VMMs do not belong to the daemon's process.
func (d *Daemon) Close() error {
	if d.cancel != nil {
		d.cancel()
	}
	if d.dns != nil {
		d.dns.Close()
	}
	d.clocks.closeAll()
	d.wg.Wait()
	d.drops.Wait()
	return d.store.Close()
}

// Version implements api.Backend.
func (d *Daemon) Version(context.Context) api.VersionInfo { return d.version }

// Config returns the daemon's configuration.
func (d *Daemon) Config() model.DaemonConfig { return d.cfg }
