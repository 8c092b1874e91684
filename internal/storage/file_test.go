package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// dataExtents lists the [start, end) ranges SEEK_DATA/SEEK_HOLE report.
func dataExtents(t *testing.T, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var out [][2]int64
	for off := int64(0); off < fi.Size(); {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, [2]int64{d, h})
		off = h
	}
	return out
}

func TestSparseCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	const size = 256 << 20
	makeImage(t, src, size, map[int64][]byte{
		0:         pattern(8192, 1),
		100 << 20: pattern(12288, 2),
		// Written zeros: allocated in the source, a hole in the copy.
		50 << 20: make([]byte, 1<<20),
		// A tail that is not a whole block.
		size - 100: pattern(100, 3),
	})
	srcAlloc, _ := AllocatedBytes(src)
	if srcAlloc < 1<<20 {
		t.Fatalf("source allocates only %d bytes; the test needs its written zeros allocated", srcAlloc)
	}

	dst := filepath.Join(dir, "dst.img")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := sparseCopy(context.Background(), out, in); err != nil {
		t.Fatalf("sparseCopy: %v", err)
	}
	out.Close()

	if got := fileSize(t, dst); got != size {
		t.Errorf("copy is %d bytes, want %d", got, size)
	}
	if !sameContent(t, src, dst, size) {
		t.Error("copy differs from the source")
	}
	alloc, err := AllocatedBytes(dst)
	if err != nil {
		t.Fatal(err)
	}
	// 8 KiB + 12 KiB + the block holding the ext4 magic (inside the
	// first 8 KiB) + the tail block; allow filesystem slack.
	if alloc > 256<<10 {
		t.Errorf("copy allocates %d bytes (source %d), want holes kept", alloc, srcAlloc)
	}
	t.Logf("source %d bytes allocated, copy %d, size %d; copy extents %v", srcAlloc, alloc, size, dataExtents(t, dst))
}

func TestSparseCopyHonoursCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	makeImage(t, src, 8<<20, map[int64][]byte{0: pattern(4<<20, 1)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	in, _ := os.Open(src)
	defer in.Close()
	out, _ := os.Create(filepath.Join(dir, "dst.img"))
	defer out.Close()
	if err := sparseCopy(ctx, out, in); err == nil {
		t.Error("sparseCopy ignored a cancelled context")
	}
}

func TestAllocatedBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	makeImage(t, p, 1<<30, map[int64][]byte{0: pattern(64<<10, 1)})
	got, err := AllocatedBytes(p)
	if err != nil {
		t.Fatal(err)
	}
	if got < 64<<10 || got > 1<<20 {
		t.Errorf("AllocatedBytes = %d, want about 64 KiB for a 1 GiB sparse file", got)
	}
	if _, err := AllocatedBytes(p + ".missing"); err == nil {
		t.Error("AllocatedBytes of a missing file succeeded")
	}
}

// copySpec makes a 32 MiB rootfs with data and returns a spec for a copy
// overlay of size bytes.
func copySpec(t *testing.T, st Strategy, size int64) OverlaySpec {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	makeImage(t, rootfs, 32<<20, map[int64][]byte{8192: pattern(1<<20, 1), 20 << 20: pattern(4096, 2)})
	return OverlaySpec{VMID: testVMID, RootfsPath: rootfs, OverlayPath: filepath.Join(dir, "system.ext4"), SizeBytes: size, Strategy: st}
}

func TestCreateOverlayCopy(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := copySpec(t, StrategyCopy, 64<<20)
	cloneCalls := 0
	m.clone = func(dst, src *os.File) error { cloneCalls++; return unix.EOPNOTSUPP }

	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatalf("CreateOverlay: %v", err)
	}
	if cloneCalls != 0 {
		t.Errorf("copy strategy tried to clone %d times", cloneCalls)
	}
	if got := fileSize(t, spec.OverlayPath); got != 64<<20 {
		t.Errorf("overlay is %d bytes, want %d", got, 64<<20)
	}
	if !sameContent(t, spec.RootfsPath, spec.OverlayPath, 32<<20) {
		t.Error("overlay's first 32 MiB differ from the rootfs")
	}
	tmp := tempPath(spec.OverlayPath)
	want := []string{"e2fsck -fy " + tmp, "resize2fs " + tmp}
	if got := o.Runner().Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
	noFile(t, tmp)
	if fi, _ := os.Stat(spec.OverlayPath); fi.Mode().Perm() != diskMode {
		t.Errorf("overlay mode %v, want %v", fi.Mode().Perm(), os.FileMode(diskMode))
	}
	if got, _ := AllocatedBytes(spec.OverlayPath); got > 2<<20 {
		t.Errorf("overlay allocates %d bytes, want it sparse", got)
	}

	// An existing overlay is not overwritten.
	if err := os.WriteFile(spec.OverlayPath, []byte("guest data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateOverlay(ctx, spec); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("CreateOverlay over an existing file: %v, want ECONFLICT", err)
	}
	if b, _ := os.ReadFile(spec.OverlayPath); string(b) != "guest data" {
		t.Errorf("existing overlay was changed to %d bytes", len(b))
	}

	// Reset replaces it with a fresh copy.
	if err := m.ResetOverlay(ctx, spec); err != nil {
		t.Fatalf("ResetOverlay: %v", err)
	}
	if !sameContent(t, spec.RootfsPath, spec.OverlayPath, 32<<20) || fileSize(t, spec.OverlayPath) != 64<<20 {
		t.Error("reset overlay is not a fresh grown copy of the rootfs")
	}

	// Attaching a copy overlay attaches nothing.
	o.Runner().Reset()
	a, err := m.AttachOverlay(ctx, spec)
	if err != nil || !reflect.DeepEqual(a, Attached{Device: spec.OverlayPath}) {
		t.Errorf("AttachOverlay = %+v, %v; want the file itself", a, err)
	}
	if err := m.DetachOverlay(ctx, a); err != nil {
		t.Errorf("DetachOverlay: %v", err)
	}
	if got := o.Runner().Calls(); len(got) != 0 {
		t.Errorf("attach and detach of a copy overlay ran %q", got)
	}
}

