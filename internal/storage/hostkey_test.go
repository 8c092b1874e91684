package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/testutil"
)

func TestHostKeyScript(t *testing.T) {
	got := hostKeyScript("/proc/self/fd/4", "/proc/self/fd/5")
	for _, want := range []string{
		"cd /etc/ssh\n",
		"rm ssh_host_ecdsa_key\n",
		"rm ssh_host_rsa_key.pub\n",
		"write /proc/self/fd/4 ssh_host_ed25519_key\nsif ssh_host_ed25519_key mode 0100600\nsif ssh_host_ed25519_key uid 0\nsif ssh_host_ed25519_key gid 0\n",
		"write /proc/self/fd/5 ssh_host_ed25519_key.pub\nsif ssh_host_ed25519_key.pub mode 0100644\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("script lacks %q:\n%s", want, got)
		}
	}
}

// TestInstallHostKeyFake checks the commands run sandboxed as the VM's
// uid, and that a disk without the key afterwards is an error.
func TestInstallHostKeyFake(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "system.img")
	os.WriteFile(disk, make([]byte, 4096), 0o600)
	const pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8kCJ0rz2lzdyOjl6m6zFLs1k4Ry3cp4EK8Nhfb7ksH"
	var readBack string
	f := &hostexec.Fake{Handler: func(argv []string, stdin string) (string, error) {
		if argv[0] != "debugfs" {
			return "", hostexec.ErrUnexpected
		}
		if argv[1] == "-w" {
			if !strings.Contains(stdin, "write ") {
				t.Errorf("debugfs script: %q", stdin)
			}
			return "", nil
		}
		return readBack, nil
	}}
	m := New(f, nil, Options{})
	key := HostKey{Private: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"), Public: pub}
	if err := m.InstallHostKey(context.Background(), disk, 1500000002, key); err == nil {
		t.Error("a disk without the key afterwards was accepted")
	}
	readBack = pub + "\n"
	if err := m.InstallHostKey(context.Background(), disk, 1500000002, key); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.Calls() {
		if !strings.HasPrefix(c, "[as 1500000002:1500000002, fd 3="+disk) || !strings.Contains(c, "debugfs ") {
			t.Errorf("not run as the VM's uid on the disk: %s", c)
		}
	}
	if len(f.Unexpected()) > 0 {
		t.Errorf("unexpected: %v", f.Unexpected())
	}
}

// TestInstallHostKeyReal writes a key into a real ext4 image as an
// unprivileged uid, from a root-owned 0600 disk file passed as a
// descriptor, and reads it back with debugfs.
func TestInstallHostKeyReal(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	disk := filepath.Join(dir, "system.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(disk, 32<<20)
	for _, c := range [][]string{
		{"mkfs.ext4", "-q", "-F", disk},
		{"debugfs", "-w", "-R", "mkdir /etc", disk},
		{"debugfs", "-w", "-R", "mkdir /etc/ssh", disk},
		{"debugfs", "-w", "-R", "write /etc/hostname /etc/ssh/ssh_host_ecdsa_key", disk},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	const uid = 1500000077
	os.Chown(disk, uid, uid)
	m := New(hostexec.Real{}, nil, Options{})
	key := HostKey{Private: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n"), Public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8kCJ0rz2lzdyOjl6m6zFLs1k4Ry3cp4EK8Nhfb7ksH"}
	if err := m.InstallHostKey(context.Background(), disk, uid, key); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-R", "cat /etc/ssh/ssh_host_ed25519_key", disk).Output()
	if err != nil || string(out) != string(key.Private) {
		t.Errorf("private key on disk = %q, %v", out, err)
	}
	stat, _ := exec.Command("debugfs", "-R", "stat /etc/ssh/ssh_host_ed25519_key", disk).Output()
	if !strings.Contains(string(stat), "Mode:  0600") || !strings.Contains(string(stat), "User:     0") {
		t.Errorf("private key inode:\n%s", stat)
	}
	if ls, _ := exec.Command("debugfs", "-R", "ls -l /etc/ssh", disk).Output(); strings.Contains(string(ls), "ecdsa") {
		t.Errorf("the image's other host key is still there:\n%s", ls)
	}
	// A disk whose filesystem is not ext4 is refused with a clear error.
	junk := filepath.Join(dir, "junk.img")
	os.WriteFile(junk, make([]byte, 1<<20), 0o600)
	os.Chown(junk, uid, uid)
	if err := m.InstallHostKey(context.Background(), junk, uid, key); err == nil || !strings.Contains(err.Error(), "ext4") {
		t.Errorf("non-ext4 disk: %v", err)
	}
}
