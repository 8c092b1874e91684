package storage

// Integration tests: real loop devices, real filesystems on loop devices,
// real e2fsprogs. They need root; without it they skip (fail under
// BANGER_CI=1). Device-mapper is not available on the development and CI
// machines, so the dm-snapshot path is covered by the fakeos tests only.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/testutil"
)

func requireIntegration(t *testing.T, tools ...string) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, append([]string{"losetup", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "debugfs"}, tools...)...)
}

// realManager returns a Manager on the real host that believes there is
// no device-mapper, so strategy detection does not depend on the machine.
func realManager(t *testing.T) *Manager {
	m := New(hostexec.Real{}, testLogger(t), Options{})
	m.dmControl = filepath.Join(t.TempDir(), "no-device-mapper")
	return m
}

// sh runs a command and fails the test if it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := hostexec.Real{}.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// guardLoops fails the test if, at its end, a loop device is still
// backed by a file under dir. Call it right after making dir, so it runs
// after every other cleanup.
func guardLoops(t *testing.T, dir string) {
	t.Helper()
	before := sh(t, "losetup", "-a")
	t.Cleanup(func() {
		// The kernel defers the detach of a loop that is still open
		// (btrfs may hold it for a moment after umount) to its last
		// close: give it up to 30 seconds (btrfs on a loaded host is slow).
		var out []byte
		for try := 0; ; try++ {
			var err error
			if out, err = (hostexec.Real{}).Run(context.Background(), "losetup", "-a"); err != nil {
				t.Errorf("losetup -a: %v", err)
				return
			}
			if !strings.Contains(string(out), dir) || try == 300 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, dir) {
				t.Errorf("loop device left behind: %s", line)
				// Do not leak it into the machine.
				dev, _, _ := strings.Cut(line, ":")
				hostexec.Real{}.Run(context.Background(), "losetup", "-d", dev)
			}
		}
		if n0, n1 := strings.Count(before, "\n"), strings.Count(string(out), "\n"); n0 != n1 {
			t.Logf("losetup -a: %d devices before, %d after (other users of this machine count too)", n0, n1)
		}
	})
}

