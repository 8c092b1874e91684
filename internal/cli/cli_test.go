package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitRemote(t *testing.T) {
	tests := []struct {
		in       string
		vm, path string
		remote   bool
	}{
		{"dev:/root/x", "dev", "/root/x", true},
		{"dev:x", "dev", "x", true},
		{"dev:", "dev", ".", true},
		{"./dev:x", "", "./dev:x", false},
		{"/tmp/a:b", "", "/tmp/a:b", false},
		{"plain.txt", "", "plain.txt", false},
		{":x", "", ":x", false},
	}
	for _, tt := range tests {
		vm, path, remote := splitRemote(tt.in)
		if vm != tt.vm || path != tt.path || remote != tt.remote {
			t.Errorf("splitRemote(%q) = %q, %q, %v; want %q, %q, %v", tt.in, vm, path, remote, tt.vm, tt.path, tt.remote)
		}
	}
}

func TestRemoteCommandQuoting(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"uname -a"}, "uname -a"},
		{[]string{"uname", "-a"}, "uname -a"},
		{[]string{"sh", "-c", "echo it's"}, `sh -c 'echo it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"ls", "/root/a b"}, "ls '/root/a b'"},
	}
	for _, tt := range tests {
		if got := remoteCommand(tt.args); got != tt.want {
			t.Errorf("remoteCommand(%q) = %q; want %q", tt.args, got, tt.want)
		}
	}
}

func TestParseFlagsValues(t *testing.T) {
	if m, err := parseMemory("2G"); err != nil || m != 2048 {
		t.Errorf("parseMemory(2G) = %d, %v", m, err)
	}
	if m, err := parseMemory("512"); err != nil || m != 512 {
		t.Errorf("parseMemory(512) = %d, %v", m, err)
	}
	for _, bad := range []string{"64M", "0", "1T", "x"} {
		if _, err := parseMemory(bad); err == nil {
			t.Errorf("parseMemory(%q) accepted", bad)
		}
	}
	if s, err := parseAutoStop("2h"); err != nil || s != 7200 {
		t.Errorf("parseAutoStop(2h) = %d, %v", s, err)
	}
	if s, err := parseAutoStop("never"); err != nil || s != 0 {
		t.Errorf("parseAutoStop(never) = %d, %v", s, err)
	}
	if _, err := parseAutoStop("10s"); err == nil {
		t.Error("parseAutoStop(10s) accepted")
	}
}

func TestUpdateKnownHosts(t *testing.T) {
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := updateKnownHosts(p, "banger-a", "ssh-ed25519 AAAA1"); err != nil {
		t.Fatal(err)
	}
	updateKnownHosts(p, "banger-b", "ssh-ed25519 BBBB")
	updateKnownHosts(p, "banger-a", "ssh-ed25519 AAAA2")
	b, _ := os.ReadFile(p)
	want := "banger-b ssh-ed25519 BBBB\nbanger-a ssh-ed25519 AAAA2\n"
	if string(b) != want {
		t.Errorf("known_hosts = %q; want %q", b, want)
	}
}

// TestUsageErrorsWithoutDaemon runs the CLI in-process: bad input is
// refused before any request (there is no daemon at the socket).
func TestUsageErrorsWithoutDaemon(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "create", "Bad_Name"}, 2, "DNS label"},
		{[]string{"vm", "create", "ok", "--disk-size", "0"}, 2, "--disk-size: size must be positive"},
		{[]string{"vm", "create", "ok", "--vcpus", "0"}, 2, "between 1 and 32"},
		{[]string{"vm", "create"}, 2, "needs a VM NAME"},
		{[]string{"vm", "frobnicate"}, 2, "unknown command"},
		{[]string{"vm", "set", "x", "--nat", "maybe"}, 2, "use on or off"},
		{[]string{"vm", "set", "x", "--egress", "closed"}, 2, "--egress: egress \"closed\": unknown mode"},
		{[]string{"vm", "set", "x", "--egress", "allow=10.0.0.1/8"}, 2, "did you mean 10.0.0.0/8"},
		{[]string{"vm", "create", "ok", "--egress", "allow="}, 2, "allow needs a list"},
		{[]string{"vm", "create", "ok", "--egress", "allow=*.*.com"}, 2, "not a domain name"},
		{[]string{"vm", "create", "ok", "--egress", "allow=::/0"}, 2, "IPv6 is not supported"},
		{[]string{"cp", "a", "b"}, 2, "exactly one side"},
		{[]string{"image", "warm"}, 2, "needs an image NAME"},
		{[]string{"image", "warm", "base", "--rm", "--memory", "1G"}, 2, "--rm takes no --vcpus or --memory"},
		{[]string{"image", "warm", "base", "--vcpus", "99"}, 2, "--vcpus"},
		{[]string{"image", "warm", "base", "--memory", "lots"}, 2, "--memory"},
		{[]string{"vm", "ls"}, 1, "cannot reach bangerd"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		app := &App{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
			switch k {
			case EnvSocket:
				return filepath.Join(t.TempDir(), "none.sock")
			case "HOME":
				return t.TempDir()
			}
			return ""
		}}
		code := app.Run(context.Background(), tt.args)
		if code != tt.code || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("banger %v: exit %d, stderr %q; want exit %d mentioning %q", tt.args, code, errb.String(), tt.code, tt.want)
		}
	}
}
