package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/network"

	"golang.org/x/crypto/ssh"
)

// booter is the VMM seam of a start: each method is one step of
// startSteps. vmmBooter drives a real VMM over Firecracker's API; unit
// tests replace it. It records what it starts in s.h (the PID) and s.proc;
// the step runner records the handles and calls the crash points.
type booter interface {
	// check says why VMs cannot boot here, before anything is touched.
	check() error
	// launch starts the VMM and sets s.h.PID.
	launch(ctx context.Context, s *startRun) error
	// kill ends what launch started (the undo of launch).
	kill(ctx context.Context, s *startRun)
	// configure sends the machine's configuration.
	configure(ctx context.Context, s *startRun) error
	// instanceStart boots the guest.
	instanceStart(ctx context.Context, s *startRun) error
	// waitReady returns once the guest answers SSH with the host key
	// the daemon made for it, and its first-boot setup is done.
	waitReady(ctx context.Context, s *startRun) error

	// The VMM side of suspend and resume (suspend.go, resume.go).

	// snapshots says why this VMM cannot save and restore a VM, or nil
	// when it can.
	snapshots() error
	// prepareSuspend has the running guest flush its disks and leaves a
	// session in it waiting to set its clock at the resume.
	prepareSuspend(ctx context.Context, vm model.VMRecord) (clockHold, error)
	// startWaiter leaves a waiter (guest.WaiterCommand) running
	// identityProgram in the running guest, listening at its address
	// on port, and returns its token.
	startWaiter(ctx context.Context, vm model.VMRecord, port int) (string, error)
	// load restores the saved state in s.restore into the VMM launch
	// started (instead of configure and instanceStart); the guest is
	// left paused, its network on s.h.Tap.
	load(ctx context.Context, s *startRun) error
	// waitResumed returns once the resumed guest answers SSH with its
	// host key and its clock is set to the host's: over s.held, the
	// session prepareSuspend left, when it still answers.
	waitResumed(ctx context.Context, s *startRun) error
	// reidentify makes a fork's restored child its own machine over its
	// quarantined tap (fork_vmm.go); waitAdmitted returns once it
	// answers on the bridge.
	reidentify(ctx context.Context, s *startRun) error
	waitAdmitted(ctx context.Context, s *startRun) error
}

// vmmBooter boots through the Firecracker API: firecracker itself, or
// banger-vmm-qemu, which speaks the same API. It gets what it needs, not
// the daemon: the configuration, the VMM binary, the sandbox (uid,
// descriptors, cgroup) and the per-boot guest setup.
type vmmBooter struct {
	cfg    model.DaemonConfig
	binary func() string
	// prepare opens the VMM's descriptors and makes its cgroup.
	prepare func(vm model.VMRecord, img model.Image, h vmHandles, bin string) (*vmmLaunch, error)
	// enterCgroup moves a launched VMM into its cgroup (cgroup v1);
	// releaseCgroup removes the cgroup.
	enterCgroup   func(vm model.VMRecord, pid int) error
	releaseCgroup func(vm model.VMRecord) error
	// client is the API client for a VM's VMM.
	client func(vm model.VMRecord) *firecracker.Client
	// firstBoot is the per-start guest setup over the daemon's SSH
	// connection (file sync, the user's keys).
	firstBoot func(ctx context.Context, conn *guest.Conn, vm model.VMRecord) error
	// killVMM SIGKILLs a VMM and waits for it to go.
	killVMM func(ctx context.Context, pid int) error
	// nameserver is the DNS server guests are told to use.
	nameserver func() string
	// dial opens the daemon's SSH connection to a running guest.
	dial func(ctx context.Context, vm model.VMRecord) (*guest.Conn, error)
}

func (d *Daemon) newVMMBooter() vmmBooter {
	return vmmBooter{
		cfg: d.cfg, binary: d.vmmBinary, prepare: d.prepareVMM,
		enterCgroup: d.enterCgroup, releaseCgroup: d.removeCgroup,
		client: d.vmmClient, firstBoot: d.firstBoot, killVMM: d.killVMM,
		nameserver: d.guestNameserver, dial: d.dialGuest,
	}
}

func (b vmmBooter) check() error {
	if b.binary() == "" {
		return model.Errorf(model.EUNAVAILABLE, "no VMM: install firecracker or banger-vmm-qemu, or set firecracker_bin (see `banger doctor`)")
	}
	if _, err := os.Stat(b.cfg.SSHKeyPath); err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key %s: %v", b.cfg.SSHKeyPath, err)
	}
	return nil
}

