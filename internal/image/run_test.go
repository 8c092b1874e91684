package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testutil"
)

// processGone reports whether pid has exited (or is a zombie waiting for
// its reaper), polling for a while.
func processGone(pid int) bool {
	for i := 0; i < 50; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func TestProcRunnerCancelKillsGroup(t *testing.T) {
	dir := t.TempDir()
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// The shell creates the file before it writes the PID: wait
		// for the whole line.
		for i := 0; i < 100; i++ {
			if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	err = procRunner{}.RunStep(ctx, log, step{Argv: []string{"sh", "-c", "sleep 60 & echo $! >" + pidFile + "; wait"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RunStep = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("cancel took %s", d)
	}
	b, _ := os.ReadFile(pidFile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %q", b)
	}
	if !processGone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("grandchild %d survived the cancel", pid)
	}
}

func TestProcRunnerFailure(t *testing.T) {
	log, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	err = procRunner{}.RunStep(context.Background(), log, step{Argv: []string{"sh", "-c", "echo to-the-log; exit 3"}, Env: []string{"X=1"}})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("RunStep = %v, want exit status 3", err)
	}
	b, _ := os.ReadFile(log.Name())
	if !strings.Contains(string(b), "+ sh -c") || !strings.Contains(string(b), "to-the-log") {
		t.Errorf("log = %q, want the command and its output", b)
	}
}

// TestProcRunnerIsolate checks the chroot steps' guarantees: a process
// that escapes the process group (setsid) dies with the step, and a mount
// made by the step never shows in the host's mount table.
func TestProcRunnerIsolate(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	marker := "3600." + randomSuffix()[:6]
	script := fmt.Sprintf("mount -t tmpfs banger-test %s && setsid sleep %s </dev/null >/dev/null 2>&1 & sleep 0.5; grep -q ' %s ' /proc/self/mountinfo", mnt, marker, mnt)
	if err := (procRunner{}).RunStep(context.Background(), log, step{Argv: []string{"sh", "-c", script}, Isolate: true}); err != nil {
		b, _ := os.ReadFile(log.Name())
		t.Fatalf("RunStep: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mnt+" ") {
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		t.Errorf("the step's mount on %s leaked into the host", mnt)
	}
	out, _ := exec.Command("pgrep", "-f", "sleep "+marker).Output()
	if pids := strings.Fields(string(out)); len(pids) > 0 {
		for _, p := range pids {
			pid, _ := strconv.Atoi(p)
			if !processGone(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("detached process %d outlived its isolated step", pid)
			}
		}
	}
}

func TestRemoveTreeUnmounts(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	mnt := filepath.Join(tree, "a b", "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("banger-test", mnt, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "banger-test") && strings.Contains(string(b), `a\040b`) {
		t.Errorf("mount left behind")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/a\040b`:  "/tmp/a b",
		`/x\011y\134z`: "/x\ty\\z",
		`/plain`:       "/plain",
		`/trail\04`:    `/trail\04`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLogCounter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &logCounter{path: p, prefix: []byte("  CC ")}
	fmt.Fprintf(f, "  CC      a.o\n  LD      b\n  CC      c")
	if n, last := c.update(); n != 1 || last != "LD      b" {
		t.Errorf("update = %d, %q", n, last)
	}
	fmt.Fprintf(f, ".o\n  CC      d.o\n")
	if n, last := c.update(); n != 3 || last != "CC      d.o" {
		t.Errorf("update = %d, %q; want the split line counted once", n, last)
	}
}

// TestProcRunnerSandbox runs sandboxArgv's script in a busybox tree as
// an SSH install does: root inside its user namespace, with /dev and
// /proc mounted in the tree and chrooted there, the sandbox's base id on
// the host (what it creates belongs to no host user), and none of its
// mounts left in the host's table.
func TestProcRunnerSandbox(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "busybox", "unshare", "chroot", "mount")
	busybox, _ := exec.LookPath("busybox")
	dir := t.TempDir()
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"", "bin", "dev", "proc", "tmp"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	if err := copyFileAtomic(busybox, filepath.Join(root, "bin", "sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := shiftOwners(root, 0, sandboxUIDBase); err != nil {
		t.Fatal(err)
	}
	rd, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	script := `[ -c /dev/null ] && [ -r /proc/1/status ] && [ ! -e /dev/sda ] && echo ok > /tmp/made`
	if err := (procRunner{}).RunStep(context.Background(), log, step{Argv: sandboxArgv(script), Isolate: true, Sandbox: true, Files: []*os.File{rd}}); err != nil {
		b, _ := os.ReadFile(log.Name())
		t.Fatalf("RunStep: %v\n%s", err, b)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(root, "tmp", "made"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != sandboxUIDBase || st.Gid != sandboxUIDBase {
		t.Errorf("the sandbox's file belongs to %d:%d on the host, want %d", st.Uid, st.Gid, sandboxUIDBase)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), root) {
		t.Errorf("the sandbox's mounts leaked into the host")
	}
}
