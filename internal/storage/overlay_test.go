package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

// dmSpec makes a 64 MiB rootfs and returns a dm-snapshot spec for it.
func dmSpec(t *testing.T) OverlaySpec {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "images", "rootfs.ext4")
	makeImage(t, rootfs, 64<<20, map[int64][]byte{4096: pattern(4096, 1)})
	return OverlaySpec{
		VMID:        testVMID,
		RootfsPath:  rootfs,
		OverlayPath: filepath.Join(dir, "vms", "vm1", "system.cow"),
		SizeBytes:   1 << 30,
		Strategy:    StrategyDMSnapshot,
	}
}

func mkdirFor(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestDMSnapshotLifecycle(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)

	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatalf("CreateOverlay: %v", err)
	}
	if got := fileSize(t, spec.OverlayPath); got != 1<<30 {
		t.Errorf("COW size = %d, want %d", got, 1<<30)
	}
	if got, err := AllocatedBytes(spec.OverlayPath); err != nil || got != 0 {
		t.Errorf("COW allocates %d bytes (err %v), want 0: it must be sparse", got, err)
	}
	if got := o.Runner().Calls(); len(got) != 0 {
		t.Errorf("CreateOverlay ran %q, want no commands", got)
	}

	a, err := m.AttachOverlay(ctx, spec)
	if err != nil {
		t.Fatalf("AttachOverlay: %v", err)
	}
	want := Attached{Device: "/dev/mapper/" + testDM, Loops: []string{"/dev/loop0", "/dev/loop1"}, DMName: testDM}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("AttachOverlay = %+v, want %+v", a, want)
	}
	wantState := fmt.Sprintf("loop /dev/loop0 %s ro\nloop /dev/loop1 %s\ndm %s 0 131072 snapshot /dev/loop0 /dev/loop1 P 8\n", spec.RootfsPath, spec.OverlayPath, testDM)
	if got := o.StorageString(); got != wantState {
		t.Errorf("state after attach:\n%s\nwant:\n%s", got, wantState)
	}
	wantCalls := []string{
		"dmsetup ls",
		"losetup --find --show --read-only " + spec.RootfsPath,
		"blockdev --getsz /dev/loop0",
		"losetup --find --show " + spec.OverlayPath,
		"dmsetup create " + testDM + " --table 0 131072 snapshot /dev/loop0 /dev/loop1 P 8",
	}
	if got := o.Runner().Calls(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("attach ran:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantCalls, "\n"))
	}

	// A second attach while the first is live is a conflict and
	// changes nothing.
	if _, err := m.AttachOverlay(ctx, spec); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("second AttachOverlay: %v, want ECONFLICT", err)
	}
	// So is resetting an attached overlay.
	if err := m.ResetOverlay(ctx, spec); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("ResetOverlay while attached: %v, want ECONFLICT", err)
	}
	if got := o.StorageString(); got != wantState {
		t.Errorf("state after refused calls:\n%s\nwant:\n%s", got, wantState)
	}

	// A restarted daemon has lost a; it finds the same handles.
	restarted := managerOn(t, o)
	found, err := restarted.FindAttached(ctx, testVMID, spec.OverlayPath, spec.RootfsPath)
	if err != nil {
		t.Fatalf("FindAttached: %v", err)
	}
	if !reflect.DeepEqual(found, want) {
		t.Errorf("FindAttached = %+v, want %+v", found, want)
	}

	o.Runner().Reset()
	if err := restarted.DetachOverlay(ctx, found); err != nil {
		t.Fatalf("DetachOverlay: %v", err)
	}
	if got := o.StorageString(); got != "" {
		t.Errorf("state after detach:\n%s\nwant nothing", got)
	}
	wantCalls = []string{"dmsetup remove " + testDM, "losetup -d /dev/loop1", "losetup -d /dev/loop0"}
	if got := o.Runner().Calls(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("detach ran %q, want %q", got, wantCalls)
	}
	// Detaching again finds everything gone, which is not an error.
	if err := restarted.DetachOverlay(ctx, found); err != nil {
		t.Errorf("second DetachOverlay: %v", err)
	}
	if a, err := restarted.FindAttached(ctx, testVMID, spec.OverlayPath, spec.RootfsPath); err != nil || !reflect.DeepEqual(a, Attached{}) {
		t.Errorf("FindAttached after detach = %+v, %v; want nothing", a, err)
	}

	// The COW survives stop and start: attaching again reuses it.
	if _, err := m.AttachOverlay(ctx, spec); err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	if err := m.DetachVM(ctx, testVMID, spec.OverlayPath, spec.RootfsPath); err != nil {
		t.Fatalf("DetachVM: %v", err)
	}
	if got := o.StorageString(); got != "" {
		t.Errorf("state after DetachVM:\n%s", got)
	}
}

