package daemon

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
	"banger/internal/storage"
)

// newPoolDaemon is a daemon on a fake host without device-mapper whose
// storage_pool is a file of the test: the pool filesystem "clones" by
// copying (the fake's directories are not XFS) and has plenty of room.
// The image gets a work seed.
func newPoolDaemon(t *testing.T) *testEnv {
	t.Helper()
	e := newTestDaemonWith(t, false, func(dir string, cfg *model.DaemonConfig, sopts *storage.Options) {
		cfg.StoragePool = filepath.Join(dir, "pool.img")
		sopts.Clone = func(dst, src *os.File) error {
			if _, err := src.Seek(0, io.SeekStart); err != nil {
				return err
			}
			_, err := io.Copy(dst, src)
			return err
		}
		sopts.Statfs = func(string) (int64, int64, error) { return 20 << 30, 10 << 30, nil }
	})
	img, err := e.d.store.GetImage(e.ctx, strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	img.WorkSeedPath = filepath.Join(filepath.Dir(img.RootfsPath), "work-seed.ext4")
	if err := os.WriteFile(img.WorkSeedPath, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fakeos.WriteExt4Magic(img.WorkSeedPath); err != nil {
		t.Fatal(err)
	}
	if err := e.d.store.UpdateImage(e.ctx, img); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestPoolVMDisksAreClonedInThePool(t *testing.T) {
	e := newPoolDaemon(t)
	if e.d.pool == nil || e.d.strategy != storage.StrategyPool {
		t.Fatalf("pool %v strategy %s (%s)", e.d.pool, e.d.strategy, e.d.poolReason)
	}
	poolDir := e.d.layout.poolDir()
	if m := e.os.Mounts[poolDir]; m == nil || m.FSType != "xfs" {
		t.Fatalf("pool not mounted: %v", e.os.Mounts)
	}
	// An old VM, made before the pool (its strategy recorded as copy),
	// keeps its disks in its own directory.
	old := e.create(t, "old", false)
	old.Runtime.OverlayStrategy = "copy"
	e.d.layout.vmPaths(old.ID, &old.Runtime)
	if err := e.d.store.UpdateVM(e.ctx, old); err != nil {
		t.Fatal(err)
	}
	vm := e.create(t, "one", false)
	if vm.Runtime.OverlayStrategy != "pool" || !strings.HasPrefix(vm.Runtime.SystemOverlay, poolDir+"/vms/") || !strings.HasPrefix(vm.Runtime.WorkDiskPath, poolDir+"/vms/") {
		t.Fatalf("new vm: strategy %q disks %s %s", vm.Runtime.OverlayStrategy, vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath)
	}
	for _, n := range []string{"one", "old"} {
		if _, err := e.d.StartVM(e.ctx, n, api.NoProgress); err != nil {
			t.Fatal(err)
		}
	}
	vm = e.vm(t, "one")
	for _, p := range []string{vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != 64<<20 {
			t.Errorf("%s is %d bytes, want 64 MiB", p, fi.Size())
		}
	}
	if o := e.vm(t, "old"); o.Runtime.OverlayStrategy != "copy" || !strings.HasPrefix(o.Runtime.SystemOverlay, e.d.layout.vmDir(o.ID)+"/") {
		t.Errorf("old vm: strategy %q overlay %s", o.Runtime.OverlayStrategy, o.Runtime.SystemOverlay)
	}
	// The templates were grown once; the VM's disks were not grown.
	fsck := 0
	for _, c := range e.os.Runner().Calls() {
		if strings.HasPrefix(c, "e2fsck") && strings.Contains(c, poolDir+"/images/") {
			fsck++
		}
	}
	if fsck != 2 {
		t.Errorf("e2fsck ran %d times on pool templates, want 2 (rootfs and work seed)", fsck)
	}
	// The pool's loop survives reconcile; a disk dir without a row does
	// not.
	stray := filepath.Join(poolDir, "vms", "0123456789ab")
	os.MkdirAll(stray, 0o700)
	if err := e.d.reconcile(e.ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if len(e.os.Loops) != 1 || e.os.Mounts[poolDir] == nil {
		t.Errorf("after reconcile: loops %v mounts %v", e.os.Loops, e.os.Mounts)
	}
	if _, err := os.Stat(stray); err == nil {
		t.Error("reconcile left a pool disk dir without a row")
	}
	// Reconcile mounts a pool that was unmounted again.
	delete(e.os.Mounts, poolDir)
	if err := e.d.reconcile(e.ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if e.os.Mounts[poolDir] == nil || len(e.os.Loops) != 1 {
		t.Errorf("after unmount and reconcile: loops %v mounts %v", e.os.Loops, e.os.Mounts)
	}
	// inspect and doctor say where the disks are and how much room
	// there is.
	v, err := e.d.GetVM(e.ctx, "one")
	if err != nil || !strings.Contains(v.DiskPool, "free of") {
		t.Errorf("inspect: %q %v", v.DiskPool, err)
	}
	if v, _ := e.d.GetVM(e.ctx, "old"); v.DiskPool != "" {
		t.Errorf("old vm's inspect names the pool: %q", v.DiskPool)
	}
	if desc, low, err := e.d.poolStatus(e.ctx); err != nil || low || !strings.Contains(desc, "in use") || !strings.Contains(desc, "VMs' disks: 1 copy, 1 pool") {
		t.Errorf("pool status %q low %v err %v", desc, low, err)
	}
	// Delete removes the disks in the pool.
	if err := e.d.DeleteVM(e.ctx, "one", api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(vm.Runtime.SystemOverlay)); err == nil {
		t.Error("rm left the vm's disks in the pool")
	}
}

func TestPoolVMRefusedWithoutPool(t *testing.T) {
	e := newTestDaemon(t, false)
	vm := e.create(t, "one", false)
	vm.Runtime.OverlayStrategy = "pool"
	e.d.layout.vmPaths(vm.ID, &vm.Runtime)
	if err := e.d.store.UpdateVM(e.ctx, vm); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.StartVM(e.ctx, "one", api.NoProgress)
	if model.ErrorCode(err) != model.EUNAVAILABLE || !strings.Contains(err.Error(), "storage pool, which is not mounted") {
		t.Errorf("start without the pool: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.d.layout.poolDir(), "vms")); err == nil {
		t.Error("a disk dir was made under the unmounted pool's mount point")
	}
}

func TestPoolWarmedAtRegisterSoFirstStartOnlyClones(t *testing.T) {
	e := newPoolDaemon(t)
	img, err := e.d.store.GetImage(e.ctx, strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	e.d.warmPool(e.ctx, img)
	before := len(e.os.Runner().Calls())
	e.create(t, "one", false)
	if _, err := e.d.StartVM(e.ctx, "one", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	for _, c := range e.os.Runner().Calls()[before:] {
		if strings.HasPrefix(c, "e2fsck") || strings.HasPrefix(c, "resize2fs") || strings.HasPrefix(c, "mkfs") {
			t.Errorf("first start after warming ran %q", c)
		}
	}
}
