package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"banger/internal/model"
)

// LaunchConfig says how to start one VMM process.
type LaunchConfig struct {
	// Bin is the VMM binary: firecracker, or banger-vmm-qemu.
	Bin string
	// APISock is the API socket path the VMM creates; a stale file there
	// is removed first, because Firecracker refuses to start over it.
	APISock string
	// ID is the instance id (--id): letters, digits and hyphens, at most 64.
	ID string
	// ExtraArgs follow --api-sock and --id.
	ExtraArgs []string
	// LogPath receives the VMM's stdout and stderr (the guest's serial
	// console among them), appended.
	LogPath string
	// Env, if not nil, is the VMM's environment; nil inherits ours.
	Env []string
	// UID and GID, when not 0, are the credentials the VMM runs with,
	// with no supplementary groups: a non-root uid gets no capabilities.
	UID, GID uint32
	// ExtraFiles are inherited by the VMM as descriptors 3, 4, ... (see
	// ExtraFileFD): the disks, the tap, the kernel and initrd the daemon
	// opened, named over the API as /dev/fd/N.
	ExtraFiles []*os.File
	// CgroupFD, when above 0, is an open cgroup v2 directory the VMM is
	// created in (clone3 CLONE_INTO_CGROUP). On cgroup v1 the caller
	// moves the PID itself.
	CgroupFD int
	// TapFDs maps tap names to the descriptor numbers, in the VMM, of
	// taps opened with OpenTap and passed in ExtraFiles; each becomes a
	// --tap-fd NAME=N flag (banger-vmm-qemu only: firecracker has no such
	// flag).
	TapFDs map[string]int
	// Argv, when set, is the whole command line after Bin instead of
	// the one Args builds: Firecracker's jailer (see JailerArgs), which
	// runs as root and drops to the VM's uid itself.
	Argv []string
}

// ExtraFileFD returns the descriptor number ExtraFiles[i] has in the VMM.
func ExtraFileFD(i int) int { return 3 + i }

// FDPath returns the path that names the inherited descriptor fd over
// the API: /dev/fd/N.
func FDPath(fd int) string { return "/dev/fd/" + strconv.Itoa(fd) }

var instanceIDRe = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// Args returns the VMM's argv after the binary name: --api-sock, --id,
// the --tap-fd flags sorted by name, then ExtraArgs.
func (c LaunchConfig) Args() []string {
	if c.Argv != nil {
		return c.Argv
	}
	args := []string{"--api-sock", c.APISock, "--id", c.ID}
	names := make([]string, 0, len(c.TapFDs))
	for name := range c.TapFDs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		args = append(args, "--tap-fd", name+"="+strconv.Itoa(c.TapFDs[name]))
	}
	return append(args, c.ExtraArgs...)
}

// check validates the configuration before anything is touched.
func (c LaunchConfig) check() error {
	if c.Bin == "" || c.APISock == "" || c.LogPath == "" {
		return model.Errorf(model.EINVALID, "launch vmm: binary, api socket and log path are required")
	}
	if !instanceIDRe.MatchString(c.ID) {
		return model.Errorf(model.EINVALID, "launch vmm: instance id %q: want 1 to 64 letters, digits or hyphens", c.ID)
	}
	for i, f := range c.ExtraFiles {
		if f == nil {
			return model.Errorf(model.EINVALID, "launch vmm: extra file %d is nil", i)
		}
	}
	for name, fd := range c.TapFDs {
		if err := CheckTapName(name); err != nil {
			return model.Errorf(model.EINVALID, "launch vmm: --tap-fd %s: %v", name, err)
		}
		if fd < ExtraFileFD(0) || fd >= ExtraFileFD(len(c.ExtraFiles)) {
			return model.Errorf(model.EINVALID, "launch vmm: --tap-fd %s=%d: not one of the extra files (descriptors %d to %d)",
				name, fd, ExtraFileFD(0), ExtraFileFD(len(c.ExtraFiles))-1)
		}
	}
	return nil
}

// sysProcAttr returns the VMM's process attributes: its own session,
// and the credentials and cgroup asked for.
func (c LaunchConfig) sysProcAttr() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setsid: true}
	if c.UID != 0 || c.GID != 0 {
		attr.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{}}
	}
	if c.CgroupFD > 0 {
		attr.UseCgroupFD, attr.CgroupFD = true, c.CgroupFD
	}
	return attr
}