func TestCreateOverlayReflink(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := copySpec(t, StrategyReflink, 16<<20) // smaller than the rootfs: not grown
	var cloned []string
	m.clone = func(dst, src *os.File) error {
		cloned = append(cloned, src.Name()+" -> "+dst.Name())
		return sparseCopy(ctx, dst, src) // what a clone looks like from outside
	}
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatalf("CreateOverlay: %v", err)
	}
	if want := []string{spec.RootfsPath + " -> " + tempPath(spec.OverlayPath)}; !reflect.DeepEqual(cloned, want) {
		t.Errorf("cloned %q, want %q", cloned, want)
	}
	if got := o.Runner().Calls(); len(got) != 0 {
		t.Errorf("ran %q; an overlay no larger than the rootfs needs no resize", got)
	}
	if !sameContent(t, spec.RootfsPath, spec.OverlayPath, 32<<20) || fileSize(t, spec.OverlayPath) != 32<<20 {
		t.Error("overlay is not the rootfs")
	}

	// Where the clone fails (another filesystem), reflink falls back to
	// a copy.
	m.clone = func(dst, src *os.File) error { return unix.EXDEV }
	spec.OverlayPath += ".2"
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatalf("CreateOverlay with a failing clone: %v", err)
	}
	if !sameContent(t, spec.RootfsPath, spec.OverlayPath, 32<<20) {
		t.Error("fallback copy differs from the rootfs")
	}
}

func TestCreateOverlayFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		fail string
		st   Strategy
	}{
		{"e2fsck", "e2fsck", StrategyCopy},
		{"resize2fs", "resize2fs", StrategyReflink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, o := newFake(t)
			spec := copySpec(t, tc.st, 64<<20)
			o.Fail[tc.fail] = "injected failure"
			if err := m.CreateOverlay(ctx, spec); err == nil {
				t.Fatal("CreateOverlay succeeded despite the failure")
			}
			noFile(t, spec.OverlayPath)
			noFile(t, tempPath(spec.OverlayPath))
		})
	}
}

func TestCreateOverlayReplacesStaleTemp(t *testing.T) {
	m, _ := newFake(t)
	spec := copySpec(t, StrategyCopy, 32<<20)
	// A crash mid-create left a partial file under the temporary name.
	if err := os.WriteFile(tempPath(spec.OverlayPath), bytes.Repeat([]byte{0xff}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateOverlay(context.Background(), spec); err != nil {
		t.Fatalf("CreateOverlay: %v", err)
	}
	if !sameContent(t, spec.RootfsPath, spec.OverlayPath, 32<<20) {
		t.Error("overlay kept bytes of the stale temporary file")
	}
	noFile(t, tempPath(spec.OverlayPath))
}

func TestResetOverlayDMZeroesCOW(t *testing.T) {
	ctx := context.Background()
	m, _ := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// The guest's changes: a COW header and exceptions.
	f, err := os.OpenFile(spec.OverlayPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("SnAp"), 0)
	f.WriteAt(pattern(4096, 9), 1<<20)
	f.Close()

	if err := m.ResetOverlay(ctx, spec); err != nil {
		t.Fatalf("ResetOverlay: %v", err)
	}
	if got, _ := AllocatedBytes(spec.OverlayPath); got != 0 {
		t.Errorf("reset COW allocates %d bytes, want a fresh sparse file", got)
	}
	if got := fileSize(t, spec.OverlayPath); got != spec.SizeBytes {
		t.Errorf("reset COW is %d bytes, want %d", got, spec.SizeBytes)
	}
}

func TestOverlaySpecErrors(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	ok := copySpec(t, StrategyCopy, 64<<20)
	for _, tc := range []struct {
		name string
		edit func(*OverlaySpec)
		code string
	}{
		{"zero size", func(s *OverlaySpec) { s.SizeBytes = 0 }, model.EINVALID},
		{"too large", func(s *OverlaySpec) { s.SizeBytes = model.MaxDiskBytes + 1 }, model.EINVALID},
		{"no strategy", func(s *OverlaySpec) { s.Strategy = "" }, model.EINVALID},
		{"bad strategy", func(s *OverlaySpec) { s.Strategy = "zfs" }, model.EINVALID},
		{"dm without VM", func(s *OverlaySpec) { s.Strategy = StrategyDMSnapshot; s.VMID = "" }, model.EINVALID},
		{"no rootfs", func(s *OverlaySpec) { s.RootfsPath += ".missing" }, model.ENOTFOUND},
	} {
		spec := ok
		tc.edit(&spec)
		if err := m.CreateOverlay(ctx, spec); model.ErrorCode(err) != tc.code {
			t.Errorf("%s: CreateOverlay: %v, want %s", tc.name, err, tc.code)
		}
		noFile(t, spec.OverlayPath)
	}
	if _, err := m.AttachOverlay(ctx, ok); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("AttachOverlay of a missing overlay: %v, want ENOTFOUND", err)
	}
	if got := o.Runner().Calls(); len(got) != 0 {
		t.Errorf("invalid specs ran %q", got)
	}
}