// mountLoopFS makes a filesystem of fstype on a sparse file of size
// bytes, mounts it on a temporary directory through a loop device, and
// returns the mount point. Cleanup unmounts and detaches even when the
// test fails.
func mountLoopFS(t *testing.T, fstype string, size int64) string {
	t.Helper()
	dir := t.TempDir()
	guardLoops(t, dir)
	img := filepath.Join(dir, fstype+".img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	switch fstype {
	case "btrfs":
		sh(t, "mkfs.btrfs", "-q", "-f", img)
	case "xfs":
		sh(t, "mkfs.xfs", "-q", "-f", img)
	case "ext4":
		sh(t, "mkfs.ext4", "-q", "-F", img)
	default:
		t.Fatalf("mountLoopFS: unknown filesystem %s", fstype)
	}
	dev := strings.TrimSpace(sh(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() {
		if _, err := (hostexec.Real{}).Run(context.Background(), "losetup", "-d", dev); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-t", fstype, dev, mnt)
	t.Cleanup(func() {
		if _, err := (hostexec.Real{}).Run(context.Background(), "umount", mnt); err != nil {
			t.Errorf("umount %s: %v", mnt, err)
		}
	})
	return mnt
}

// makeExt4 makes an ext4 image of size bytes at path holding a
// hello.txt and dataBytes of random data, with mkfs.ext4 -d. It returns
// hello.txt's content.
func makeExt4(t *testing.T, path string, size, dataBytes int64) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(src, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	hello := "hello from " + t.Name() + "\n"
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte(hello), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := int64(0); dataBytes > 0; i++ {
		n := min(dataBytes, 16<<20)
		b := make([]byte, n)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(src, "data", strconv.FormatInt(i, 10)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		dataBytes -= n
	}
	sh(t, "mkfs.ext4", "-q", "-F", "-d", src, path, strconv.FormatInt(size/1024, 10)+"k")
	return hello
}

// fsBytes returns the size of the ext4 filesystem in img, from
// dumpe2fs -h.
func fsBytes(t *testing.T, img string) int64 {
	t.Helper()
	var count, bs int64
	for _, line := range strings.Split(sh(t, "dumpe2fs", "-h", img), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "Block count":
			count = n
		case "Block size":
			bs = n
		}
	}
	if count == 0 || bs == 0 {
		t.Fatalf("dumpe2fs -h %s: no block count or size", img)
	}
	return count * bs
}

// checkExt4 runs a read-only full check and reads hello.txt back.
func checkExt4(t *testing.T, img, wantHello string, wantBytes int64) {
	t.Helper()
	sh(t, "e2fsck", "-fn", img) // exit 0: clean
	if got := sh(t, "debugfs", "-R", "cat /hello.txt", img); got != wantHello {
		t.Errorf("hello.txt in %s = %q, want %q", img, got, wantHello)
	}
	if got := fsBytes(t, img); got != wantBytes {
		t.Errorf("filesystem in %s is %d bytes, want %d", img, got, wantBytes)
	}
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func TestIntegrationLoops(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	m := realManager(t)
	dir := t.TempDir()
	guardLoops(t, dir)
	rootfs := filepath.Join(dir, "rootfs.ext4")
	overlay := filepath.Join(dir, "system cow") // a space, as users' paths may have
	makeImage(t, rootfs, 8<<20, nil)
	makeImage(t, overlay, 16<<20, nil)

	base, err := m.attachLoop(ctx, rootfs, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DetachLoop(context.Background(), base) })
	cow, err := m.attachLoop(ctx, overlay, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DetachLoop(context.Background(), cow) })

	loops, err := m.ListLoops(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seen []LoopDevice
	for _, l := range loops {
		if l.Dev == base || l.Dev == cow {
			seen = append(seen, l)
		}
	}
	want := []LoopDevice{
		{Dev: base, BackFile: rootfs, ReadOnly: true, MajMin: "7:" + strings.TrimPrefix(base, "/dev/loop")},
		{Dev: cow, BackFile: overlay, MajMin: "7:" + strings.TrimPrefix(cow, "/dev/loop")},
	}
	if len(seen) == 2 && seen[0].Dev != base {
		seen[0], seen[1] = seen[1], seen[0]
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("ListLoops has %+v, want %+v", seen, want)
	}
	if got, err := m.LoopsFor(ctx, overlay); err != nil || len(got) != 1 || got[0].Dev != cow {
		t.Errorf("LoopsFor(%s) = %+v, %v; want %s", overlay, got, err, cow)
	}
	if got := sh(t, "losetup", "-j", overlay); !strings.HasPrefix(got, cow+":") {
		t.Errorf("losetup -j %s printed %q, want %s", overlay, got, cow)
	}

	// A restarted daemon without device-mapper finds the COW loop and
	// leaves the rootfs loop (it could be another VM's) to the orphan
	// pass.
	a, err := m.FindAttached(ctx, testVMID, overlay, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Attached{Loops: []string{cow}}); !reflect.DeepEqual(a, want) {
		t.Errorf("FindAttached = %+v, want %+v", a, want)
	}
	if err := m.DetachVM(ctx, testVMID, overlay, rootfs); err != nil {
		t.Fatalf("DetachVM: %v", err)
	}
	if got, _ := m.LoopsFor(ctx, overlay); len(got) != 0 {
		t.Errorf("after DetachVM, %s still has loops %+v", overlay, got)
	}
	loops, _ = m.ListLoops(ctx)
	dms, _ := m.ListDM(ctx)
	var orphan bool
	for _, l := range UnreferencedLoops(loops, dms) {
		orphan = orphan || (l.Dev == base && l.BackFile == rootfs)
	}
	if !orphan {
		t.Errorf("rootfs loop %s is not among the unreferenced loops", base)
	}
	if err := m.DetachLoop(ctx, base); err != nil {
		t.Fatalf("DetachLoop: %v", err)
	}
	// Detaching what is gone is not an error.
	if err := m.DetachLoop(ctx, base); err != nil {
		t.Errorf("second DetachLoop: %v", err)
	}
	if got, _ := m.LoopsFor(ctx, rootfs); len(got) != 0 {
		t.Errorf("%s still has loops %+v", rootfs, got)
	}
}

func TestIntegrationReflinkOverlay(t *testing.T) {
	for _, fstype := range []string{"btrfs", "xfs"} {
		t.Run(fstype, func(t *testing.T) {
			requireIntegration(t, "mkfs."+fstype, "filefrag", "mount", "umount")
			ctx := context.Background()
			m := realManager(t)
			mnt := mountLoopFS(t, fstype, 1<<30)

			st, why := m.DetectStrategy(ctx, mnt)
			t.Logf("DetectStrategy(%s on %s) = %s: %s", mnt, fstype, st, why)
			if st != StrategyReflink {
				t.Fatalf("DetectStrategy on %s = %s (%s), want reflink", fstype, st, why)
			}

			rootfs := filepath.Join(mnt, "rootfs.ext4")
			hello := makeExt4(t, rootfs, 256<<20, 32<<20)
			before := sha(t, rootfs)
			spec := OverlaySpec{VMID: testVMID, RootfsPath: rootfs, OverlayPath: filepath.Join(mnt, "system.ext4"), SizeBytes: 512 << 20, Strategy: st}
			if err := m.CreateOverlay(ctx, spec); err != nil {
				t.Fatalf("CreateOverlay: %v", err)
			}
			checkExt4(t, spec.OverlayPath, hello, 512<<20)
			if sha(t, rootfs) != before {
				t.Error("the rootfs changed")
			}
			// The overlay shares the rootfs's blocks: the clone happened.
			frag := sh(t, "filefrag", "-v", spec.OverlayPath)
			if !strings.Contains(frag, "shared") {
				t.Errorf("overlay has no shared extents:\n%s", frag)
			}
			if a, err := m.AttachOverlay(ctx, spec); err != nil || a.Device != spec.OverlayPath {
				t.Errorf("AttachOverlay = %+v, %v", a, err)
			}
		})
	}
}

func TestIntegrationCopyOverlayExt4(t *testing.T) {
	requireIntegration(t, "mount", "umount")
	ctx := context.Background()
	m := realManager(t)
	mnt := mountLoopFS(t, "ext4", 1<<30)
	st, why := m.DetectStrategy(ctx, mnt)
	if st != StrategyCopy {
		t.Fatalf("DetectStrategy on ext4 = %s (%s), want copy", st, why)
	}
	rootfs := filepath.Join(mnt, "rootfs.ext4")
	hello := makeExt4(t, rootfs, 256<<20, 16<<20)
	rootAlloc, _ := AllocatedBytes(rootfs)
	spec := OverlaySpec{VMID: testVMID, RootfsPath: rootfs, OverlayPath: filepath.Join(mnt, "system.ext4"), SizeBytes: 512 << 20, Strategy: st}
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatalf("CreateOverlay: %v", err)
	}
	checkExt4(t, spec.OverlayPath, hello, 512<<20)
	alloc, _ := AllocatedBytes(spec.OverlayPath)
	t.Logf("rootfs 256 MiB allocates %d bytes; 512 MiB copy allocates %d", rootAlloc, alloc)
	// The copy keeps the holes: it allocates about what the rootfs
	// does (plus the metadata resize2fs adds), not its size.
	if alloc > rootAlloc+32<<20 {
		t.Errorf("copy allocates %d bytes, rootfs %d: holes were filled", alloc, rootAlloc)
	}

	// vm reset-system: the guest's changes go, the copy is fresh.
	sh(t, "debugfs", "-w", "-R", "rm /hello.txt", spec.OverlayPath)
	if err := m.ResetOverlay(ctx, spec); err != nil {
		t.Fatalf("ResetOverlay: %v", err)
	}
	checkExt4(t, spec.OverlayPath, hello, 512<<20)
}

func TestIntegrationWorkDisk(t *testing.T) {
	requireIntegration(t)
	ctx := context.Background()
	m := realManager(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "work-seed.ext4")
	hello := makeExt4(t, seed, 32<<20, 1<<20)
	disk := filepath.Join(dir, "vm", "work.ext4")
	if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
		t.Fatal(err)
	}
	// The VM's user: e2fsprogs run as it, on the disk passed as a
	// descriptor; it cannot even search the VM's directory (0700,
	// root's).
	owner := hostexec.Credential{UID: 1500000002, GID: 1500000002}
	if err := m.CreateWorkDisk(ctx, seed, disk, 256<<20, owner); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	checkExt4(t, disk, hello, 256<<20)
	checkOwned(t, disk, owner)

	// A disk root still owns (made before the VM had a user of its
	// own) is handed over, then grown.
	if err := os.Chown(disk, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.GrowWorkDisk(ctx, disk, 512<<20, owner); err != nil {
		t.Fatalf("GrowWorkDisk: %v", err)
	}
	checkExt4(t, disk, hello, 512<<20)
	checkOwned(t, disk, owner)
	if err := m.GrowWorkDisk(ctx, disk, 256<<20, owner); model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "shrinking") {
		t.Errorf("shrinking GrowWorkDisk: %v, want EINVALID saying shrinking is not supported", err)
	}
	if err := m.GrowWorkDisk(ctx, disk, 512<<20, owner); err != nil {
		t.Errorf("same-size GrowWorkDisk: %v", err)
	}
	checkExt4(t, disk, hello, 512<<20)

	// A disk that holds no filesystem e2fsck can find fails the check
	// as the VM's user and keeps its size.
	bad := filepath.Join(dir, "vm", "bad.ext4")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("guest garbage\n"), 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.GrowWorkDisk(ctx, bad, 64<<20, owner); err == nil || !strings.Contains(err.Error(), "as 1500000002:1500000002") {
		t.Errorf("GrowWorkDisk of a corrupt filesystem: %v, want e2fsck's failure as the VM's user", err)
	}
	if got := fileSize(t, bad); got != 28<<20 {
		t.Errorf("failed grow left %d bytes", got)
	}

	// Without a seed: an empty ext4 filesystem of the size asked.
	empty := filepath.Join(dir, "vm", "empty.ext4")
	if err := m.CreateWorkDisk(ctx, "", empty, 64<<20, owner); err != nil {
		t.Fatalf("CreateWorkDisk without seed: %v", err)
	}
	checkOwned(t, empty, owner)
	sh(t, "e2fsck", "-fn", empty)
	if got := fsBytes(t, empty); got != 64<<20 {
		t.Errorf("seedless work disk is %d bytes, want %d", got, 64<<20)
	}
}

// TestIntegrationDetectStrategyHere reports what DetectStrategy picks on
// this machine's /var/lib, with no seams.
func TestIntegrationDetectStrategyHere(t *testing.T) {
	requireIntegration(t)
	m := New(hostexec.Real{}, testLogger(t), Options{})
	st, why := m.DetectStrategy(context.Background(), "/var/lib")
	t.Logf("DetectStrategy(/var/lib) = %s: %s", st, why)
	if _, err := os.Stat("/dev/mapper/control"); err != nil && st == StrategyDMSnapshot {
		t.Errorf("picked dm-snapshot without /dev/mapper/control")
	}
}

// TestIntegrationCopyVsReflinkTiming measures making a system overlay
// from a 1 GiB sparse ext4 image holding 256 MiB of data: a sparse copy
// on this machine's disk (the state directory's ext4) and a reflink on
// btrfs, both on the same disk.
func TestIntegrationCopyVsReflinkTiming(t *testing.T) {
	requireIntegration(t, "mkfs.btrfs", "mount", "umount")
	testutil.Slow(t)
	ctx := context.Background()
	m := realManager(t)

	ext4Dir := t.TempDir()
	ext4Root := filepath.Join(ext4Dir, "rootfs.ext4")
	makeExt4(t, ext4Root, 1<<30, 256<<20)
	alloc, _ := AllocatedBytes(ext4Root)

	mnt := mountLoopFS(t, "btrfs", 2<<30)
	btrfsRoot := filepath.Join(mnt, "rootfs.ext4")
	{
		in, err := os.Open(ext4Root)
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(btrfsRoot)
		if err != nil {
			t.Fatal(err)
		}
		if err := sparseCopy(ctx, out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		out.Close()
	}
	sh(t, "sync")

	for _, tc := range []struct {
		name   string
		rootfs string
		st     Strategy
	}{
		{"copy on ext4", ext4Root, StrategyCopy},
		{"copy on btrfs", btrfsRoot, StrategyCopy},
		{"reflink on btrfs", btrfsRoot, StrategyReflink},
	} {
		spec := OverlaySpec{VMID: testVMID, RootfsPath: tc.rootfs, OverlayPath: filepath.Join(filepath.Dir(tc.rootfs), "system-"+string(tc.st)+".ext4"), SizeBytes: 1 << 30, Strategy: tc.st}
		start := time.Now()
		if err := m.CreateOverlay(ctx, spec); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		took := time.Since(start)
		got, _ := AllocatedBytes(spec.OverlayPath)
		t.Logf("TIMING %-17s 1 GiB image, %d MiB allocated: overlay in %v (overlay allocates %d MiB)", tc.name, alloc>>20, took.Round(time.Millisecond), got>>20)
		if !bytes.Equal(sumOf(t, spec.OverlayPath), sumOf(t, tc.rootfs)) {
			t.Errorf("%s: overlay differs from the rootfs", tc.name)
		}
	}
}

func sumOf(t *testing.T, p string) []byte {
	s := sha(t, p)
	return s[:]
}
