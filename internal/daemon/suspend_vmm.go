package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/firecracker"
	"banger/internal/guest"
	"banger/internal/model"
)

// restoreFiles is the saved state a resume loads: the files in the
// saved directory, and the paths the VMM is told (/dev/fd/N of the
// descriptors the daemon passes, set by the launch).
type restoreFiles struct {
	state, mem       string
	vmmState, vmmMem string
}

// pass opens the saved files and gives them to the VMM as descriptors,
// after its disks, kernel and tap, so those keep the numbers they had
// when the snapshot was taken (the VMM finds its drives by number).
func (r *restoreFiles) pass(l *vmmLaunch) error {
	st, err := openSaved(r.state)
	if err != nil {
		return err
	}
	mem, err := openSaved(r.mem)
	if err != nil {
		st.Close()
		return err
	}
	r.vmmState = l.addFile(st)
	r.vmmMem = l.addFile(mem)
	return nil
}

// snapshotIface is the network interface every VM has, which a restore
// moves to the tap it was given this time.
const snapshotIface = "eth0"

// heldClockTimeout bounds the use of the session a suspend left in the
// guest; past it, the daemon connects again.
const heldClockTimeout = 5 * time.Second

// resumeSSHTimeout bounds the wait for a restored guest's SSH: it was
// answering when it was saved, so a long silence means the restore did
// not work.
const resumeSSHTimeout = 90 * time.Second

// snapshotVMMs names the VMMs known to save and restore a VM with
// Firecracker's snapshot API.
func snapshotVMM(bin string) bool {
	base := filepath.Base(bin)
	return isQEMUVMM(bin) || base == "firecracker" || strings.HasPrefix(base, "firecracker-")
}

func (b vmmBooter) snapshots() error {
	bin := b.binary()
	if bin == "" {
		return model.Errorf(model.EUNAVAILABLE, "no VMM: install firecracker or banger-vmm-qemu, or set firecracker_bin (see `banger doctor`)")
	}
	if !snapshotVMM(bin) {
		return model.Errorf(model.EUNAVAILABLE, "the VMM %s is not known to save and restore VMs (firecracker and banger-vmm-qemu are); stop the VM instead", bin)
	}
	return nil
}

// clockHold is a session left in a suspended guest to set its clock at
// the resume (*guest.ClockHold).
type clockHold interface {
	Set(ctx context.Context, now func() time.Time) error
	Close()
}

// clockHolds keeps the holds of suspended VMs, by VM ID. The zero value
// is ready.
type clockHolds struct {
	mu sync.Mutex
	m  map[string]clockHold
}

// put keeps h for id, closing any hold id had.
func (c *clockHolds) put(id string, h clockHold) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]clockHold{}
	}
	if old := c.m[id]; old != nil {
		old.Close()
	}
	c.m[id] = h
}

// take removes and returns id's hold, nil when it has none.
func (c *clockHolds) take(id string) clockHold {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.m[id]
	delete(c.m, id)
	return h
}

// drop closes id's hold, if any.
func (c *clockHolds) drop(id string) {
	if h := c.take(id); h != nil {
		h.Close()
	}
}

func (c *clockHolds) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, h := range c.m {
		h.Close()
		delete(c.m, id)
	}
}

