// Package hostexec is the one way banger runs external commands. Each
// subsystem wraps it in typed functions (addTap, attachLoop, ...) and
// tests replace it with a Fake that records every command and answers
// from a handler that keeps state.
package hostexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Runner runs a command and returns its standard output.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// StdinRunner is a Runner that can also feed a command's standard input.
type StdinRunner interface {
	Runner
	RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error)
}

// OptionRunner is a Runner that can also run a command with Options: as
// another user, with inherited files, with a time limit.
type OptionRunner interface {
	Runner
	RunWith(ctx context.Context, opts Options, name string, args ...string) ([]byte, error)
}

// Credential is a user and group to run a command as.
type Credential struct {
	UID uint32
	GID uint32
	// Groups are the supplementary groups; none by default (a VM's
	// user), a user's own when a check must see what that user sees.
	Groups []uint32
}

// String prints c as "uid:gid".
func (c Credential) String() string {
	return strconv.FormatUint(uint64(c.UID), 10) + ":" + strconv.FormatUint(uint64(c.GID), 10)
}

// Options change how RunWith runs a command. The zero value runs it like
// Run.
type Options struct {
	// Stdin feeds the command's standard input.
	Stdin io.Reader
	// As, when set, runs the command as this uid and gid with no
	// supplementary groups: a root daemon dropping to an unprivileged
	// user keeps no capability. The command then gets a minimal
	// environment (PATH and LC_ALL) and starts in /.
	As *Credential
	// ExtraFiles are inherited by the command as descriptors 3, 4, ...;
	// FDPath(i) names ExtraFiles[i] for it. An unprivileged command gets
	// a file the caller opened this way, instead of opening a path whose
	// directory it may not be allowed to search.
	ExtraFiles []*os.File
	// Timeout, when positive, kills the command when it runs longer.
	Timeout time.Duration
}

// FDPath is the path under which a command run with Options.ExtraFiles
// opens ExtraFiles[i]: /proc/self/fd/(3+i).
func FDPath(i int) string { return "/proc/self/fd/" + strconv.Itoa(3+i) }

// describe prints the options that change who runs a command and what
// it inherits, for the Fake's record and for errors; "" for none.
func (o Options) describe() string {
	var parts []string
	if o.As != nil {
		parts = append(parts, "as "+o.As.String())
	}
	for i, f := range o.ExtraFiles {
		parts = append(parts, fmt.Sprintf("fd %d=%s", 3+i, f.Name()))
	}
	if len(parts) == 0 {
		return ""
	}
	return "[" + strings.Join(parts, ", ") + "] "
}

// Real runs commands on the host with LC_ALL=C so their output parses the
// same everywhere.
type Real struct{}

// Run runs name with args. A failure returns an *ExitError that carries
// the argv and the command's output.
func (Real) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return Real{}.RunWith(ctx, Options{}, name, args...)
}

// RunStdin is Run with stdin connected to r.
func (Real) RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	return Real{}.RunWith(ctx, Options{Stdin: stdin}, name, args...)
}

// RunWith runs name with args as opts say. A command that outlives
// opts.Timeout is killed and fails with an error that says so.
func (Real) RunWith(ctx context.Context, opts Options, name string, args ...string) ([]byte, error) {
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if opts.As != nil {
		if err := inheritedCloseOnExec(); err != nil {
			return nil, fmt.Errorf("run %s as %s: %w", name, opts.As, err)
		}
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: opts.As.UID, Gid: opts.As.GID, Groups: append([]uint32{}, opts.As.Groups...),
		}}
	}
	cmd.Stdin = opts.Stdin
	cmd.ExtraFiles = opts.ExtraFiles
	// A killed command's descendants may hold its output open: stop
	// waiting for them soon after.
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if opts.Timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("killed after %s: %w", opts.Timeout, err)
		}
		return stdout.Bytes(), &ExitError{Argv: append([]string{name}, args...), Options: strings.TrimSpace(opts.describe()), Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// inheritedCloseOnExec marks every descriptor from 3 up close-on-exec.
// Go opens its own files that way, but a descriptor this process
// inherited from its parent without the flag would otherwise pass on to
// every command it runs; a command run as another user must get only its
// standard streams and the ExtraFiles (which exec duplicates into place).
func inheritedCloseOnExec() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("close_range: %w", err)
	}
	// Kernels before 5.11: one descriptor at a time.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		unix.CloseOnExec(fd)
	}
	return nil
}

// ExitError is a failed command.
type ExitError struct {
	Argv []string
	// Options describes the Options the command ran with ("[as 1:1,
	// fd 3=/path]"); empty for none.
	Options string
	Stdout  string
	Stderr  string
	Err     error
}

func (e *ExitError) Error() string {
	out := strings.TrimSpace(e.Stderr)
	if out == "" {
		out = strings.TrimSpace(e.Stdout)
	}
	if len(out) > 2000 {
		out = out[:2000] + "..."
	}
	cmd := strings.Join(e.Argv, " ")
	if e.Options != "" {
		cmd = e.Options + " " + cmd
	}
	if out == "" {
		return fmt.Sprintf("%s: %v", cmd, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", cmd, e.Err, out)
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode returns the command's exit status, or -1 if it did not exit
// normally.
func (e *ExitError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// ErrNotFound is the error of running a command that is not on PATH.
var ErrNotFound = exec.ErrNotFound

// LookPath finds a command on PATH, as the runner would.
func LookPath(name string) (string, error) { return exec.LookPath(name) }

// Available reports whether a command is on PATH.
func Available(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
