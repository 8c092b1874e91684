package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"banger/test/harness"
)

// TestStoragePool is issue 18's end-to-end test of the copy-on-write
// storage pool on a host whose state directory cannot reflink and that
// has no device-mapper (this project's machines): the daemon mounts an
// XFS pool file on <state>/pool; a started VM's system and work disks
// are in it and share their blocks with the pool's templates (reflink
// clones, not copies); doctor and inspect say so; a restarted daemon
// reuses the pool's loop device; rm leaves nothing, and once the daemon
// is gone the pool's loop device is too.
func TestStoragePool(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	if misc, _ := os.ReadFile("/proc/misc"); strings.Contains(string(misc), "device-mapper") {
		t.Skip("this host has device-mapper: storage_pool = \"auto\" does not use a pool")
	}

	// doctor exits 1 when a check fails (this host has no Firecracker,
	// say): only the pool's line matters here.
	r := d.CLI("doctor")
	if !regexp.MustCompile(`PASS\s+storage-pool\s+\S+/pool\.img on \S+/pool: .* free of .* \(in use\)`).MatchString(r.Stdout) {
		t.Errorf("doctor does not report the pool in use:\n%s", r.Stdout)
	}
	d.MustCLI("vm", "create", "p1", "--vcpus", "1", "--memory", "384M")
	vm := d.VM(t, "p1")
	poolDir := filepath.Join(d.StateDir, "pool")
	if vm.Runtime.OverlayStrategy != "pool" || !strings.HasPrefix(vm.Runtime.SystemOverlay, poolDir+"/vms/") || !strings.HasPrefix(vm.Runtime.WorkDiskPath, poolDir+"/vms/") {
		t.Fatalf("vm p1: strategy %q, disks %s and %s", vm.Runtime.OverlayStrategy, vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath)
	}
	if !strings.Contains(vm.DiskPool, "free of") {
		t.Errorf("inspect's storage pool line: %q", vm.DiskPool)
	}
	// The disks are clones: their extents are shared with the template.
	for _, p := range []string{vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath} {
		out, err := d.InMounts("filefrag", "-v", p)
		if err != nil {
			t.Fatalf("filefrag %s: %v: %s", p, err, out)
		}
		if !strings.Contains(out, "shared") {
			t.Errorf("%s has no shared extents (not a reflink clone):\n%s", p, out)
		}
	}
	if out, err := d.InMounts("findmnt", "-n", "-o", "FSTYPE", "--mountpoint", poolDir); err != nil || strings.TrimSpace(out) != "xfs" {
		t.Errorf("pool mount: %q %v", out, err)
	}
	logb, _ := os.ReadFile(d.LogPath())
	if !regexp.MustCompile(`msg="overlay created".*strategy=pool cloned=true`).Match(logb) {
		t.Errorf("the daemon's log has no cloned pool overlay")
	}
	for _, m := range regexp.MustCompile(`step=start:disks took_ms=[0-9.]+`).FindAll(logb, -1) {
		t.Logf("first start: %s", m)
	}
	// The guest runs from it and writes to it.
	if r := d.MustCLI("exec", "p1", "--", "sh", "-c", "echo kept > /root/f && sync && cat /root/f"); !strings.Contains(r.Stdout, "kept") {
		t.Errorf("guest write: %s", r)
	}

	// A restarted daemon (a fresh mount namespace) mounts the same loop
	// device again and keeps the VM.
	loops := poolLoops(t, d.StateDir)
	d.Stop()
	d.Start()
	if got := poolLoops(t, d.StateDir); len(got) != 1 || got[0] != loops[0] {
		t.Errorf("pool loops after restart %v, before %v", got, loops)
	}
	if r := d.MustCLI("exec", "p1", "--", "cat", "/root/f"); !strings.Contains(r.Stdout, "kept") {
		t.Errorf("after restart: %s", r)
	}
	d.MustCLI("vm", "rm", "--force", "p1")
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers: %q", lo)
	}
	if out, _ := d.InMounts("ls", "-A", filepath.Join(poolDir, "vms")); strings.TrimSpace(out) != "" {
		t.Errorf("pool vms dir after rm: %q", out)
	}
	// With the daemon and its VMs gone, the pool's mount namespace goes,
	// and the kernel detaches its loop device.
	d.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for len(poolLoops(t, d.StateDir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := poolLoops(t, d.StateDir); len(got) > 0 {
		t.Errorf("pool loop devices after the daemon stopped: %v", got)
	}
}

// poolLoops lists the loop devices backed by the state dir's pool file.
func poolLoops(t *testing.T, stateDir string) []string {
	t.Helper()
	out, err := exec.Command("losetup", "-n", "-O", "NAME", "-j", filepath.Join(stateDir, "pool.img")).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -j: %v: %s", err, out)
	}
	return strings.Fields(string(out))
}

// TestStoragePoolFull puts the pool file on a filesystem too small to
// back an image's templates: registering the image still works (the
// templates are an optimisation), and creating a VM fails before any
// boot with a clear error that leaves nothing behind.
func TestStoragePoolFull(t *testing.T) {
	a := harness.RequireArtifacts(t)
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
	d := harness.NewE2EDaemon(t, a, `storage_pool = "`+filepath.Join(small, "pool.img")+`"`)
	r := d.CLI("vm", "create", "big", "--vcpus", "1", "--memory", "384M")
	if r.Code == 0 {
		t.Fatalf("create with a pool the host cannot back succeeded: %s", r)
	}
	t.Logf("create with a full pool: %s", strings.TrimSpace(r.Stderr))
	if !strings.Contains(r.Stderr, "storage pool is short of space") {
		t.Errorf("error does not say the pool is short: %s", r.Stderr)
	}
	if r := d.MustCLI("vm", "ls", "-q"); strings.TrimSpace(r.Stdout) != "" {
		t.Errorf("a VM row was left: %q", r.Stdout)
	}
	if r := d.CLI("doctor"); !regexp.MustCompile(`FAIL\s+storage-pool`).MatchString(r.Stdout) {
		t.Errorf("doctor does not fail the short pool:\n%s", r.Stdout)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers: %v", lo)
	}
}