func TestAttachUndoesPartialWork(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail string // command prefix that fails
	}{
		{"base loop", "losetup --find --show --read-only"},
		{"size", "blockdev --getsz"},
		{"cow loop", "losetup --find --show /"},
		{"dmsetup create", "dmsetup create"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m, o := newFake(t)
			spec := dmSpec(t)
			mkdirFor(t, spec.OverlayPath)
			if err := m.CreateOverlay(ctx, spec); err != nil {
				t.Fatal(err)
			}
			// Another VM's loop must survive the cleanup.
			other := filepath.Join(t.TempDir(), "other.cow")
			makeImage(t, other, 1<<20, nil)
			if _, err := m.attachLoop(ctx, other, false); err != nil {
				t.Fatal(err)
			}
			before := o.StorageString()

			o.Fail[tc.fail] = "injected failure"
			_, err := m.AttachOverlay(ctx, spec)
			if err == nil {
				t.Fatal("AttachOverlay succeeded despite the failure")
			}
			if !strings.Contains(err.Error(), "injected failure") {
				t.Errorf("error %q does not carry the command's output", err)
			}
			if got := o.StorageString(); got != before {
				t.Errorf("state after failed attach:\n%s\nwant as before:\n%s", got, before)
			}
		})
	}
}

func TestAttachWithoutMapperNode(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// No udev: dmsetup makes no /dev/mapper node, even with mknodes; the
	// kernel's dm-N node exists.
	root := t.TempDir()
	m.sysBlock = filepath.Join(root, "sys", "block")
	m.devDir = filepath.Join(root, "dev")
	for _, dir := range []string{"loop0", "dm-0/dm", "dm-3/dm"} {
		if err := os.MkdirAll(filepath.Join(m.sysBlock, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(m.sysBlock, "dm-0/dm/name"), []byte("something-else\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.sysBlock, "dm-3/dm/name"), []byte(testDM+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mkdirFor(t, filepath.Join(m.devDir, "x"))
	if err := os.WriteFile(filepath.Join(m.devDir, "dm-3"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m.exists = func(p string) bool {
		return p == m.dmControl || p == m.dmSysfs || (!strings.HasPrefix(p, m.mapperDir) && fileExists(p))
	}

	a, err := m.AttachOverlay(ctx, spec)
	if err != nil {
		t.Fatalf("AttachOverlay: %v", err)
	}
	if want := filepath.Join(m.devDir, "dm-3"); a.Device != want {
		t.Errorf("device = %s, want %s", a.Device, want)
	}
	if calls := o.Runner().Calls(); !contains(calls, "dmsetup mknodes "+testDM) {
		t.Errorf("no dmsetup mknodes in %q", calls)
	}

	// With no node at all, attach fails and leaves nothing.
	if err := m.DetachOverlay(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(m.devDir, "dm-3")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AttachOverlay(ctx, spec); err == nil {
		t.Error("AttachOverlay succeeded with no device node")
	}
	if got := o.StorageString(); got != "" {
		t.Errorf("state after failed attach:\n%s", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestDetachRetriesBusyDevice(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	a, err := m.AttachOverlay(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}

	// Busy for the first two tries, as while a VMM is exiting.
	f := o.Runner()
	inner := f.Handler
	busy := 2
	f.Handler = func(argv []string, stdin string) (string, error) {
		if strings.Join(argv, " ") == "dmsetup remove "+testDM && busy > 0 {
			busy--
			return "device-mapper: remove ioctl on " + testDM + "  failed: Device or resource busy", errors.New("exit status 1")
		}
		return inner(argv, stdin)
	}
	var slept int
	m.sleep = func(context.Context, time.Duration) error { slept++; return nil }
	if err := m.DetachOverlay(ctx, a); err != nil {
		t.Fatalf("DetachOverlay: %v", err)
	}
	if slept != 2 {
		t.Errorf("slept %d times, want 2", slept)
	}
	if got := o.StorageString(); got != "" {
		t.Errorf("state after detach:\n%s", got)
	}

	// Busy for good: detach gives up, and leaves the loops to the dm
	// device rather than tearing them out from under it.
	if a, err = m.AttachOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	busy = 100
	before := o.StorageString()
	if err := m.DetachOverlay(ctx, a); err == nil {
		t.Fatal("DetachOverlay succeeded on a device that stays busy")
	}
	if got := o.StorageString(); got != before {
		t.Errorf("state after failed detach:\n%s\nwant:\n%s", got, before)
	}
}

func TestFindAttachedCOWLoopWithoutDM(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// A crash between attaching the loops and creating the dm device
	// leaves both loops; the COW loop is this VM's, the rootfs loop
	// could be any VM's.
	base, _ := m.attachLoop(ctx, spec.RootfsPath, true)
	cow, _ := m.attachLoop(ctx, spec.OverlayPath, false)
	a, err := m.FindAttached(ctx, testVMID, spec.OverlayPath, spec.RootfsPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Attached{Loops: []string{cow}}); !reflect.DeepEqual(a, want) {
		t.Errorf("FindAttached = %+v, want %+v", a, want)
	}
	if err := m.DetachOverlay(ctx, a); err != nil {
		t.Fatal(err)
	}
	loops, err := m.ListLoops(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dms, err := m.ListDM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	orphans := UnreferencedLoops(loops, dms)
	if len(orphans) != 1 || orphans[0].Dev != base || orphans[0].BackFile != spec.RootfsPath {
		t.Errorf("UnreferencedLoops = %+v, want the rootfs loop %s", orphans, base)
	}
	if err := m.DetachLoop(ctx, base); err != nil {
		t.Fatal(err)
	}
	if got := o.StorageString(); got != "" {
		t.Errorf("state:\n%s", got)
	}
}

func TestListDM(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	spec := dmSpec(t)
	mkdirFor(t, spec.OverlayPath)
	if err := m.CreateOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AttachOverlay(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// A device that is not banger's is not listed.
	o.DM["vg0-root"] = &fakeos.DMDevice{Name: "vg0-root", Table: "0 100 linear 8:1 0"}
	got, err := m.ListDM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []DMDevice{{Name: testDM, Table: "0 131072 snapshot 7:0 7:1 P 8", Deps: []string{"7:0", "7:1"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListDM = %+v, want %+v", got, want)
	}
	loops, err := m.ListLoops(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u := UnreferencedLoops(loops, got); len(u) != 0 {
		t.Errorf("UnreferencedLoops = %+v, want none", u)
	}
	// Removing a missing device is not an error.
	if err := m.RemoveDM(ctx, "banger-gone"); err != nil {
		t.Errorf("RemoveDM of a missing device: %v", err)
	}

	// A control node without a loaded device-mapper (dmsetup makes the
	// node even where the kernel has none) means no dm devices, and
	// dmsetup is not run.
	o.Runner().Reset()
	m.exists = func(p string) bool { return p == m.dmControl }
	if got, err := m.ListDM(ctx); err != nil || len(got) != 0 {
		t.Errorf("ListDM without a loaded device-mapper = %v, %v", got, err)
	}
	if calls := o.Runner().Calls(); len(calls) != 0 {
		t.Errorf("ran %q without a loaded device-mapper", calls)
	}

	// A host without device-mapper has no dm devices and runs nothing.
	m.exists = fileExists
	m.dmControl = filepath.Join(t.TempDir(), "control")
	o.Runner().Reset()
	if got, err := m.ListDM(ctx); err != nil || len(got) != 0 {
		t.Errorf("ListDM without device-mapper = %v, %v", got, err)
	}
	if _, err := m.AttachOverlay(ctx, spec); model.ErrorCode(err) != model.EUNAVAILABLE {
		t.Errorf("dm-snapshot attach without device-mapper: %v, want EUNAVAILABLE", err)
	}
	if calls := o.Runner().Calls(); len(calls) != 0 {
		t.Errorf("ran %q without device-mapper", calls)
	}
}
