package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/qemuvmm"
)

// runCapture runs the command in-process and returns its exit code,
// stdout and stderr.
func runCapture(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	stdout, _ := os.Create(filepath.Join(dir, "stdout"))
	stderr, _ := os.Create(filepath.Join(dir, "stderr"))
	defer stdout.Close()
	defer stderr.Close()
	code := run(args, stdout, stderr, map[int]bool{})
	out, _ := os.ReadFile(stdout.Name())
	errOut, _ := os.ReadFile(stderr.Name())
	return code, string(out), string(errOut)
}

func TestVersion(t *testing.T) {
	code, out, _ := runCapture(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "banger-vmm-qemu 0.1.0 (Firecracker API 1.16.1") {
		t.Errorf("got %d %q", code, out)
	}
}

func TestRefusesExistingSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	os.WriteFile(sock, nil, 0o600)
	code, _, errOut := runCapture(t, "--api-sock", sock, "--id", "vm1", "--accel", "tcg")
	if code != 1 || !strings.Contains(errOut, "Failed to open the API socket at: "+sock) {
		t.Errorf("got %d %q, want 1 and Firecracker's message", code, errOut)
	}
	// The file that was there is left alone.
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("socket file: %v", err)
	}
}

func TestRefusesBadFlags(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	tests := [][]string{
		{"--api-sock", sock, "--accel", "hvf"},
		{"--api-sock", sock, "--id", "bad id"},
		{"--api-sock", sock, "--id", strings.Repeat("a", 65)},
		{"--api-sock", sock, "extra"},
		{"--no-such-flag"},
	}
	for _, args := range tests {
		if code, _, _ := runCapture(t, args...); code != 2 {
			t.Errorf("%q: got exit %d, want 2", args, code)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("%q: created the socket", args)
		}
	}
}

func TestTapFdFlag(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	for _, bad := range []string{"tap0", "tap0=", "tap0=x", "tap0=2", "=4", "tap/0=4", "a-very-long-tap-name=4"} {
		code, _, errOut := runCapture(t, "--api-sock", sock, "--accel", "tcg", "--tap-fd", bad)
		if code != 2 || !strings.Contains(errOut, "tap-fd") {
			t.Errorf("--tap-fd %s: got %d %q, want 2", bad, code, errOut)
		}
	}
	code, _, errOut := runCapture(t, "--api-sock", sock, "--accel", "tcg", "--tap-fd", "tap0=4", "--tap-fd", "tap0=5")
	if code != 2 || !strings.Contains(errOut, "given twice") {
		t.Errorf("twice: got %d %q", code, errOut)
	}
	// A descriptor that was not inherited, or is not a tap, is refused
	// before the socket is created.
	code, _, errOut = runCapture(t, "--api-sock", sock, "--accel", "tcg", "--tap-fd", "tap0=77")
	if code != 2 || !strings.Contains(errOut, "was not inherited") {
		t.Errorf("not inherited: got %d %q", code, errOut)
	}
	f, _ := os.Open(os.DevNull)
	defer f.Close()
	dir := t.TempDir()
	stdout, _ := os.Create(filepath.Join(dir, "o"))
	stderr, _ := os.Create(filepath.Join(dir, "e"))
	code = run([]string{"--api-sock", sock, "--accel", "tcg", "--tap-fd", fmt.Sprintf("tap0=%d", f.Fd())}, stdout, stderr, map[int]bool{int(f.Fd()): true})
	errRaw, _ := os.ReadFile(stderr.Name())
	if code != 2 || !strings.Contains(string(errRaw), "not a tap descriptor") {
		t.Errorf("not a tap: got %d %q", code, errRaw)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the socket was created")
	}
}

func TestProbeAccelExplicit(t *testing.T) {
	code, out, errOut := runCapture(t, "--probe-accel", "--accel", "tcg", "--accel-cache", t.TempDir())
	var got map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got["accel"] != "tcg" {
		t.Errorf("got %d %q %q", code, out, errOut)
	}
}

