package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// step is one long build command. Its output goes to the build log; a
// cancelled context kills it together with everything it started.
type step struct {
	Argv []string
	Dir  string
	// Env is added to the environment (which always has LC_ALL=C).
	Env []string
	// Isolate runs the command in new PID and mount namespaces, for the
	// steps that chroot into the image: when the command ends or is
	// killed, every process it left behind dies with it (the namespace's
	// init is gone) and every mount it made inside the image disappears
	// with the namespace, so a cancelled build leaves no process and no
	// mount behind.
	Isolate bool
	// NetNS, when set, names a network namespace file (such as
	// /run/netns/NAME) the command runs in: the steps that download from
	// the mirror, when the daemon itself lives in a namespace without a
	// way out.
	NetNS string
	// Sandbox runs the command (which must Isolate) in a user namespace
	// of its own whose ids 0..sandboxIDCount-1 are the host's
	// sandboxUIDBase and up: root there is nobody on the host. Files it
	// must write are shifted to those ids first (shiftOwners).
	Sandbox bool
	// Files are inherited as descriptors 3, 4, ...
	Files []*os.File
}

// stepRunner runs build steps. The real one is procRunner; unit tests
// record the argv instead.
type stepRunner interface {
	RunStep(ctx context.Context, log *os.File, s step) error
}

// procRunner runs a step as its own process group (and namespaces when
// Isolate is set) and kills the whole group on cancellation.
type procRunner struct{}

// RunStep implements stepRunner.
func (procRunner) RunStep(ctx context.Context, log *os.File, s step) error {
	argv := s.Argv
	if s.NetNS != "" && !s.Sandbox {
		argv = append([]string{"nsenter", "--net=" + s.NetNS, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = s.Dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), s.Env...)
	cmd.Stdin = nil
	// The log is an *os.File, so the children write to it directly and no
	// copying goroutine can keep Wait from returning.
	cmd.Stdout, cmd.Stderr = log, log
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.Isolate {
		attr.Cloneflags = syscall.CLONE_NEWPID
		// With CLONE_NEWNS among the unshare flags, Go makes the new mount
		// namespace's root private, so mounts inside it never reach the
		// host's namespace.
		attr.Unshareflags = syscall.CLONE_NEWNS
	}
	if s.Sandbox {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: sandboxUIDBase, Size: sandboxIDCount}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: sandboxUIDBase, Size: sandboxIDCount}}
		attr.GidMappingsEnableSetgroups = true
		// The daemon's uid 0 is not mapped in the sandbox: without a
		// change of ids the step would run as the overflow uid and lose
		// its capabilities at exec (and mount refuses to run for it).
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
		// The sandbox's root cannot search the daemon's directories: it
		// reaches what it needs through inherited descriptors. A mount
		// namespace made here would hold the host's mounts under those
		// descriptors, where the sandbox cannot mount: the step makes its
		// own once it stands in its tree (sandboxArgv).
		cmd.Dir = "/"
		attr.Unshareflags &^= syscall.CLONE_NEWNS
	}
	cmd.ExtraFiles = s.Files
	cmd.SysProcAttr = attr
	cmd.Cancel = func() error {
		// The negative pid is the process group: make and its compilers,
		// or debootstrap and its chroot, all go.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 10 * time.Second
	fmt.Fprintf(log, "+ %s\n", strings.Join(argv, " "))
	var err error
	if s.Sandbox && s.NetNS != "" {
		// A process in a user namespace of its own cannot enter a network
		// namespace the host's root owns: it is started from a thread
		// that entered it (and its Pdeathsig is tied to that thread,
		// which lives until the process ends).
		err = runInNetNS(cmd, s.NetNS)
	} else {
		err = cmd.Run()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(s.Argv, " "), err)
	}
	return nil
}

// runInNetNS runs cmd from a thread in the network namespace nsPath. The
// thread is never given back to the runtime: it ends with its goroutine.
func runInNetNS(cmd *exec.Cmd, nsPath string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("network namespace %s: %w", nsPath, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		done <- cmd.Run()
	}()
	return <-done
}

// killChrootProcesses kills every process whose root directory is dir or
// below it: a last resort for processes that escaped a step's namespaces.
func killChrootProcesses(dir string) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root"))
		if err != nil {
			continue
		}
		if root == dir || strings.HasPrefix(root, dir+"/") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount at or below dir in the host's mount
// namespace, deepest first. Steps mount only inside their own namespace,
// so this finds something only after a bug or a manual mount; removing a
// directory tree with a mount in it would otherwise delete the mounted
// filesystem's files.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) of a
// path in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeTree removes a build's working tree safely: it kills processes
// still rooted in it, detaches mounts below it, then deletes it.
func removeTree(dir string) error {
	if dir == "" || dir == "/" {
		return fmt.Errorf("remove tree: refusing %q", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("remove tree: %w", err)
	}
	killChrootProcesses(abs)
	if err := unmountUnder(abs); err != nil {
		// A mount that stays must not have its files deleted.
		return fmt.Errorf("remove tree %s: %w", abs, err)
	}
	if err := os.RemoveAll(abs); err != nil {
		return fmt.Errorf("remove tree: %w", err)
	}
	return nil
}