func (b vmmBooter) launch(ctx context.Context, s *startRun) error {
	vm := s.vm
	bin := b.binary()
	s.progress(api.Progress{Step: "vmm", Message: fmt.Sprintf("launching %s as uid %d", bin, vm.Runtime.VMMUID)})
	l, err := b.prepare(vm, s.img, s.h, bin)
	if err != nil {
		return err
	}
	if s.restore != nil {
		if err := s.restore.pass(l); err != nil {
			l.close()
			b.releaseCgroup(vm)
			return err
		}
	}
	proc, err := firecracker.Launch(l.cfg)
	if err != nil {
		l.close()
		b.releaseCgroup(vm)
		return err
	}
	// The VMM has its descriptors; the daemon's copies go, except the
	// paths the configuration names.
	l.close()
	s.launch = l
	s.proc = proc
	s.h.PID = proc.PID
	s.h.launched = proc
	if err := b.enterCgroup(vm, proc.PID); err != nil {
		b.kill(ctx, s)
		return err
	}
	return nil
}

func (b vmmBooter) kill(ctx context.Context, s *startRun) {
	if s.h.PID > 0 {
		if err := b.killVMM(ctx, s.h.PID); err != nil {
			s.log.Warn("undo: kill vmm", "pid", s.h.PID, "err", err)
		}
	}
	os.Remove(s.vm.Runtime.APISockPath)
	if err := b.releaseCgroup(s.vm); err != nil {
		s.log.Warn("undo: remove cgroup", "err", err)
	}
	s.h.PID = 0
	s.h.launched = nil
}

func (b vmmBooter) configure(ctx context.Context, s *startRun) error {
	apiCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := s.proc.WaitAPI(apiCtx, s.vm.Runtime.APISockPath)
	cancel()
	if err != nil {
		return fmt.Errorf("vmm api: %w; see %s", err, s.vm.Runtime.LogPath)
	}
	return configureVMM(ctx, b.cfg, b.nameserver(), b.client(s.vm), s.vm, s.launch, s.h.Tap)
}

func (b vmmBooter) instanceStart(ctx context.Context, s *startRun) error {
	sent := time.Now()
	if err := b.client(s.vm).InstanceStart(ctx); err != nil {
		return err
	}
	hostSide := time.Since(s.received)
	// vmm_start_ms is the VMM's part: from sending InstanceStart to its
	// answer (banger-vmm-qemu starts QEMU in it).
	s.log.Info("instance started", "host_side_ms", hostSide.Milliseconds(), "vmm_start_ms", time.Since(sent).Milliseconds())
	s.progress(api.Progress{Step: "boot", Message: fmt.Sprintf("InstanceStart sent %dms after the request; waiting for SSH", hostSide.Milliseconds())})
	return nil
}

func (b vmmBooter) waitReady(ctx context.Context, s *startRun) error {
	signer, err := guest.LoadSigner(b.cfg.SSHKeyPath)
	if err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	conn, err := waitSSH(ctx, b.cfg.BootTimeout, s.vm, s.proc, signer)
	if err != nil {
		return err
	}
	defer conn.Close()
	return b.firstBoot(ctx, conn, s.vm)
}

// configureVMM sends the machine's configuration over the Firecracker API.
// Every body is made (and checked) first; then the requests, which do not
// depend on one another before InstanceStart, go at once, each on its own
// connection (the client keeps none alive), so the step costs about one
// round trip instead of seven.
func configureVMM(ctx context.Context, cfg model.DaemonConfig, nameserver string, c *firecracker.Client, vm model.VMRecord, l *vmmLaunch, tap string) error {
	logger, err := firecracker.NewLogger(l.logPath, "Info")
	if err != nil {
		return err
	}
	metrics, err := firecracker.NewMetrics(l.metricsPath)
	if err != nil {
		return err
	}
	mc, err := firecracker.NewMachineConfig(vm.Spec.VCPUCount, vm.Spec.MemoryMiB)
	if err != nil {
		return err
	}
	ipArg, err := network.KernelIPArg(vm.Runtime.GuestIP, cfg.BridgeIP, cfg.CIDR, vm.Name, nameserver)
	if err != nil {
		return err
	}
	args, err := firecracker.BootArgs(firecracker.BootArgsConfig{IP: ipArg, Hostname: vm.Name})
	if err != nil {
		return err
	}
	bs, err := firecracker.NewBootSource(l.kernel, l.initrd, args)
	if err != nil {
		return err
	}
	root, err := firecracker.NewDrive("rootfs", l.root, true, false)
	if err != nil {
		return err
	}
	work, err := firecracker.NewDrive("work", l.work, false, false)
	if err != nil {
		return err
	}
	// /root keeps what the guest flushed: its fsync reaches the disk
	// (the system disk can be rebuilt from the image, so it keeps the
	// faster default).
	work.CacheType = "Writeback"
	nic, err := firecracker.NewNetworkInterface("eth0", tap, vm.Runtime.GuestMAC)
	if err != nil {
		return err
	}
	return allAtOnce(
		func() error { return c.PutLogger(ctx, logger) },
		func() error { return c.PutMetrics(ctx, metrics) },
		func() error { return c.PutMachineConfig(ctx, mc) },
		func() error { return c.PutBootSource(ctx, bs) },
		func() error { return c.PutDrive(ctx, root) },
		func() error { return c.PutDrive(ctx, work) },
		func() error { return c.PutNetworkInterface(ctx, nic) },
	)
}

