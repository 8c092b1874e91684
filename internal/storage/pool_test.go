package storage

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

// copyClone stands in for FICLONE on a filesystem without it: dst gets
// src's bytes, as a clone would show them.
func copyClone(dst, src *os.File) error {
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(dst, src)
	return err
}

// poolEnv is a Manager on a fake host whose pool filesystem "clones" by
// copying and reports the space the test sets.
type poolEnv struct {
	m    *Manager
	o    *fakeos.OS
	spec PoolSpec
	// free is the pool's free space; hostFree the host's.
	size, free, hostFree int64
}

func newPoolEnv(t *testing.T) *poolEnv {
	t.Helper()
	m, o := newFake(t)
	dir := t.TempDir()
	e := &poolEnv{m: m, o: o, spec: PoolSpec{File: filepath.Join(dir, "pool.img"), Dir: filepath.Join(dir, "pool"), InitialSize: 512 << 20},
		size: 512 << 20, free: 8 << 30, hostFree: 50 << 30}
	e.setup(m)
	return e
}

// setup gives m the env's clone and statfs.
func (e *poolEnv) setup(m *Manager) {
	m.clone = copyClone
	m.statfs = func(p string) (int64, int64, error) {
		if p == e.spec.Dir {
			return e.size, e.free, nil
		}
		return 100 << 30, e.hostFree, nil
	}
}

// restart returns a Manager on the same fake host, as a restarted daemon.
func (e *poolEnv) restart(t *testing.T) *Manager {
	m := managerOn(t, e.o)
	e.setup(m)
	return m
}

func TestOpenPoolCreatesMountsAndIsIdempotent(t *testing.T) {
	e := newPoolEnv(t)
	ctx := context.Background()
	p, err := e.m.OpenPool(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, e.spec.File); got != 512<<20 {
		t.Errorf("pool file is %d bytes, want %d", got, 512<<20)
	}
	if a, _ := AllocatedBytes(e.spec.File); a > 1<<20 {
		t.Errorf("new pool file occupies %d bytes, want it sparse", a)
	}
	mnt := e.o.Mounts[e.spec.Dir]
	if mnt == nil || mnt.FSType != "xfs" || len(e.o.Loops) != 1 || e.o.Loops[mnt.Source] == nil {
		t.Fatalf("after open: mounts %v loops %v", e.o.Mounts, e.o.Loops)
	}
	for _, sub := range []string{"images", "vms"} {
		if fi, err := os.Stat(filepath.Join(p.Dir, sub)); err != nil || !fi.IsDir() {
			t.Errorf("pool has no %s dir: %v", sub, err)
		}
	}
	// A restarted daemon reuses the file, the loop and the mount.
	calls := len(e.o.Runner().Calls())
	if _, err := e.restart(t).OpenPool(ctx, e.spec); err != nil {
		t.Fatal(err)
	}
	for _, c := range e.o.Runner().Calls()[calls:] {
		if strings.HasPrefix(c, "mkfs") || strings.HasPrefix(c, "mount") {
			t.Errorf("reopen ran %q", c)
		}
	}
	if len(e.o.Loops) != 1 || len(e.o.Mounts) != 1 {
		t.Errorf("after reopen: mounts %v loops %v", e.o.Mounts, e.o.Loops)
	}
	// A daemon in a fresh mount namespace (the mount is gone, the loop
	// stays) mounts the same loop device, never a second one.
	dev := mnt.Source
	delete(e.o.Mounts, e.spec.Dir)
	if _, err := e.restart(t).OpenPool(ctx, e.spec); err != nil {
		t.Fatal(err)
	}
	if m := e.o.Mounts[e.spec.Dir]; m == nil || m.Source != dev || len(e.o.Loops) != 1 {
		t.Errorf("after remount: mounts %v loops %v, want %s mounted again", e.o.Mounts, e.o.Loops, dev)
	}
}

