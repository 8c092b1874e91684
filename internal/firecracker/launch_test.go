package firecracker

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as a small Firecracker-API VMM when
// BANGER_FAKE_VMM is set, so Launch, WaitAPI, FindPID and Stop can be
// tested on real processes without QEMU or root. The integration tests
// use the real banger-vmm-qemu.
func TestMain(m *testing.M) {
	if mode := os.Getenv("BANGER_FAKE_VMM"); mode != "" {
		os.Exit(fakeVMM(mode, os.Args[1:]))
	}
	code := m.Run()
	removeVMMBuild()
	os.Exit(code)
}

// fakeVMM serves GET / and PUT /actions on --api-sock. Modes: "clean"
// exits 0 after SendCtrlAltDel, as a guest reboot ends Firecracker;
// "stubborn" ignores it; "die" exits 3 at once.
func fakeVMM(mode string, args []string) int {
	fs := flag.NewFlagSet("fake-vmm", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "")
	id := fs.String("id", "", "")
	var taps []string
	fs.Func("tap-fd", "", func(v string) error { taps = append(taps, v); return nil })
	if err := fs.Parse(args); err != nil {
		return 2
	}
	stdin, _ := os.Readlink("/proc/self/fd/0")
	fmt.Printf("fake-vmm up id=%s stdin=%s sid-is-pid=%v\n", *id, stdin, mustGetsid() == os.Getpid())
	fd3, _ := os.Readlink("/proc/self/fd/3")
	fd4, _ := os.Readlink("/proc/self/fd/4")
	groups, _ := os.Getgroups()
	fmt.Printf("fake-vmm creds uid=%d gid=%d groups=%v %s fd3=%s fd4=%s taps=%v\n",
		os.Getuid(), os.Getgid(), groups, capEff(), fd3, fd4, taps)
	fmt.Fprintln(os.Stderr, "fake-vmm stderr line")
	if mode == "die" {
		return 3
	}
	ln, err := net.Listen("unix", *sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	exit := make(chan int, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.Method == "GET" && r.URL.Path == "/":
			fmt.Fprintf(w, `{"app_name":"fake","id":%q,"state":"Running","vmm_version":"0"}`, *id)
		case r.Method == "PUT" && r.URL.Path == "/actions" && strings.Contains(string(body), "SendCtrlAltDel"):
			w.WriteHeader(http.StatusNoContent)
			if mode == "clean" {
				exit <- 0
			}
		default:
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"fault_message":"fake vmm: unsupported"}`)
		}
	})
	go http.Serve(ln, h)
	code := <-exit
	time.Sleep(20 * time.Millisecond) // let the reply go out
	os.Remove(*sock)
	return code
}

// capEff returns the CapEff line of the process's status.
func capEff() string {
	raw, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "CapEff:") {
			return strings.Join(strings.Fields(l), "=")
		}
	}
	return "CapEff=?"
}

func mustGetsid() int {
	sid, _ := unix.Getsid(0)
	return sid
}

func launchFake(t *testing.T, mode string) (*Process, string, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	logPath := filepath.Join(dir, "vmm.log")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Launch(LaunchConfig{
		Bin: self, APISock: sock, ID: "vm-" + mode, LogPath: logPath,
		Env: append(os.Environ(), "BANGER_FAKE_VMM="+mode),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(p.PID, syscall.SIGKILL)
		<-p.Done()
	})
	return p, sock, logPath
}

func TestLaunchWaitFindStopClean(t *testing.T) {
	p, sock, logPath := launchFake(t, "clean")
	// A stale socket file is what a crashed VMM leaves; Launch removed
	// any such file, and the VMM's own bind must succeed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitAPI(ctx, sock); err != nil {
		t.Fatal(err)
	}
	pid, err := FindPID(sock)
	if err != nil || pid != p.PID {
		t.Fatalf("FindPID: got %d, %v; want %d", pid, err, p.PID)
	}
	if !Alive(p.PID) {
		t.Fatal("Alive = false for a running VMM")
	}
	res, err := Stop(ctx, newCheckedClient(t, sock), p.PID, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Clean || res.Killed || res.CtrlAltDelErr != nil {
		t.Errorf("got %+v, want a clean stop", res)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the VMM exited")
	}
	st, err := p.ExitState()
	if err != nil || st == nil || st.ExitCode() != 0 {
		t.Errorf("exit state: got %v, %v; want exit 0", st, err)
	}
	if Alive(p.PID) {
		t.Error("Alive = true after exit (zombie?)")
	}
	logText, _ := os.ReadFile(logPath)
	for _, want := range []string{"fake-vmm up id=vm-clean stdin=/dev/null sid-is-pid=true", "fake-vmm stderr line"} {
		if !strings.Contains(string(logText), want) {
			t.Errorf("log lacks %q:\n%s", want, logText)
		}
	}
}

func TestLaunchRemovesStaleSocketAndAppendsLog(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	logPath := filepath.Join(dir, "vmm.log")
	os.WriteFile(sock, nil, 0o600)
	os.WriteFile(logPath, []byte("earlier run\n"), 0o600)
	self, _ := os.Executable()
	p, err := Launch(LaunchConfig{Bin: self, APISock: sock, ID: "vm1", LogPath: logPath, Env: append(os.Environ(), "BANGER_FAKE_VMM=clean")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(p.PID, syscall.SIGKILL); <-p.Done() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitAPI(ctx, sock); err != nil {
		t.Fatal(err)
	}
	logText, _ := os.ReadFile(logPath)
	if !strings.HasPrefix(string(logText), "earlier run\nfake-vmm up") {
		t.Errorf("log was not appended to:\n%s", logText)
	}
}

func TestStopKillsStubbornVMM(t *testing.T) {
	p, sock, _ := launchFake(t, "stubborn")
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.WaitAPI(wctx, sock); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := Stop(ctx, newCheckedClient(t, sock), p.PID, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Clean || !res.Killed {
		t.Errorf("got %+v, want Killed", res)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("killed after %v, before the timeout", d)
	}
	<-p.Done()
	if st, _ := p.ExitState(); st == nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("exit state %v, want killed by SIGKILL", st)
	}
}

// TestStopWhenNotParent stops a VMM that is not our child, as after a
// daemon restart: a shell starts it in the background and exits, so the
// VMM is reparented and we can only find it by its socket.
func TestStopWhenNotParent(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	self, _ := os.Executable()
	cmd := exec.Command("/bin/sh", "-c", `"$0" --api-sock "$1" --id orphan >/dev/null 2>&1 </dev/null & echo $!`, self, sock)
	cmd.Env = append(os.Environ(), "BANGER_FAKE_VMM=clean")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	shPID, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	t.Cleanup(func() { syscall.Kill(shPID, syscall.SIGKILL) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitAPI(ctx, sock); err != nil {
		t.Fatal(err)
	}
	pid, err := FindPID(sock)
	if err != nil || pid != shPID {
		t.Fatalf("FindPID: got %d, %v; want %d", pid, err, shPID)
	}
	res, err := Stop(ctx, newCheckedClient(t, sock), pid, 5*time.Second)
	if err != nil || !res.Clean {
		t.Fatalf("got %+v, %v; want clean", res, err)
	}
	if Alive(pid) {
		t.Error("still alive after a clean stop")
	}
	// Stopping what is already gone is not an error.
	res, err = Stop(ctx, newCheckedClient(t, sock), pid, time.Second)
	if err != nil || !res.Clean {
		t.Errorf("second stop: got %+v, %v; want clean", res, err)
	}
}

func TestWaitAPIReportsEarlyExit(t *testing.T) {
	p, sock, _ := launchFake(t, "die")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := p.WaitAPI(ctx, sock)
	if err == nil || !strings.Contains(err.Error(), "exited before its api answered") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("got %v, want an early-exit error with the status", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("WaitAPI waited for the timeout instead of the exit")
	}
}

func TestLaunchRefusesBadConfig(t *testing.T) {
	tests := []LaunchConfig{
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "bad id", LogPath: "/tmp/x.log"},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: strings.Repeat("a", 65), LogPath: "/tmp/x.log"},
		{Bin: "", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log"},
		{Bin: "/bin/true", APISock: "", ID: "a", LogPath: "/tmp/x.log"},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log", ExtraFiles: []*os.File{nil}},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log", ExtraFiles: []*os.File{os.Stdin}, TapFDs: map[string]int{"tap0": 4}},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log", ExtraFiles: []*os.File{os.Stdin}, TapFDs: map[string]int{"tap0": 2}},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log", ExtraFiles: []*os.File{os.Stdin}, TapFDs: map[string]int{"tap/0": 3}},
		{Bin: "/bin/true", APISock: "/tmp/x.sock", ID: "a", LogPath: "/tmp/x.log", ExtraFiles: []*os.File{os.Stdin}, TapFDs: map[string]int{"a-very-long-tap-name": 3}},
	}
	for _, c := range tests {
		if _, err := Launch(c); err == nil {
			t.Errorf("Launch(%+v) succeeded", c)
		}
	}
}

func TestTrimLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.log")
	// A writer that keeps its O_APPEND descriptor across the trim, as the
	// VMM does.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	io.WriteString(w, strings.Repeat("x", 100))
	trimmed, err := TrimLog(path, 200)
	if err != nil || trimmed {
		t.Fatalf("under the limit: got %v, %v; want no trim", trimmed, err)
	}
	io.WriteString(w, strings.Repeat("y", 150))
	trimmed, err = TrimLog(path, 200)
	if err != nil || !trimmed {
		t.Fatalf("over the limit: got %v, %v; want a trim", trimmed, err)
	}
	io.WriteString(w, "after\n")
	got, _ := os.ReadFile(path)
	if string(got) != "after\n" {
		t.Errorf("log after trim: got %q, want %q", got, "after\n")
	}
	old, _ := os.ReadFile(path + ".1")
	if want := strings.Repeat("x", 100) + strings.Repeat("y", 150); string(old) != want {
		t.Errorf("rotated log: got %d bytes, want the %d bytes before the trim", len(old), len(want))
	}
	if trimmed, err := TrimLog(filepath.Join(dir, "missing.log"), 1); err != nil || trimmed {
		t.Errorf("missing log: got %v, %v", trimmed, err)
	}
}

func TestLaunchArgs(t *testing.T) {
	c := LaunchConfig{
		APISock: "/v/vmm/api.sock", ID: "vm1", ExtraArgs: []string{"--accel", "tcg"},
		TapFDs: map[string]int{"tap-fc-2": 6, "tap-fc-10": 5},
	}
	want := []string{"--api-sock", "/v/vmm/api.sock", "--id", "vm1", "--tap-fd", "tap-fc-10=5", "--tap-fd", "tap-fc-2=6", "--accel", "tcg"}
	if got := c.Args(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := FDPath(ExtraFileFD(2)), "/dev/fd/5"; got != want {
		t.Errorf("FDPath: got %q, want %q", got, want)
	}
}

// TestLaunchPassesFilesAndCredentials checks what the VMM inherits: the
// extra files at descriptors 3 and 4, the --tap-fd flag, and, when run as
// root, the unprivileged uid and gid with no groups and no capabilities.
func TestLaunchPassesFilesAndCredentials(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "disk-a")
	b := filepath.Join(dir, "disk-b")
	os.WriteFile(a, nil, 0o600)
	os.WriteFile(b, nil, 0o600)
	fa, _ := os.Open(a)
	fb, _ := os.Open(b)
	defer fa.Close()
	defer fb.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := LaunchConfig{
		Bin: self, APISock: filepath.Join(dir, "api.sock"), ID: "creds", LogPath: filepath.Join(dir, "vmm.log"),
		Env: append(os.Environ(), "BANGER_FAKE_VMM=clean"), ExtraFiles: []*os.File{fa, fb},
		TapFDs: map[string]int{"tap0": 4},
	}
	const uid = 1500000002
	root := os.Geteuid() == 0
	if root {
		// The unprivileged VMM must reach its binary and write its socket.
		bindir := t.TempDir()
		for _, d := range []string{bindir, filepath.Dir(bindir)} {
			os.Chmod(d, 0o755)
		}
		bin := filepath.Join(bindir, "fake-vmm")
		data, _ := os.ReadFile(self)
		os.WriteFile(bin, data, 0o755)
		vmmDir := filepath.Join(dir, "vmm")
		os.Mkdir(vmmDir, 0o700)
		os.Chown(vmmDir, uid, uid)
		os.Chmod(dir, 0o711)
		os.Chmod(filepath.Dir(dir), 0o711)
		cfg.Bin, cfg.APISock, cfg.UID, cfg.GID = bin, filepath.Join(vmmDir, "api.sock"), uid, uid
	}
	p, err := Launch(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(p.PID, syscall.SIGKILL); <-p.Done() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitAPI(ctx, cfg.APISock); err != nil {
		raw, _ := os.ReadFile(cfg.LogPath)
		t.Fatalf("%v\n%s", err, raw)
	}
	raw, _ := os.ReadFile(cfg.LogPath)
	want := fmt.Sprintf("fd3=%s fd4=%s taps=[tap0=4]", a, b)
	if root {
		want = fmt.Sprintf("fake-vmm creds uid=%d gid=%d groups=[] CapEff:=0000000000000000 ", uid, uid) + want
	}
	if !strings.Contains(string(raw), want) {
		t.Errorf("vmm log lacks %q:\n%s", want, raw)
	}
	if root {
		if st, err := os.Stat(cfg.APISock); err != nil || st.Sys().(*syscall.Stat_t).Uid != uid {
			t.Errorf("api socket: %v, %v; want it owned by %d", st, err, uid)
		}
	}
}