// allAtOnce runs each call in its own goroutine, waits for all of them
// and returns their errors joined, in the order the calls were given.
func allAtOnce(calls ...func() error) error {
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = call()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// sshPollInterval is the pause between two SSH attempts while a guest
// boots. An attempt before sshd listens costs a SYN and the guest's RST
// (before the guest has its address it waits for ARP instead, seconds,
// without a pause), so a short pause is cheap and takes, on average,
// half of it off every boot's time to SSH.
const sshPollInterval = 50 * time.Millisecond

// waitSSH waits until the guest answers SSH, the VMM dies, or the boot
// timeout passes; a timeout reports the last console lines.
func waitSSH(ctx context.Context, timeout time.Duration, vm model.VMRecord, proc *firecracker.Process, signer ssh.Signer) (*guest.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-proc.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	addr := net.JoinHostPort(vm.Runtime.GuestIP, "22")
	conn, err := guest.WaitReady(ctx, addr, signer, vm.Runtime.SSHHostKey, sshPollInterval)
	if err == nil {
		return conn, nil
	}
	tail := lastLines(vm.Runtime.LogPath, 15)
	select {
	case <-proc.Done():
		return nil, fmt.Errorf("the VMM exited during boot; last console lines:\n%s\n(full log: %s)", tail, vm.Runtime.LogPath)
	default:
	}
	return nil, fmt.Errorf("no SSH answer from %s within %s: %v; last console lines:\n%s\n(full log: %s)", addr, timeout, err, tail, vm.Runtime.LogPath)
}

// firstBoot does the per-start guest setup over the daemon's SSH
// connection: a pending file sync tar is extracted into /root, then the
// user's keys go into /root/.ssh/authorized_keys (after file sync, so a
// synced file cannot drop them). Both scripts end with sync before the
// daemon deletes its pending copy: a VMM killed right after (a daemon crash
// then a reconcile, a vm kill) must not take the keys with the guest's page
// cache, which left a VM nobody could log into.
func (d *Daemon) firstBoot(ctx context.Context, conn *guest.Conn, vm model.VMRecord) error {
	if err := d.applyFileSync(ctx, conn, vm); err != nil {
		return err
	}
	keysFile := userKeysPath(vm.Runtime.VMDir)
	if keys, err := os.ReadFile(keysFile); err == nil {
		if err := conn.Run(ctx, authorizeKeysCommand(), strings.NewReader(string(keys)), nil, nil); err != nil {
			return fmt.Errorf("authorize user keys: %w", err)
		}
		os.Remove(keysFile)
	}
	return nil
}

// authorizeKeysScript adds the keys on its standard input, one per line,
// to root's authorized_keys, each once, then syncs. Where the guest has
// perl, one perl process does it (authorizeKeysProgram; in an emulated
// guest each program started costs tens of milliseconds, and the shell
// way starts one per key); otherwise the shell does.
const authorizeKeysScript = `umask 077; if command -v perl >/dev/null 2>&1; then exec perl -e "$1" "$2"; fi; ` +
	`mkdir -p /root/.ssh; touch /root/.ssh/authorized_keys; while IFS= read -r k; do [ -n "$k" ] || continue; grep -qxF "$k" /root/.ssh/authorized_keys || printf '%s\n' "$k" >> /root/.ssh/authorized_keys; done; sync`

// authorizeKeysProgram is authorizeKeysScript's perl (perlAddKeys); its
// argument is sync(2)'s number (0: run sync). Its root is
// $ENV{BANGER_ROOT} ("" in a guest; a test's directory).
const authorizeKeysProgram = "use strict;\n" + perlAddKeys + `addkeys($ENV{BANGER_ROOT} // "", $ARGV[0]);
`

// authorizeKeysCommand is the command line running authorizeKeysScript.
func authorizeKeysCommand() string {
	nrSync, _ := syscallNumbers()
	return "sh -c " + guest.Quote(authorizeKeysScript) + " sh " + guest.Quote(authorizeKeysProgram) + " " + strconv.Itoa(nrSync)
}
