package main

import (
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
	code := run(args, stdout, stderr)
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