// Process is a VMM started by Launch. The daemon is its parent while the
// daemon lives; a goroutine reaps it so that no zombie is left, and Done
// is closed when it has exited.
type Process struct {
	PID  int
	done chan struct{}

	mu    sync.Mutex
	state *os.ProcessState
	err   error
}

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitState returns the process's exit state once Done is closed (nil
// before), and the error of waiting for it, if any.
func (p *Process) ExitState() (*os.ProcessState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.err
}

// Launch starts the VMM detached from the daemon: in its own session, not
// tied to any request's context (a cancelled request must not kill a VM),
// stdin from /dev/null, stdout and stderr appended to cfg.LogPath (opened
// here, with the caller's rights), cfg.ExtraFiles from descriptor 3 on,
// as cfg.UID/cfg.GID in cfg.CgroupFD when set. It returns once the
// process runs; use WaitAPI for its socket.
func Launch(cfg LaunchConfig) (*Process, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := os.Remove(cfg.APISock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("launch vmm: remove stale api socket: %w", err)
	}
	logf, err := os.OpenFile(cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("launch vmm: open log: %w", err)
	}
	defer logf.Close()
	// exec.Command, not CommandContext: the VMM outlives requests and the
	// daemon itself.
	cmd := exec.Command(cfg.Bin, cfg.Args()...)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = cfg.Env
	cmd.ExtraFiles = cfg.ExtraFiles
	cmd.SysProcAttr = cfg.sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("launch vmm %s: %w", cfg.Bin, err)
	}
	p := &Process{PID: cmd.Process.Pid, done: make(chan struct{})}
	// The reaper goroutine ends when the VMM exits.
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.state = cmd.ProcessState
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			p.err = err
		}
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// WaitAPI waits until the API at sock answers GET /, or ctx ends, or the
// process exits first (then the error says how it ended).
func (p *Process) WaitAPI(ctx context.Context, sock string) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The watcher ends when the VMM exits or when WaitAPI returns.
	go func() {
		select {
		case <-p.done:
			st, _ := p.ExitState()
			cancel(fmt.Errorf("vmm exited before its api answered (%v)", st))
		case <-ctx.Done():
		}
	}()
	return WaitAPI(ctx, sock)
}

// apiPollInterval is the pause between two looks for a starting VMM's
// API socket. A look is a stat (and a GET once the socket exists), some
// microseconds, so the poll is tight: the socket is seen within a
// millisecond of its listen.
const apiPollInterval = time.Millisecond

// WaitAPI polls the API socket at sock until GET / answers, or ctx ends.
func WaitAPI(ctx context.Context, sock string) error {
	c := NewClient(sock)
	tick := time.NewTicker(apiPollInterval)
	defer tick.Stop()
	var last error
	for {
		if _, err := os.Stat(sock); err == nil {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err = c.Describe(rctx)
			cancel()
			if err == nil {
				return nil
			}
			last = err
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for vmm api %s: %w (last: %v)", sock, context.Cause(ctx), last)
		case <-tick.C:
		}
	}
}

// TrimLog keeps the log at path bounded: once it is larger than maxBytes,
// its content is copied to path+".1" (replacing the previous one) and the
// log is truncated to zero. This works while the VMM keeps writing,
// because the VMM's descriptor has O_APPEND and so continues at the new
// end; lines written between the copy and the truncation are lost. It
// reports whether it trimmed.
func TrimLog(path string, maxBytes int64) (bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("trim log: %w", err)
	}
	if st.Size() <= maxBytes {
		return false, nil
	}
	src, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("trim log: %w", err)
	}
	defer src.Close()
	tmp := path + ".1.tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return false, fmt.Errorf("trim log: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		os.Remove(tmp)
		return false, fmt.Errorf("trim log: copy: %w", err)
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("trim log: %w", err)
	}
	if err := os.Rename(tmp, path+".1"); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("trim log: %w", err)
	}
	if err := os.Truncate(path, 0); err != nil {
		return false, fmt.Errorf("trim log: %w", err)
	}
	return true, nil
}
