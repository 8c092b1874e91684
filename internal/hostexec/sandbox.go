package hostexec

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Sandbox says how to run a command without the daemon's privilege: as
// UID and GID with no supplementary groups (a process that changes from
// root to another uid loses every capability), with Files inherited as
// descriptors 3, 4, ... in order, so it reaches exactly the files the
// daemon opened for it and no path it could name. It is for commands
// that parse data a guest or a user controls (e2fsprogs on a VM's disk).
type Sandbox struct {
	UID, GID int
	Files    []*os.File
	Stdin    io.Reader
}

// FDPath is the path under which a sandboxed command finds Files[i].
func (Sandbox) FDPath(i int) string { return fmt.Sprintf("/proc/self/fd/%d", 3+i) }

// SandboxRunner runs commands in a Sandbox.
type SandboxRunner interface {
	RunSandboxed(ctx context.Context, sb Sandbox, name string, args ...string) ([]byte, error)
}

// RunSandboxed implements SandboxRunner. UID 0 is refused: a sandbox that
// is root is no sandbox.
func (Real) RunSandboxed(ctx context.Context, sb Sandbox, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if sb.UID <= 0 || sb.GID <= 0 {
		return nil, &ExitError{Argv: argv, Err: fmt.Errorf("sandbox: refusing uid %d gid %d", sb.UID, sb.GID)}
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// A fixed, minimal environment: nothing of the daemon's leaks in.
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/"}
	cmd.Dir = "/"
	cmd.Stdin = sb.Stdin
	cmd.ExtraFiles = sb.Files
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(sb.UID), Gid: uint32(sb.GID), Groups: []uint32{}},
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &ExitError{Argv: argv, Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// RunSandboxed implements SandboxRunner. The handler sees the command as
// if it ran unsandboxed, with each inherited descriptor's path replaced by
// the path the daemon opened (so a stateful fake can act on the file);
// Sandboxed lists what ran sandboxed, and as whom.
func (f *Fake) RunSandboxed(ctx context.Context, sb Sandbox, name string, args ...string) ([]byte, error) {
	// A file without a path of its own (a memfd) is shown as this
	// process's descriptor, which the test can read.
	paths := make([]string, len(sb.Files))
	for j, fl := range sb.Files {
		paths[j] = fl.Name()
		if _, err := os.Stat(paths[j]); err != nil {
			paths[j] = fmt.Sprintf("/proc/self/fd/%d", fl.Fd())
		}
	}
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = a
		for j := range sb.Files {
			shown[i] = strings.ReplaceAll(shown[i], sb.FDPath(j), paths[j])
		}
	}
	if sb.Stdin != nil {
		b, _ := io.ReadAll(sb.Stdin)
		in := string(b)
		for j := range sb.Files {
			in = strings.ReplaceAll(in, sb.FDPath(j), paths[j])
		}
		sb.Stdin = strings.NewReader(in)
	}
	f.mu.Lock()
	f.sandboxed = append(f.sandboxed, fmt.Sprintf("uid=%d gid=%d %s", sb.UID, sb.GID, strings.Join(append([]string{name}, shown...), " ")))
	f.mu.Unlock()
	return f.RunStdin(ctx, sb.Stdin, name, shown...)
}

// Sandboxed returns the commands run through RunSandboxed, each with the
// uid and gid it ran as.
func (f *Fake) Sandboxed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sandboxed...)
}
