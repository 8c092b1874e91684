package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