func TestOpenPoolRefuses(t *testing.T) {
	ctx := context.Background()
	t.Run("two loops on the file", func(t *testing.T) {
		e := newPoolEnv(t)
		if _, err := e.m.OpenPool(ctx, e.spec); err != nil {
			t.Fatal(err)
		}
		delete(e.o.Mounts, e.spec.Dir)
		e.o.Loops["/dev/loop9"] = &fakeos.Loop{Dev: "/dev/loop9", File: e.o.Loops["/dev/loop0"].File}
		_, err := e.restart(t).OpenPool(ctx, e.spec)
		if err == nil || !strings.Contains(err.Error(), "several loop devices") {
			t.Errorf("err %v, want several loop devices", err)
		}
		if len(e.o.Mounts) != 0 {
			t.Errorf("mounted %v", e.o.Mounts)
		}
	})
	t.Run("something else mounted there", func(t *testing.T) {
		e := newPoolEnv(t)
		os.MkdirAll(e.spec.Dir, 0o700)
		e.o.Mounts[e.spec.Dir] = &fakeos.Mount{Source: "tmpfs", Dir: e.spec.Dir, FSType: "tmpfs"}
		_, err := e.m.OpenPool(ctx, e.spec)
		if err == nil || !strings.Contains(err.Error(), "tmpfs filesystem mounted") {
			t.Errorf("err %v, want a refusal of the tmpfs", err)
		}
	})
	t.Run("no reflink", func(t *testing.T) {
		e := newPoolEnv(t)
		e.m.clone = func(dst, src *os.File) error { return os.ErrInvalid }
		if _, err := e.m.OpenPool(ctx, e.spec); err == nil || !strings.Contains(err.Error(), "reflink") {
			t.Errorf("err %v, want no reflink", err)
		}
	})
	t.Run("no file or dir", func(t *testing.T) {
		e := newPoolEnv(t)
		if _, err := e.m.OpenPool(ctx, PoolSpec{Dir: e.spec.Dir}); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("err %v, want EINVALID", err)
		}
	})
}

func TestPoolReserveGrowsOrRefuses(t *testing.T) {
	e := newPoolEnv(t)
	ctx := context.Background()
	p, err := e.m.OpenPool(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	// Enough free: nothing changes.
	if err := p.Reserve(ctx, 1<<30); err != nil {
		t.Fatal(err)
	}
	if e.o.Mounts[e.spec.Dir].Grown != 0 {
		t.Fatal("grew a pool with room")
	}
	// Short: the file and the filesystem grow.
	e.free = 100 << 20
	if err := p.Reserve(ctx, 1<<30); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, e.spec.File); got < 512<<20+2<<30-100<<20 {
		t.Errorf("pool file %d bytes after growth, want at least %d", got, 512<<20+2<<30-100<<20)
	}
	if e.o.Mounts[e.spec.Dir].Grown != 1 {
		t.Error("xfs_growfs did not run")
	}
	found := false
	for _, c := range e.o.Runner().Calls() {
		found = found || strings.HasPrefix(c, "losetup -c /dev/loop")
	}
	if !found {
		t.Error("the loop device's capacity was not updated")
	}
	// The host short too: refused, nothing changes.
	before := fileSize(t, e.spec.File)
	e.hostFree = 2 << 30
	err = p.Reserve(ctx, 4<<30)
	if model.ErrorCode(err) != model.EUNAVAILABLE || !strings.Contains(err.Error(), "storage pool is short of space") {
		t.Errorf("err %v, want EUNAVAILABLE pool full", err)
	}
	if fileSize(t, e.spec.File) != before || e.o.Mounts[e.spec.Dir].Grown != 1 {
		t.Error("a refused reserve changed the pool")
	}
	// Room in the pool that the host cannot back is no room.
	e.free, e.hostFree = 8<<30, 1<<30+512<<20
	if err := p.Reserve(ctx, 0); model.ErrorCode(err) != model.EUNAVAILABLE {
		t.Errorf("reserve with the host short: %v, want EUNAVAILABLE", err)
	}
}

