// Package harness runs the real bangerd and banger binaries for the
// integration and end-to-end tests: it builds them once, writes a config
// into a temporary state dir, starts and restarts the daemon (optionally
// inside a network namespace of its own), and runs the CLI as root or as
// another user.
package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// repoRoot finds the module root from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Binaries builds banger, bangerd and banger-vmm-qemu once per test binary
// (or takes them from $BANGER_BIN_DIR) and returns their directory.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("BANGER_BIN_DIR"); d != "" {
			binDir = d
			return
		}
		dir, err := os.MkdirTemp("", "banger-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		os.Chmod(dir, 0o755)
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/...")
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Daemon is a bangerd under test.
type Daemon struct {
	t          testing.TB
	Dir        string // temp dir holding state, socket, config, logs
	StateDir   string
	Socket     string
	ConfigPath string
	Bin        string
	// Netns is the network namespace the daemon runs in ("" = the host's).
	Netns string
	// CgroupParent is the daemon's own cgroup subtree.
	CgroupParent string

	env    []string
	cmd    *exec.Cmd
	logf   *os.File
	exited chan struct{}
}

// Options shape a daemon under test.
type Options struct {
	// Config is extra TOML appended after state_dir and socket_path.
	Config string
	// Netns runs the daemon inside this existing network namespace. When
	// empty, NewDaemon creates a fresh one for the daemon (and deletes it
	// at cleanup), so bridges, taps, rules and guest traffic never touch
	// the host's own namespace.
	Netns string
	// Env adds environment variables for the daemon.
	Env []string
}

// NewDaemon prepares (but does not start) a daemon in a fresh temp dir. The
// dir is short because unix socket paths are limited to 108 bytes.
func NewDaemon(t testing.TB, opts Options) *Daemon {
	t.Helper()
	bin := Binaries(t)
	dir, err := os.MkdirTemp("/tmp", "bg")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	d := &Daemon{
		t: t, Dir: dir, Bin: bin,
		StateDir:   filepath.Join(dir, "state"),
		Socket:     filepath.Join(dir, "bangerd.sock"),
		ConfigPath: filepath.Join(dir, "bangerd.toml"),
		Netns:      opts.Netns,
	}
	if d.Netns == "" {
		d.Netns = NewNetns(t)
	}
	// Each daemon under test has cgroups of its own: daemons share the
	// host's hierarchy, and one's reconcile must not take another's
	// groups for orphans.
	d.CgroupParent = "bgt-" + filepath.Base(dir)
	cfg := fmt.Sprintf("state_dir = %q\nsocket_path = %q\nlog_level = \"debug\"\ncgroup_parent = %q\n%s\n", d.StateDir, d.Socket, d.CgroupParent, opts.Config)
	if err := os.WriteFile(d.ConfigPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(d.LogPath()); err == nil {
				t.Logf("bangerd log (last 6000 bytes):\n%s", tail(b, 6000))
			}
		}
		if os.Getenv("BANGER_KEEP") == "" {
			os.RemoveAll(dir)
		}
		for _, c := range []string{"", "unified", "cpu", "memory", "pids", "blkio"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, d.CgroupParent))
		}
	})
	d.env = opts.Env
	return d
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// SetEnv replaces the extra environment of the next Start (the crash
// point of the fault-injection tests, for instance).
func (d *Daemon) SetEnv(env ...string) { d.env = env }

// LogPath is where the daemon's stderr goes (appended across restarts).
func (d *Daemon) LogPath() string { return filepath.Join(d.Dir, "bangerd.log") }

// Start runs bangerd and waits until its socket answers.
func (d *Daemon) Start() {
	d.t.Helper()
	if err := d.TryStart(); err != nil {
		d.t.Fatal(err)
	}
}

// TryStart is Start returning the error.
func (d *Daemon) TryStart() error {
	logf, err := os.OpenFile(d.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	argv := []string{filepath.Join(d.Bin, "bangerd"), "--config", d.ConfigPath}
	if d.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", d.Netns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(append(os.Environ(), "PATH="+d.Bin+":"+os.Getenv("PATH")), d.env...)
	// The daemon gets its own process group so a test's Ctrl-C does not
	// hit it twice, and VMMs it starts (own sessions) outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start bangerd: %w", err)
	}
	d.cmd = cmd
	d.logf = logf
	d.exited = make(chan struct{})
	go func() { cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			b, _ := os.ReadFile(d.LogPath())
			return fmt.Errorf("bangerd exited at start: %s\n%s", cmd.ProcessState, tail(b, 3000))
		default:
		}
		r := d.CLI("version")
		if r.Code == 0 && strings.Contains(r.Stdout, "daemon: bangerd") {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("bangerd did not answer on %s within 30s", d.Socket)
}

// Stop sends SIGTERM and waits for a clean exit (SIGKILL after 30 s).
func (d *Daemon) Stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
	d.logf.Close()
}

// Crash kills the daemon with SIGKILL, as a crash would.
func (d *Daemon) Crash() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Kill()
	<-d.exited
	d.cmd = nil
	d.logf.Close()
}

// Exited reports whether the daemon process has ended.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Result is one CLI run.
type Result struct {
	Code   int
	Stdout string
	Stderr string
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// CLI runs banger as root against this daemon.
func (d *Daemon) CLI(args ...string) Result {
	return d.CLIAs(nil, "", args...)
}

// MustCLI runs banger and fails the test on a non-zero exit.
func (d *Daemon) MustCLI(args ...string) Result {
	d.t.Helper()
	r := d.CLI(args...)
	if r.Code != 0 {
		d.t.Fatalf("banger %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// User is another identity to run the CLI as.
type User struct {
	UID, GID uint32
	Groups   []uint32
	Home     string
}

// CLIAs runs banger as user (nil = the test's own identity) with stdin.
func (d *Daemon) CLIAs(u *User, stdin string, args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(d.Bin, "banger"), args...)
	cmd.Env = append(os.Environ(), "BANGER_SOCKET="+d.Socket, "PATH="+d.Bin+":"+os.Getenv("PATH"))
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}}
		cmd.Env = append(cmd.Env, "HOME="+u.Home)
		cmd.Dir = u.Home
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			code = -1
			errb.WriteString(err.Error())
		}
	}
	return Result{Code: code, Stdout: out.String(), Stderr: errb.String()}
}