// TestMain lets the test binary run as banger-vmm-qemu itself when
// BANGER_VMM_MAIN=1, for tests that need a separate process.
func TestMain(m *testing.M) {
	if os.Getenv("BANGER_VMM_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// startVMM runs banger-vmm-qemu (this test binary) with args.
func startVMM(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	self, _ := os.Executable()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "BANGER_VMM_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, &out
}

func apiClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func waitSocket(t *testing.T, sock string, out *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := apiClient(sock).Get("http://localhost/"); err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API never answered:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFirecrackerFlags starts banger-vmm-qemu the way Firecracker clients
// start firecracker, with every one of its flags, the logger and metrics
// on FIFOs nobody reads: the API answers, the payload limit is the one
// given, and SIGTERM ends it at once.
func TestFirecrackerFlags(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "fc.sock")
	logFIFO, metricsFIFO := filepath.Join(dir, "log.fifo"), filepath.Join(dir, "metrics.fifo")
	for _, p := range []string{logFIFO, metricsFIFO} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd, out := startVMM(t, "--api-sock", sock, "--id", "sdk-vm", "--accel", "tcg", "--accel-cache", dir,
		"--no-seccomp", "--level", "Debug", "--log-path", logFIFO, "--show-level", "--show-log-origin",
		"--metrics-path", metricsFIFO, "--boot-timer", "--http-api-max-payload-size", "100000",
		"--parent-cpu-time-us", "5", "--start-time-us", "6", "--start-time-cpu-us", "7",
		"--mmds-size-limit", "10", "--metadata", "/nonexistent.json", "--enable-pci", "--module", "api_server")
	waitSocket(t, sock, out)
	c := apiClient(sock)
	resp, err := c.Get("http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]string
	json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if info["id"] != "sdk-vm" || info["state"] != "Not started" {
		t.Errorf("GET /: %v", info)
	}
	// 60000 bytes is over Firecracker's default limit, under the one given.
	body := fmt.Sprintf(`{"kernel_image_path":"/nonexistent/%s"}`, strings.Repeat("k", 60000))
	req, _ := http.NewRequest("PUT", "http://localhost/boot-source", strings.NewReader(body))
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), "kernel file cannot be opened") {
		t.Errorf("large body: %d %s, want the kernel refused, not the size", resp.StatusCode, raw)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) || time.Since(start) > 3*time.Second {
		t.Errorf("after SIGTERM: %v after %v, want exit %d at once\n%s", err, time.Since(start), 128+int(syscall.SIGTERM), out)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the API socket was left behind")
	}
	for _, want := range []string{"--no-seccomp: QEMU runs without its seccomp sandbox", "flag=--boot-timer", "flag=--metadata"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestFirecrackerFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	for _, args := range [][]string{
		{"--api-sock", sock, "--no-api"},
		{"--api-sock", sock, "--no-seccomp", "--seccomp-filter", "/f.bpf"},
		{"--api-sock", sock, "--http-api-max-payload-size", "0"},
		{"--api-sock", sock, "--level"},
	} {
		if code, _, _ := runCapture(t, args...); code != 2 {
			t.Errorf("%q: got exit %d, want 2", args, code)
		}
	}
	code, out, _ := runCapture(t, "--snapshot-version")
	if code != 0 || out != fmt.Sprintf("v%d.0.0\n", qemuvmm.SnapshotFormat) {
		t.Errorf("--snapshot-version: %d %q", code, out)
	}
	notSnap := filepath.Join(dir, "x")
	os.WriteFile(notSnap, []byte("hello"), 0o600)
	if code, _, errOut := runCapture(t, "--describe-snapshot", notSnap); code != 1 || !strings.Contains(errOut, "not a banger-vmm-qemu snapshot") {
		t.Errorf("--describe-snapshot: %d %q", code, errOut)
	}
	snap := filepath.Join(dir, "s")
	os.WriteFile(snap, []byte("banger-vmm-qemu-snapshot v7\n{}"), 0o600)
	if code, out, _ := runCapture(t, "--describe-snapshot", snap); code != 0 || out != "v7.0.0\n" {
		t.Errorf("--describe-snapshot v7: %d %q", code, out)
	}
}

// TestConfigFileBootFailsClearly boots from a config file whose kernel is
// missing, without the API: the VMM exits 1 and says why.
func TestConfigFileBootFailsClearly(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, []byte(`{"boot-source":{"kernel_image_path":"/nonexistent/vmlinux"},"machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":true}}`), 0o600)
	code, _, errOut := runCapture(t, "--api-sock", filepath.Join(dir, "api.sock"), "--no-api", "--config-file", cfg, "--accel", "tcg")
	if code != 1 || !strings.Contains(errOut, "PUT /boot-source") || !strings.Contains(errOut, "kernel file cannot be opened") {
		t.Errorf("got %d %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "api.sock")); err == nil {
		t.Error("--no-api created the socket")
	}
}
