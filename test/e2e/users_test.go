package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testutil"
	"banger/test/harness"
)

// TestSwappedImageFilesBootTheOriginal is the review's attack on a real
// guest: mallory registers an image from her files, then replaces them
// with links to root's secrets (the kernel to /etc/shadow, the rootfs to
// a disk only root may read, the work seed to the daemon's private SSH
// key). Her VM boots what she registered; none of the targets reaches a
// guest.
func TestSwappedImageFilesBootTheOriginal(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "useradd", "groupadd", "cp", "mkfs.ext4")
	group, _ := harness.NewGroup(t, "bgs")
	d := harness.NewE2EDaemon(t, a, fmt.Sprintf("socket_group = %q\n", group))
	mallory := harness.NewAccount(t, "bgml", group)

	// Her copies of the test image, sparse, owned by her.
	files := map[string]string{}
	for _, f := range []string{"vmlinux", "rootfs.ext4", "work-seed.ext4"} {
		dst := filepath.Join(mallory.Home, f)
		if out, err := exec.Command("cp", "--sparse=always", filepath.Join(a.ImageDir, f), dst).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", f, err, out)
		}
		mallory.Own(t, dst)
		files[f] = dst
	}
	r := d.CLIAs(&mallory.User, "", "image", "register", "mine", "--kernel", files["vmlinux"], "--rootfs", files["rootfs.ext4"], "--work-seed", files["work-seed.ext4"])
	if r.Code != 0 {
		t.Fatalf("register: %s", r)
	}

	// A disk only root may read, with a marker: if it booted, the guest
	// would see /PWNED.
	secretDir := filepath.Join(d.Dir, "secret")
	os.MkdirAll(filepath.Join(secretDir, "tree"), 0o700)
	os.WriteFile(filepath.Join(secretDir, "tree", "PWNED"), []byte("root's disk\n"), 0o600)
	secretDisk := filepath.Join(secretDir, "disk.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", filepath.Join(secretDir, "tree"), secretDisk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	os.Chmod(secretDisk, 0o600)
	for f, target := range map[string]string{"vmlinux": "/etc/shadow", "rootfs.ext4": secretDisk, "work-seed.ext4": a.SSHKey} {
		os.Remove(files[f])
		if err := os.Symlink(target, files[f]); err != nil {
			t.Fatal(err)
		}
		mallory.Own(t, files[f])
	}

	r = d.CLIAs(&mallory.User, "", "vm", "create", "mv", "--image", "mine", "--memory", "512M")
	if r.Code != 0 {
		t.Fatalf("create after the swap: %s", r)
	}
	r = d.CLIAs(&mallory.User, "", "exec", "mv", "--", "sh", "-c", "ls /PWNED /root/PWNED 2>&1; grep -rl 'PRIVATE KEY' /root 2>/dev/null || echo no-private-key; . /etc/os-release && echo ID=$ID; findmnt -n -o FSTYPE /root")
	if r.Code != 0 {
		t.Fatalf("exec: %s", r)
	}
	t.Logf("guest: %s", r.Stdout)
	if !strings.Contains(r.Stdout, "ID=debian") || !strings.Contains(r.Stdout, "ext4") {
		t.Errorf("the guest is not the registered image: %s", r.Stdout)
	}
	if strings.Contains(r.Stdout, "root's disk") || !strings.Contains(r.Stdout, "No such file") {
		t.Errorf("the guest sees root's disk: %s", r.Stdout)
	}
	if !strings.Contains(r.Stdout, "no-private-key") {
		t.Errorf("the guest's /root holds a private key: %s", r.Stdout)
	}
	// Root's view agrees: the image's files are the daemon's copies.
	ir := d.MustCLI("image", "inspect", mallory.Name+"/mine")
	if strings.Contains(ir.Stdout, mallory.Home) || !strings.Contains(ir.Stdout, d.StateDir) {
		t.Errorf("inspect: %s", ir.Stdout)
	}
	d.CLIAs(&mallory.User, "", "vm", "rm", "--force", "mv")
}
