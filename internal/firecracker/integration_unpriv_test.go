package firecracker

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/testutil"
)

// vmmUID is the unprivileged uid and gid the tests run the VMM as, in the
// range bangerd gives VMMs.
const vmmUID = 1500000002

// openTapIn opens the tap name inside the network namespace ns with
// OpenTap, as the daemon does in its own namespace. The thread that
// entered ns is never handed back to the runtime, so it dies with its
// goroutine.
func openTapIn(t testing.TB, ns, name string) *os.File {
	t.Helper()
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer h.Close()
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		f, err := OpenTap(name)
		done <- result{f, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.f.Close() })
	return r.f
}

// rootOnlyCopy copies src to dst, owned by root with mode 0600: a file
// the VMM's uid cannot open by its path.
func rootOnlyCopy(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// unprivilegedLayout makes the directories of a VM as the daemon lays
// them out: the VM dir and its parents root-owned and traversable
// (0711), the VMM's own dir owned by its uid (0700), and the VMM binary
// reachable by that uid.
func unprivilegedLayout(t testing.TB) (dir, vmmDir, bin string) {
	t.Helper()
	bin = vmmBinary(t)
	os.Chmod(filepath.Dir(bin), 0o755)
	dir = t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		os.Chmod(d, 0o711)
	}
	vmmDir = filepath.Join(dir, "vmm")
	if err := os.Mkdir(vmmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(vmmDir, vmmUID, vmmUID); err != nil {
		t.Fatal(err)
	}
	return dir, vmmDir, bin
}

// TestVMMUnprivilegedWithDescriptors runs banger-vmm-qemu as an
// unprivileged uid with no capabilities, the kernel, both disks (root-owned,
// mode 0600) and the tap passed as descriptors, as bangerd runs it: the
// guest boots and answers on the tap, QEMU runs as that uid with no
// capabilities and under its seccomp sandbox.
func TestVMMUnprivilegedWithDescriptors(t *testing.T) {
	kernel := requireVMHost(t)
	testutil.Slow(t)
	dir, vmmDir, bin := unprivilegedLayout(t)
	rootfs := buildRootfs(t, t.TempDir())
	rootOnlyCopy(t, kernel, filepath.Join(dir, "vmlinux"))
	rootOnlyCopy(t, rootfs, filepath.Join(dir, "rootfs.ext4"))
	os.WriteFile(filepath.Join(dir, "data.img"), make([]byte, 1<<20), 0o600)
	ns := newNetns(t, "172.31.0.1")

	open := func(name string, flag int) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	files := []*os.File{
		open("vmlinux", os.O_RDONLY), open("rootfs.ext4", os.O_RDWR), open("data.img", os.O_RDONLY),
		openTapIn(t, ns.name, ns.tap),
	}
	sock, consolePath := filepath.Join(vmmDir, "api.sock"), filepath.Join(dir, "vm.log")
	p, err := Launch(LaunchConfig{
		Bin: bin, APISock: sock, ID: "it-unpriv", LogPath: consolePath,
		UID: vmmUID, GID: vmmUID, ExtraFiles: files, TapFDs: map[string]int{ns.tap: ExtraFileFD(3)},
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
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if err := p.WaitAPI(ctx, sock); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consolePath))
	}
	c := newCheckedClient(t, sock)
	args, err := BootArgs(BootArgsConfig{IP: "ip=172.31.0.2::172.31.0.1:255.255.255.0:bgt-guest:eth0:off"})
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error {
			return c.PutLogger(ctx, must(NewLogger(filepath.Join(vmmDir, "vmm.log"), "Info")))
		},
		func() error { return c.PutMetrics(ctx, must(NewMetrics(filepath.Join(vmmDir, "metrics")))) },
		func() error { return c.PutMachineConfig(ctx, must(NewMachineConfig(1, 256))) },
		func() error {
			return c.PutBootSource(ctx, must(NewBootSource(FDPath(ExtraFileFD(0)), "", args)))
		},
		func() error {
			d := must(NewDrive("rootfs", FDPath(ExtraFileFD(1)), true, false))
			d.CacheType = CacheWriteback
			return c.PutDrive(ctx, d)
		},
		func() error { return c.PutDrive(ctx, must(NewDrive("data", FDPath(ExtraFileFD(2)), false, true))) },
		func() error {
			return c.PutNetworkInterface(ctx, must(NewNetworkInterface("eth0", ns.tap, "06:00:AC:1F:00:02")))
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("%v\n%s", err, readTail(consolePath))
		}
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatalf("%v\n%s", err, readTail(consolePath))
	}
	console, err := waitConsole(ctx, consolePath, "inet 172.31.0.2/24")
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(console, 30))
	}
	for _, want := range []string{markerUserspace, "BANGER-BLOCK vda vdb", "inet 172.31.0.2/24"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, tail(console, 25))
		}
	}
	if out, err := (hostexec.Real{}).Run(ctx, "ip", "netns", "exec", ns.name, "busybox", "ping", "-c", "2", "-W", "10", "172.31.0.2"); err != nil {
		t.Errorf("ping the guest: %v\n%s", err, out)
	}

	kids := childPIDs(p.PID)
	if len(kids) != 1 {
		t.Fatalf("want one qemu child of the vmm, got %v", kids)
	}
	uid := strconv.Itoa(vmmUID)
	for name, pid := range map[string]int{"vmm": p.PID, "qemu": kids[0]} {
		st := procStatus(t, pid)
		if want := strings.Repeat(uid+" ", 3) + uid; st["Uid"] != want || st["Gid"] != want {
			t.Errorf("%s: Uid %q Gid %q, want %s everywhere", name, st["Uid"], st["Gid"], uid)
		}
		if st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" || st["Groups"] != "" {
			t.Errorf("%s: CapEff %s CapPrm %s Groups %q, want none", name, st["CapEff"], st["CapPrm"], st["Groups"])
		}
		if name == "qemu" && (st["Seccomp"] != "2" || st["NoNewPrivs"] != "1") {
			t.Errorf("qemu: Seccomp %s NoNewPrivs %s, want the sandbox's filter (2) and no new privileges", st["Seccomp"], st["NoNewPrivs"])
		}
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kids[0]))
	if strings.Contains(string(cmdline), filepath.Join(dir, "rootfs.ext4")) || !strings.Contains(string(cmdline), "/dev/fdset/") {
		t.Errorf("qemu opened a disk by path: %q", cmdline)
	}
	// The VMM wrote only in its own directory.
	for _, f := range []string{"api.sock", "api.sock.qmp", "vmm.log", "metrics"} {
		if st, err := os.Stat(filepath.Join(vmmDir, f)); err != nil || st.Sys().(*syscall.Stat_t).Uid != vmmUID {
			t.Errorf("%s: %v, want it owned by the vmm uid", f, err)
		}
	}

	res, err := Stop(ctx, c, p.PID, 2*time.Minute)
	if err != nil || !res.Clean {
		t.Fatalf("Stop: got %+v, %v; want clean\n%s", res, err, readTail(consolePath))
	}
}