// prepareSuspend flushes the guest's disks and leaves a shell waiting
// to set its clock, on a connection without keepalives (a sleeping
// guest answers none).
func (b vmmBooter) prepareSuspend(ctx context.Context, vm model.VMRecord) (clockHold, error) {
	signer, err := guest.LoadSigner(b.cfg.SSHKeyPath)
	if err != nil {
		return nil, model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	conn, err := guest.DialQuiet(ctx, net.JoinHostPort(vm.Runtime.GuestIP, "22"), signer, vm.Runtime.SSHHostKey)
	if err != nil {
		return nil, fmt.Errorf("reach vm %s over ssh: %w", vm.Name, err)
	}
	h, err := conn.HoldClock(ctx, "sync")
	if err != nil {
		return nil, err
	}
	return h, nil
}

// startWaiter starts the waiter over the daemon's SSH connection and
// waits until it listens.
func (b vmmBooter) startWaiter(ctx context.Context, vm model.VMRecord, port int) (string, error) {
	token, err := guest.NewWaiterToken()
	if err != nil {
		return "", err
	}
	cmd, err := guest.WaiterCommand(identityProgram, vm.Runtime.GuestIP, port, "ip", "-batch", "-")
	if err != nil {
		return "", err
	}
	in, err := guest.WaiterInput(token)
	if err != nil {
		return "", err
	}
	conn, err := b.dial(ctx, vm)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	out, err := guestOutputIn(ctx, conn, cmd, bytes.NewReader(in))
	if err != nil {
		return "", fmt.Errorf("start the waiter: %w (%s)", err, strings.TrimSpace(out))
	}
	if strings.TrimSpace(out) != "listening" {
		return "", fmt.Errorf("start the waiter: it said %q", out)
	}
	return token, nil
}

func (b vmmBooter) load(ctx context.Context, s *startRun) error {
	apiCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := s.proc.WaitAPI(apiCtx, s.vm.Runtime.APISockPath)
	cancel()
	if err != nil {
		return fmt.Errorf("vmm api: %w; see %s", err, s.vm.Runtime.LogPath)
	}
	return loadVMM(ctx, b.client(s.vm), s.vm, s.restore, s.h.Tap)
}

// waitResumed dials the restored guest until it answers with its host
// key and sets its clock on that first connection: the clock's exchange
// is the proof the guest runs, so no other command is run first. A guest
// that answers with another key is retried, never trusted.
func (b vmmBooter) waitResumed(ctx context.Context, s *startRun) error {
	signer, err := guest.LoadSigner(b.cfg.SSHKeyPath)
	if err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	timeout := min(b.cfg.BootTimeout, resumeSSHTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-s.proc.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	if s.held != nil {
		// The session the suspend left: no new connection needed.
		hctx, hcancel := context.WithTimeout(ctx, heldClockTimeout)
		err := s.held.Set(hctx, time.Now)
		hcancel()
		s.held = nil
		if err == nil {
			s.log.Info("restored guest set its clock over the held session", "ms", time.Since(start).Milliseconds())
			return nil
		}
		s.log.Warn("the held session did not answer; connecting again", "err", err)
	}
	addr := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	var last error
	for tries := 1; ; tries++ {
		conn, err := guest.Dial(ctx, addr, signer, s.vm.Runtime.SSHHostKey)
		if err == nil {
			dialed := time.Since(start)
			err = conn.SetClock(ctx, time.Now)
			conn.Close()
			if err == nil {
				s.log.Info("restored guest answered", "dial_ms", dialed.Milliseconds(), "clock_ms", (time.Since(start) - dialed).Milliseconds(), "tries", tries)
				return nil
			}
		}
		if errors.Is(err, guest.ErrNoHostKey) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			tail := lastLines(s.vm.Runtime.LogPath, 15)
			select {
			case <-s.proc.Done():
				return fmt.Errorf("the VMM exited after the restore; last console lines:\n%s\n(full log: %s)", tail, s.vm.Runtime.LogPath)
			default:
			}
			return fmt.Errorf("no SSH answer from the restored guest at %s within %s: %v; last console lines:\n%s\n(full log: %s)", addr, timeout, last, tail, s.vm.Runtime.LogPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// loadVMM sends a fresh VMM its logger and metrics, then the saved state
// to load, paused, with the VM's interface on tap.
func loadVMM(ctx context.Context, c *firecracker.Client, vm model.VMRecord, r *restoreFiles, tap string) error {
	if r == nil || r.vmmState == "" || r.vmmMem == "" {
		return fmt.Errorf("load: no saved state was passed to the VMM")
	}
	logger, err := firecracker.NewLogger(vmmLogPath(vm.Runtime.VMDir), "Info")
	if err != nil {
		return err
	}
	if err := c.PutLogger(ctx, logger); err != nil {
		return err
	}
	metrics, err := firecracker.NewMetrics(vm.Runtime.MetricsPath)
	if err != nil {
		return err
	}
	if err := c.PutMetrics(ctx, metrics); err != nil {
		return err
	}
	load, err := firecracker.NewSnapshotLoad(r.vmmState, r.vmmMem, false, map[string]string{snapshotIface: tap})
	if err != nil {
		return err
	}
	return c.LoadSnapshot(ctx, load)
}
