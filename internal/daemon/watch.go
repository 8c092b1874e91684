package daemon

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"banger/internal/firecracker"
	"banger/internal/fsutil"
	"banger/internal/model"
)

// The daemon watches every running VM's VMM: the ones it launched (their
// exit reaches it as their parent) and the ones it adopted after a
// restart (through a pidfd, which becomes readable when the process
// exits). Within a moment of the exit it runs the normal cleanup and sets
// the state: stopped after the guest rebooted or powered off (the VMM
// exits cleanly), error with LastError after a crash or a kill. The stale
// sweep stays as the safety net.

// vmmExit is how a watched VMM ended.
type vmmExit struct {
	// Clean says the guest ended it (reboot or poweroff).
	Clean bool
	// Why describes an unclean end.
	Why string
}

// watchVMM starts watching vm's VMM, pid; launched is the process when
// this daemon started it, nil for an adopted one. It does nothing when
// the VMM is already watched.
func (d *Daemon) watchVMM(vm model.VMRecord, pid int, launched *firecracker.Process) {
	if pid <= 0 || d.bg == nil || d.noWatch {
		return
	}
	d.watchMu.Lock()
	if d.watching == nil {
		d.watching = map[string]int{}
	}
	if d.watching[vm.ID] == pid {
		d.watchMu.Unlock()
		return
	}
	d.watching[vm.ID] = pid
	d.watchMu.Unlock()

	var wait func(ctx context.Context) (vmmExit, bool)
	if launched != nil {
		wait = func(ctx context.Context) (vmmExit, bool) {
			select {
			case <-launched.Done():
				return exitOf(launched), true
			case <-ctx.Done():
				return vmmExit{}, false
			}
		}
	} else {
		h, err := d.openProc(pid)
		if err != nil || h == nil {
			d.logger.Warn("cannot watch an adopted VMM; the sweep will notice its exit", "vm", vm.Name, "pid", pid, "err", err)
			d.unwatch(vm.ID, pid)
			return
		}
		// The handle names the process for good; check it is still the
		// VM's VMM (and not a process that took a reused PID).
		if p, err := d.procs.Get(pid); err != nil || !d.isVMM(d.procs, p, vm) {
			h.Close()
			d.unwatch(vm.ID, pid)
			return
		}
		wait = func(ctx context.Context) (vmmExit, bool) {
			defer h.Close()
			for {
				exited, err := h.Wait(ctx, 500*time.Millisecond)
				if exited {
					return d.exitOfAdopted(vm), true
				}
				if err != nil || ctx.Err() != nil {
					return vmmExit{}, false
				}
			}
		}
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ex, ok := wait(d.bg)
		if !ok {
			d.unwatch(vm.ID, pid)
			return
		}
		d.onVMMExit(vm.ID, pid, ex)
	}()
}

func (d *Daemon) unwatch(id string, pid int) {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.watching[id] == pid {
		delete(d.watching, id)
	}
}

// exitOf classifies a launched VMM's exit from its status.
func exitOf(p *firecracker.Process) vmmExit {
	st, err := p.ExitState()
	switch {
	case err != nil:
		return vmmExit{Why: fmt.Sprintf("the VMM exited and its status is unknown: %v", err)}
	case st == nil:
		return vmmExit{Why: "the VMM exited"}
	case st.Success():
		return vmmExit{Clean: true}
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return vmmExit{Why: fmt.Sprintf("the VMM was killed by %v", ws.Signal())}
	}
	return vmmExit{Why: fmt.Sprintf("the VMM exited with status %d", st.ExitCode())}
}

// exitOfAdopted classifies the exit of a VMM this daemon did not start,
// whose status it cannot read: the guest kernel's last console line says
// whether it rebooted or powered off.
func (d *Daemon) exitOfAdopted(vm model.VMRecord) vmmExit {
	tail, _ := fsutil.Tail(vm.Runtime.LogPath, 30, 16<<10)
	if strings.Contains(tail, "reboot: Restarting system") || strings.Contains(tail, "reboot: Power down") {
		return vmmExit{Clean: true}
	}
	return vmmExit{Why: "the VMM exited without the guest shutting down (crashed or killed)"}
}

// onVMMExit cleans up after a watched VMM ended, under the VM's lock. A
// stop or kill that ended it has already done so (the VM is no longer
// running, or runs on a new VMM): then there is nothing to do.
func (d *Daemon) onVMMExit(id string, pid int, ex vmmExit) {
	unlock := d.locks.lock(id)
	defer unlock()
	defer d.unwatch(id, pid)
	ctx := context.WithoutCancel(d.bg)
	vm, err := d.store.GetVM(ctx, id)
	if err != nil || vm.State != model.VMStateRunning {
		return
	}
	h := d.currentHandles(ctx, vm)
	if h.PID != 0 && h.PID != pid {
		return
	}
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	start := time.Now()
	vm.State = model.VMStateStopped
	vm.Runtime.LastError = ""
	if !ex.Clean {
		vm.State = model.VMStateError
		vm.Runtime.LastError = ex.Why
	}
	if err := d.cleanupRuntime(ctx, &vm, h); err != nil {
		vm.State = model.VMStateError
		vm.Runtime.LastError = strings.TrimSpace(vm.Runtime.LastError + "; cleanup incomplete: " + err.Error())
	}
	vm.UpdatedAt = model.Now()
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		log.Error("record the VMM's exit", "err", err)
		return
	}
	if ex.Clean {
		log.Info("the guest shut down; the VM is stopped", "took", time.Since(start))
	} else {
		log.Warn("the VMM ended; the VM is in error", "why", ex.Why, "took", time.Since(start))
	}
}
