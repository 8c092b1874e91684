package firecracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// StopResult says how Stop ended the VMM.
type StopResult struct {
	// Clean is true when the VMM exited by itself: the guest handled
	// Ctrl-Alt-Del and rebooted, which ends the VMM (reboot=k), or it was
	// already gone.
	Clean bool
	// Killed is true when Stop had to SIGKILL it.
	Killed bool
	// CtrlAltDelErr is why Ctrl-Alt-Del could not be sent, if it could
	// not (then Stop killed at once instead of waiting).
	CtrlAltDelErr error
}

// killWait bounds the wait for a SIGKILLed process to disappear.
const killWait = 10 * time.Second

// Stop ends the VMM pid: it presses Ctrl-Alt-Del through c, waits up to
// timeout for the process to exit, and SIGKILLs it otherwise. Waiting
// works whether or not the caller is the VMM's parent (after a daemon
// restart it is not): it uses a pidfd, which also makes the kill safe
// from PID reuse, or polls /proc where pidfds are missing. A nil c skips
// Ctrl-Alt-Del. The error is non-nil only when the process could not be
// ended, or when ctx ended while waiting (the VM is then left running;
// callers that must finish pass context.WithoutCancel).
func Stop(ctx context.Context, c *Client, pid int, timeout time.Duration) (StopResult, error) {
	p, err := openProc(pid)
	if err != nil {
		return StopResult{}, fmt.Errorf("stop vmm %d: %w", pid, err)
	}
	if p == nil {
		return StopResult{Clean: true}, nil
	}
	defer p.close()
	var res StopResult
	if c == nil {
		res.CtrlAltDelErr = errors.New("no api client")
	} else {
		sctx, cancel := context.WithTimeout(ctx, min(timeout, 5*time.Second))
		res.CtrlAltDelErr = c.SendCtrlAltDel(sctx)
		cancel()
	}
	if res.CtrlAltDelErr == nil {
		exited, err := p.wait(ctx, timeout)
		if err != nil {
			return res, fmt.Errorf("stop vmm %d: %w", pid, err)
		}
		if exited {
			res.Clean = true
			return res, nil
		}
	} else if exited, _ := p.wait(ctx, 0); exited {
		// It was on its way out already (the API was gone).
		res.Clean = true
		return res, nil
	}
	if err := p.kill(); err != nil {
		return res, fmt.Errorf("stop vmm %d: kill: %w", pid, err)
	}
	res.Killed = true
	exited, err := p.wait(context.WithoutCancel(ctx), killWait)
	if err != nil {
		return res, fmt.Errorf("stop vmm %d: %w", pid, err)
	}
	if !exited {
		return res, fmt.Errorf("stop vmm %d: still alive %v after SIGKILL", pid, killWait)
	}
	return res, nil
}

// Proc is a handle on a VMM process that may not be the caller's child
// (after a daemon restart it is not): a pidfd where the kernel has them,
// so signals and waits are safe from PID reuse.
type Proc struct{ p *proc }

// OpenProc returns a handle on pid, or nil when it is already gone.
func OpenProc(pid int) (*Proc, error) {
	p, err := openProc(pid)
	if err != nil || p == nil {
		return nil, err
	}
	return &Proc{p: p}, nil
}

// Kill sends SIGKILL; a process already gone is not an error.
func (p *Proc) Kill() error { return p.p.kill() }

// Wait waits up to d for the process to exit and reports whether it did;
// a cancelled ctx ends the wait with ctx's error.
func (p *Proc) Wait(ctx context.Context, d time.Duration) (bool, error) { return p.p.wait(ctx, d) }

// KillWait is how long to wait for a SIGKILLed VMM to disappear.
const KillWait = killWait

// Close releases the handle.
func (p *Proc) Close() { p.p.close() }

// proc is a handle on a process that may not be our child.
type proc struct {
	pid   int
	pidfd int // -1 when the kernel has no pidfd_open
}

// openProc returns a handle on pid, or nil when it is already gone.
func openProc(pid int) (*proc, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("bad pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case err == nil:
		p := &proc{pid: pid, pidfd: fd}
		if exited, _ := p.wait(context.Background(), 0); exited {
			p.close()
			return nil, nil
		}
		return p, nil
	case errors.Is(err, unix.ESRCH):
		return nil, nil
	case errors.Is(err, unix.ENOSYS):
		if !Alive(pid) {
			return nil, nil
		}
		return &proc{pid: pid, pidfd: -1}, nil
	default:
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
}

func (p *proc) close() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
	}
}

func (p *proc) kill() error {
	var err error
	if p.pidfd >= 0 {
		err = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
	} else {
		err = unix.Kill(p.pid, unix.SIGKILL)
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// wait waits up to d for the process to exit (a zombie counts as
// exited) and reports whether it did. A cancelled ctx ends the wait with
// ctx's error.
func (p *proc) wait(ctx context.Context, d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	for {
		slice := min(time.Until(deadline), 50*time.Millisecond)
		if p.pidfd >= 0 {
			// A pidfd becomes readable when the process exits.
			fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, int(max(slice, 0).Milliseconds()))
			if err != nil && !errors.Is(err, unix.EINTR) {
				return false, fmt.Errorf("poll pidfd: %w", err)
			}
			if n > 0 {
				return true, nil
			}
		} else {
			if !Alive(p.pid) {
				return true, nil
			}
			time.Sleep(max(slice, 0))
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
}
