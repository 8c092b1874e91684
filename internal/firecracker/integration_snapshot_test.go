package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/testutil"
)

// tickerInit is the /init of the snapshot tests' guest: it leaves a file
// and a background process behind, then prints a counter every second
// with what it sees of both, so a restored guest shows it carried
// on where it stopped.
const tickerInit = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo ` + markerUserspace + `
/bin/busybox echo kept-across-snapshots > /marker
/bin/busybox sleep 100000 &
/bin/busybox echo $! > /sleeper
i=0
while true; do
	if /bin/busybox kill -0 $(/bin/busybox cat /sleeper) 2>/dev/null; then alive=yes; else alive=no; fi
	/bin/busybox echo "tick $i file=$(/bin/busybox cat /marker) sleeper=$alive"
	i=$((i+1))
	/bin/busybox sleep 1
done
`

// buildTickerInitramfs returns an initramfs running tickerInit.
func buildTickerInitramfs(t testing.TB, dir string) string {
	t.Helper()
	bb, err := os.ReadFile(staticBusybox(t))
	if err != nil {
		t.Fatal(err)
	}
	entries := []cpioEntry{
		{name: "bin", mode: unix.S_IFDIR | 0o755},
		{name: "dev", mode: unix.S_IFDIR | 0o755},
		{name: "proc", mode: unix.S_IFDIR | 0o755},
		{name: "dev/console", mode: unix.S_IFCHR | 0o600, major: 5, minor: 1},
		{name: "dev/null", mode: unix.S_IFCHR | 0o666, major: 1, minor: 3},
		{name: "bin/busybox", mode: unix.S_IFREG | 0o755, data: bb},
		{name: "init", mode: unix.S_IFREG | 0o755, data: []byte(tickerInit)},
	}
	p := filepath.Join(dir, "ticker.cpio")
	writeFile(t, p, newcCpio(entries), 0o644)
	return p
}

var tickRe = regexp.MustCompile(`tick (\d+) file=(\S*) sleeper=(\w+)`)

// lastTick returns the last counter line of the console at path.
func lastTick(path string) (n int, file, sleeper string, ok bool) {
	raw, _ := os.ReadFile(path)
	m := tickRe.FindAllStringSubmatch(string(raw), -1)
	if len(m) == 0 {
		return 0, "", "", false
	}
	last := m[len(m)-1]
	n, _ = strconv.Atoi(last[1])
	return n, last[2], last[3], true
}

// waitTick waits until the console at path shows a tick above after.
func waitTick(ctx context.Context, t testing.TB, path string, after int) (int, string, string) {
	t.Helper()
	for {
		if n, file, sleeper, ok := lastTick(path); ok && n > after {
			return n, file, sleeper
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no tick above %d on the console:\n%s", after, readTail(path))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// launchUnprivileged starts banger-vmm-qemu as vmmUID in vmmDir with
// files as its descriptors 3, 4, ... and the tap at tapFD.
func launchUnprivileged(t testing.TB, bin, vmmDir, console, id string, files []*os.File, taps map[string]int) (*Process, *Client) {
	t.Helper()
	sock := filepath.Join(vmmDir, id+".sock")
	p, err := Launch(LaunchConfig{
		Bin: bin, APISock: sock, ID: id, LogPath: console,
		UID: vmmUID, GID: vmmUID, ExtraFiles: files, TapFDs: taps,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if Alive(p.PID) {
			unix.Kill(p.PID, unix.SIGKILL)
		}
		<-p.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitAPI(ctx, sock); err != nil {
		t.Fatalf("%v\n%s", err, readTail(console))
	}
	return p, newCheckedClient(t, sock)
}

// TestVMMSnapshotAndLoad boots a guest on banger-vmm-qemu run as an
// unprivileged uid with every file a descriptor, pauses and resumes it,
// snapshots it, kills the VMM, and loads the snapshot in a new VMM with
// another tap: the guest's counter carries on, its file and background
// process are still there, it answers on the new tap. A truncated memory
// file is refused first, and the same VMM then loads the real one.
func TestVMMSnapshotAndLoad(t *testing.T) {
	kernel := requireVMHost(t)
	testutil.Slow(t)
	dir, vmmDir, bin := unprivilegedLayout(t)
	rootOnlyCopy(t, kernel, filepath.Join(dir, "vmlinux"))
	rootOnlyCopy(t, buildTickerInitramfs(t, t.TempDir()), filepath.Join(dir, "initrd"))
	os.WriteFile(filepath.Join(dir, "data.img"), make([]byte, 4<<20), 0o600)
	ns := newNetns(t, "172.29.0.1")
	open := func(name string, flag int) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	files := []*os.File{open("vmlinux", os.O_RDONLY), open("initrd", os.O_RDONLY), open("data.img", os.O_RDWR), openTapIn(t, ns.name, ns.tap)}
	consoleA := filepath.Join(dir, "a.log")
	pA, c := launchUnprivileged(t, bin, vmmDir, consoleA, "snap-a", files, map[string]int{ns.tap: ExtraFileFD(3)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	args, err := BootArgs(BootArgsConfig{IP: "ip=172.29.0.2::172.29.0.1:255.255.255.0:bgt-snap:eth0:off"})
	if err != nil {
		t.Fatal(err)
	}
	data := must(NewDrive("data", FDPath(ExtraFileFD(2)), false, false))
	data.CacheType = CacheWriteback
	for _, step := range []func() error{
		func() error { return c.PutMachineConfig(ctx, must(NewMachineConfig(1, 256))) },
		func() error {
			return c.PutBootSource(ctx, must(NewBootSource(FDPath(ExtraFileFD(0)), FDPath(ExtraFileFD(1)), args)))
		},
		func() error { return c.PutDrive(ctx, data) },
		func() error {
			return c.PutNetworkInterface(ctx, must(NewNetworkInterface("eth0", ns.tap, "06:00:AC:1D:00:02")))
		},
		func() error { return c.InstanceStart(ctx) },
	} {
		if err := step(); err != nil {
			t.Fatalf("%v\n%s", err, readTail(consoleA))
		}
	}
	waitTick(ctx, t, consoleA, 2)

	// Paused, the counter stops; resumed, it goes on.
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Describe(ctx); err != nil || info.State != StatePaused {
		t.Errorf("after pause: %+v, %v", info, err)
	}
	paused, _, _, _ := lastTick(consoleA)
	time.Sleep(2 * time.Second)
	if n, _, _, _ := lastTick(consoleA); n > paused+1 {
		t.Errorf("the counter went from %d to %d while paused", paused, n)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	waitTick(ctx, t, consoleA, paused+1)

	// Snapshot: refused while running, taken once paused.
	state, mem := filepath.Join(vmmDir, "vm.snap"), filepath.Join(vmmDir, "vm.mem")
	snap := must(NewSnapshotCreate(state, mem))
	var ae *APIError
	if err := c.CreateSnapshot(ctx, snap); !errors.As(err, &ae) || !strings.Contains(ae.FaultMessage, "must be paused") {
		t.Errorf("snapshot while running: got %v", err)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved, _, _, _ := lastTick(consoleA)
	t0 := time.Now()
	if err := c.CreateSnapshot(ctx, snap); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consoleA))
	}
	size, used := fileUsage(t, mem)
	t.Logf("snapshot of a 256 MiB guest in %v: memory file %d bytes, %d on disk", time.Since(t0), size, used)
	if used > 128<<20 {
		t.Errorf("memory file uses %d bytes on disk: zero and untouched pages were not left out", used)
	}
	// A second snapshot of the same paused VM works too, and the VM
	// resumes after them as Firecracker's does.
	again := must(NewSnapshotCreate(filepath.Join(vmmDir, "again.snap"), filepath.Join(vmmDir, "again.mem")))
	if err := c.CreateSnapshot(ctx, again); err != nil {
		t.Fatalf("second snapshot: %v\n%s", err, readTail(consoleA))
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatalf("resume after the snapshots: %v\n%s", err, readTail(consoleA))
	}
	waitTick(ctx, t, consoleA, saved+1)
	if err := unix.Kill(pA.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-pA.Done()

	// The old tap goes; the restored guest gets another.
	run := func(args ...string) {
		t.Helper()
		if out, err := (hostexec.Real{}).Run(ctx, "ip", append([]string{"-n", ns.name}, args...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	files[3].Close()
	run("link", "del", ns.tap)
	run("tuntap", "add", "dev", "tap1", "mode", "tap")
	run("addr", "add", "172.29.0.1/24", "dev", "tap1")
	run("link", "set", "tap1", "up")
	files[3] = openTapIn(t, ns.name, "tap1")

	consoleB := filepath.Join(dir, "b.log")
	pB, cb := launchUnprivileged(t, bin, vmmDir, consoleB, "snap-b", files, map[string]int{"tap1": ExtraFileFD(3)})
	truncated := filepath.Join(vmmDir, "truncated.mem")
	raw, _ := os.ReadFile(mem)
	writeFile(t, truncated, raw[:len(raw)/2], 0o644)
	bad := must(NewSnapshotLoad(state, truncated, true, map[string]string{"eth0": "tap1"}))
	if err := cb.LoadSnapshot(ctx, bad); !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.FaultMessage, "partial") {
		t.Fatalf("load of a truncated memory file: got %v", err)
	}
	if info, err := cb.Describe(ctx); err != nil || info.State != StateNotStarted {
		t.Fatalf("after the refused load: %+v, %v", info, err)
	}
	t1 := time.Now()
	load := must(NewSnapshotLoad(state, mem, true, map[string]string{"eth0": "tap1"}))
	if err := cb.LoadSnapshot(ctx, load); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consoleB))
	}
	n, file, sleeper := waitTick(ctx, t, consoleB, -1)
	t.Logf("load to the first tick: %v (tick %d; the snapshot was taken after tick %d)", time.Since(t1), n, saved)
	if n < saved || n > saved+3 || file != "kept-across-snapshots" || sleeper != "yes" {
		t.Errorf("restored guest: tick %d (saved after %d), file %q, sleeper %q", n, saved, file, sleeper)
	}
	if raw, _ := os.ReadFile(consoleB); strings.Contains(string(raw), "Linux version") {
		t.Errorf("the guest booted again instead of carrying on:\n%s", tail(string(raw), 20))
	}
	if out, err := (hostexec.Real{}).Run(ctx, "ip", "netns", "exec", ns.name, "busybox", "ping", "-c", "2", "-W", "10", "172.29.0.2"); err != nil {
		t.Errorf("ping the restored guest on tap1: %v\n%s", err, out)
	}
	vc, err := cb.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vc.NetworkInterfaces) != 1 || vc.NetworkInterfaces[0].HostDevName != "tap1" || len(vc.Drives) != 1 || vc.Drives[0].PathOnHost != FDPath(ExtraFileFD(2)) {
		t.Errorf("GET /vm/config after the load: %+v", vc)
	}
	if info, err := cb.Describe(ctx); err != nil || info.State != StateRunning {
		t.Errorf("after the load: %+v, %v", info, err)
	}
	unix.Kill(pB.PID, unix.SIGKILL)
}

// TestVMMSnapshotBzImage snapshots a distro kernel (a bzImage with an
// initrd, BANGER_TEST_BZIMAGE) and loads it in a new VMM: QEMU can only
// rebuild such a machine with the kernel and initrd themselves, which the
// load finds again at the same descriptor numbers.
func TestVMMSnapshotBzImage(t *testing.T) {
	requireVMHost(t)
	bz := testutil.RequireEnvFile(t, "BANGER_TEST_BZIMAGE", "a distro bzImage (scripts/fetch-test-bzimage.sh prints one)")
	testutil.Slow(t)
	dir, vmmDir, bin := unprivilegedLayout(t)
	rootOnlyCopy(t, bz, filepath.Join(dir, "vmlinuz"))
	rootOnlyCopy(t, buildTickerInitramfs(t, t.TempDir()), filepath.Join(dir, "initrd"))
	var files []*os.File
	for _, name := range []string{"vmlinuz", "initrd"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	consoleA := filepath.Join(dir, "a.log")
	pA, c := launchUnprivileged(t, bin, vmmDir, consoleA, "bz-a", files, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	for _, step := range []func() error{
		func() error { return c.PutMachineConfig(ctx, must(NewMachineConfig(1, 512))) },
		func() error {
			return c.PutBootSource(ctx, must(NewBootSource(FDPath(ExtraFileFD(0)), FDPath(ExtraFileFD(1)), "console=ttyS0 reboot=k panic=1")))
		},
		func() error { return c.InstanceStart(ctx) },
		func() error { waitTick(ctx, t, consoleA, 1); return c.Pause(ctx) },
	} {
		if err := step(); err != nil {
			t.Fatalf("%v\n%s", err, readTail(consoleA))
		}
	}
	saved, _, _, _ := lastTick(consoleA)
	state, mem := filepath.Join(vmmDir, "bz.snap"), filepath.Join(vmmDir, "bz.mem")
	if err := c.CreateSnapshot(ctx, must(NewSnapshotCreate(state, mem))); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consoleA))
	}
	unix.Kill(pA.PID, unix.SIGKILL)
	<-pA.Done()
	consoleB := filepath.Join(dir, "b.log")
	_, cb := launchUnprivileged(t, bin, vmmDir, consoleB, "bz-b", files, nil)
	if err := cb.LoadSnapshot(ctx, must(NewSnapshotLoad(state, mem, true, nil))); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consoleB))
	}
	n, file, sleeper := waitTick(ctx, t, consoleB, -1)
	if n < saved || n > saved+3 || file != "kept-across-snapshots" || sleeper != "yes" {
		t.Errorf("restored guest: tick %d (saved after %d), file %q, sleeper %q", n, saved, file, sleeper)
	}
}

// fileUsage returns a file's size and the bytes it really takes on disk
// (a memory file is sparse).
func fileUsage(t testing.TB, path string) (size, used int64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Blocks * 512
}