func TestPoolTemplateMadeOnceGrownAndRemade(t *testing.T) {
	e := newPoolEnv(t)
	ctx := context.Background()
	p, err := e.m.OpenPool(ctx, e.spec)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "rootfs.ext4")
	makeImage(t, src, 8<<20, map[int64][]byte{1 << 20: pattern(4096, 3)})
	tmpl, err := p.Template(ctx, src, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tmpl, filepath.Join(p.Dir, "images")+"/") || fileSize(t, tmpl) != 16<<20 || !sameContent(t, src, tmpl, 4<<20) {
		t.Fatalf("template %s: size %d, want 16 MiB in the pool with the source's data", tmpl, fileSize(t, tmpl))
	}
	countFsck := func() int {
		n := 0
		for _, c := range e.o.Runner().Calls() {
			if strings.HasPrefix(c, "e2fsck") {
				n++
			}
		}
		return n
	}
	if countFsck() != 1 {
		t.Fatalf("e2fsck ran %d times for one template", countFsck())
	}
	// Used again: not remade.
	if again, err := p.Template(ctx, src, 16<<20); err != nil || again != tmpl || countFsck() != 1 {
		t.Errorf("second use: %s %v, e2fsck runs %d", again, err, countFsck())
	}
	// A disk cloned from it is made without growing anything.
	spec := OverlaySpec{VMID: testVMID, RootfsPath: tmpl, OverlayPath: filepath.Join(p.Dir, "vms", "x", "system.img"), SizeBytes: 16 << 20, Strategy: StrategyPool}
	os.MkdirAll(filepath.Dir(spec.OverlayPath), 0o700)
	if err := e.m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if countFsck() != 1 || !sameContent(t, src, spec.OverlayPath, 8<<20) {
		t.Errorf("overlay from template: e2fsck runs %d, content same %v", countFsck(), sameContent(t, src, spec.OverlayPath, 8<<20))
	}
	// The source changes: the template is made again.
	makeImage(t, src, 8<<20, map[int64][]byte{1 << 20: pattern(4096, 9)})
	future := time.Now().Add(time.Minute)
	os.Chtimes(src, future, future)
	if again, err := p.Template(ctx, src, 16<<20); err != nil || again != tmpl || countFsck() != 2 || !sameContent(t, src, tmpl, 4<<20) {
		t.Errorf("after change: %s %v, e2fsck runs %d", again, err, countFsck())
	}
	// A missing source is ENOTFOUND.
	if _, err := p.Template(ctx, src+".gone", 0); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("missing source: %v", err)
	}
	// Its source removed, the template is pruned.
	if n, err := p.PruneTemplates(); err != nil || n != 0 {
		t.Errorf("prune with source present: %d %v", n, err)
	}
	os.Remove(src)
	if n, err := p.PruneTemplates(); err != nil || n != 1 {
		t.Errorf("prune: %d %v", n, err)
	}
	noFile(t, tmpl)
}

func TestPoolInitialSize(t *testing.T) {
	for _, c := range []struct{ free, want int64 }{
		{0, 5 << 30},
		{10 << 30, 5 << 30},
		{100 << 30, 20 << 30},
		{1 << 40, 30 << 30},
	} {
		if got := poolInitialSize(c.free); got != c.want {
			t.Errorf("poolInitialSize(%d) = %d, want %d", c.free, got, c.want)
		}
	}
}

func TestPoolArgs(t *testing.T) {
	for _, c := range []struct{ got, want []string }{
		{mkfsXFSArgs("/s/pool.img"), []string{"-q", "-m", "reflink=1", "-L", "banger-pool", "/s/pool.img"}},
		{mountLoopArgs("/s/pool.img", "/s/pool"), []string{"-t", "xfs", "-o", "loop", "/s/pool.img", "/s/pool"}},
		{mountDevArgs("/dev/loop3", "/s/pool"), []string{"-t", "xfs", "/dev/loop3", "/s/pool"}},
		{findmntArgs("/s/pool"), []string{"-n", "-o", "SOURCE,FSTYPE", "--mountpoint", "/s/pool"}},
	} {
		if strings.Join(c.got, " ") != strings.Join(c.want, " ") {
			t.Errorf("argv %q, want %q", c.got, c.want)
		}
	}
}
