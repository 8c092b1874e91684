package firecracker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/hostexec"
	"banger/internal/testutil"
)

// The integration tests drive the real banger-vmm-qemu with this
// package's client, Launch, FindPID and Stop, booting a real kernel
// (BANGER_TEST_KERNEL: a Firecracker-config ELF vmlinux) on a real busybox
// root filesystem. Every request body is checked against the official
// spec before it is sent (newCheckedClient).

const bootTimeout = 3 * time.Minute

func requireVMHost(t testing.TB) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "qemu-system-x86_64", "mkfs.ext4", "busybox", "ip", "go")
	return testutil.RequireEnvFile(t, "BANGER_TEST_KERNEL", "a Firecracker-config ELF vmlinux (scripts/prepare-artifacts.sh builds one)")
}

// netns is a throwaway network namespace with a tap device whose host
// side is gw/24.
type netns struct {
	name, tap, gw string
}

func newNetns(t testing.TB, gw string) *netns {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	n := &netns{name: "bgt-" + hex.EncodeToString(b), tap: "tap0", gw: gw}
	run := func(args ...string) {
		t.Helper()
		if _, err := (hostexec.Real{}).Run(context.Background(), "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	run("netns", "add", n.name)
	t.Cleanup(func() { hostexec.Real{}.Run(context.Background(), "ip", "netns", "del", n.name) })
	run("-n", n.name, "link", "set", "lo", "up")
	run("-n", n.name, "tuntap", "add", "dev", n.tap, "mode", "tap")
	run("-n", n.name, "addr", "add", gw+"/24", "dev", n.tap)
	run("-n", n.name, "link", "set", n.tap, "up")
	return n
}

// vmSetup says how to configure a test VM.
type vmSetup struct {
	kernel, initrd string
	rootfs, data   string
	ipArg          string
	nic            *netns
	detached       bool // start the VMM so that we are not its parent
	memMiB         int
}

// testVM is a launched VMM.
type testVM struct {
	dir, sock, console, metrics string
	p                           *Process // nil when detached
	pid                         int
	c                           *Client
	apiReady                    time.Duration
}

// launchVM starts banger-vmm-qemu and waits for its API. Cleanup kills it
// if a test left it running.
func launchVM(t testing.TB, s vmSetup) *testVM {
	t.Helper()
	bin := vmmBinary(t)
	dir := t.TempDir()
	vm := &testVM{
		dir: dir, sock: filepath.Join(dir, "fc.sock"),
		console: filepath.Join(dir, "vm.log"), metrics: filepath.Join(dir, "fc.metrics"),
	}
	if s.nic != nil {
		// ip netns exec execs the VMM in place, so the PID is the VMM's.
		wrapper := filepath.Join(dir, "vmm-in-netns")
		writeFile(t, wrapper, []byte(fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", s.nic.name, bin)), 0o755)
		bin = wrapper
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if s.detached {
		// A shell starts the VMM in the background and exits: the VMM is
		// reparented, as it is after the daemon that launched it dies.
		cfg := LaunchConfig{Bin: bin, APISock: vm.sock, ID: "it-detached", LogPath: vm.console}
		argv := append([]string{bin}, cfg.Args()...)
		script := `setsid "$@" </dev/null >>"$LOG" 2>&1 & echo $!`
		out, err := (hostexec.Real{}).Run(ctx, "env", append([]string{"LOG=" + vm.console, "/bin/sh", "-c", script, "sh"}, argv...)...)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Sscanf(strings.TrimSpace(string(out)), "%d", &vm.pid)
		if err := WaitAPI(ctx, vm.sock); err != nil {
			t.Fatalf("%v\n%s", err, readTail(vm.console))
		}
	} else {
		p, err := Launch(LaunchConfig{Bin: bin, APISock: vm.sock, ID: "it-vm", LogPath: vm.console})
		if err != nil {
			t.Fatal(err)
		}
		vm.p, vm.pid = p, p.PID
		if err := p.WaitAPI(ctx, vm.sock); err != nil {
			t.Fatalf("%v\n%s", err, readTail(vm.console))
		}
	}
	vm.apiReady = time.Since(start)
	t.Cleanup(func() {
		if Alive(vm.pid) {
			syscall.Kill(vm.pid, syscall.SIGKILL)
		}
		if vm.p != nil {
			<-vm.p.Done()
		}
	})
	vm.c = newCheckedClient(t, vm.sock)
	return vm
}

func readTail(path string) string {
	raw, _ := os.ReadFile(path)
	return tail(string(raw), 30)
}

// configure sends the pre-boot configuration, as the daemon does.
func (vm *testVM) configure(t testing.TB, s vmSetup) {
	t.Helper()
	ctx := context.Background()
	mem := s.memMiB
	if mem == 0 {
		mem = 256
	}
	args, err := BootArgs(BootArgsConfig{IP: s.ipArg})
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error {
			return vm.c.PutLogger(ctx, must(NewLogger(filepath.Join(vm.dir, "vmm-own.log"), "Info")))
		},
		func() error { return vm.c.PutMetrics(ctx, must(NewMetrics(vm.metrics))) },
		func() error { return vm.c.PutMachineConfig(ctx, must(NewMachineConfig(1, mem))) },
		func() error { return vm.c.PutBootSource(ctx, must(NewBootSource(s.kernel, s.initrd, args))) },
	}
	if s.rootfs != "" {
		steps = append(steps, func() error { return vm.c.PutDrive(ctx, must(NewDrive("rootfs", s.rootfs, true, false))) })
	}
	if s.data != "" {
		steps = append(steps, func() error { return vm.c.PutDrive(ctx, must(NewDrive("data", s.data, false, true))) })
	}
	if s.nic != nil {
		steps = append(steps, func() error {
			return vm.c.PutNetworkInterface(ctx, must(NewNetworkInterface("eth0", s.nic.tap, "06:00:AC:1E:00:02")))
		})
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
}

// start sends InstanceStart and waits for the userspace marker; it
// returns the console and the time from InstanceStart to the marker.
func (vm *testVM) start(t testing.TB) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	begin := time.Now()
	if err := vm.c.InstanceStart(ctx); err != nil {
		t.Fatalf("%v\n%s", err, readTail(vm.console))
	}
	console, err := waitConsole(ctx, vm.console, markerUserspace)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(console, 30))
	}
	return console, time.Since(begin)
}

// TestVMMBootsAndStopsCleanly is the daemon's path end to end: launch,
// configure (logger, metrics, machine, boot source with ip=, root and
// data drives, a tap NIC in a throwaway netns), start, see userspace and
// the network configured by ip=, ping the guest from the netns, read
// metrics, then Ctrl-Alt-Del: the guest's init shuts down cleanly and the
// VMM exits 0 by itself.
func TestVMMBootsAndStopsCleanly(t *testing.T) {
	kernel := requireVMHost(t)
	testutil.Slow(t)
	dir := t.TempDir()
	ns := newNetns(t, "172.30.0.1")
	s := vmSetup{
		kernel: kernel, rootfs: buildRootfs(t, dir), data: filepath.Join(dir, "data.img"), nic: ns,
		ipArg: "ip=172.30.0.2::172.30.0.1:255.255.255.0:bgt-guest:eth0:off:172.30.0.1",
	}
	writeFile(t, s.data, make([]byte, 1<<20), 0o644)
	vm := launchVM(t, s)
	vm.configure(t, s)
	_, bootTime := vm.start(t)
	t.Logf("api ready %v after launch; userspace %v after InstanceStart", vm.apiReady, bootTime)

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	info, err := vm.c.Describe(ctx)
	if err != nil || info.State != StateRunning || info.ID != "it-vm" {
		t.Errorf("Describe: got %+v, %v; want it-vm Running", info, err)
	}
	// The kernel configured eth0 from ip= before init ran.
	console, err := waitConsole(ctx, vm.console, "nameserver 172.30.0.1")
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(console, 30))
	}
	for _, want := range []string{"BANGER-BLOCK vda vdb", "inet 172.30.0.2/24", "IP-Config: Complete"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, tail(console, 25))
		}
	}
	// The guest answers on the tap, inside the netns.
	if out, err := (hostexec.Real{}).Run(ctx, "ip", "netns", "exec", ns.name, "busybox", "ping", "-c", "3", "-W", "10", "172.30.0.2"); err != nil {
		t.Errorf("ping the guest: %v\n%s", err, out)
	}
	if err := vm.c.FlushMetrics(ctx); err != nil {
		t.Fatal(err)
	}
	checkMetrics(t, vm.metrics)
	// The VMM's own log went to the logger's file, not the console.
	if own, _ := os.ReadFile(filepath.Join(vm.dir, "vmm-own.log")); !strings.Contains(string(own), "starting microvm") {
		t.Errorf("vmm log lacks the start line:\n%s", own)
	}
	// Pre-boot calls are refused now, with Firecracker's message.
	var ae *APIError
	if err := vm.c.PutMachineConfig(ctx, must(NewMachineConfig(2, 256))); !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.FaultMessage, "not supported after starting") {
		t.Errorf("PUT /machine-config after start: got %v", err)
	}

	res, err := Stop(ctx, vm.c, vm.pid, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Clean || res.Killed {
		t.Fatalf("Stop: got %+v, want a clean stop\n%s", res, readTail(vm.console))
	}
	<-vm.p.Done()
	if st, err := vm.p.ExitState(); err != nil || st.ExitCode() != 0 {
		t.Errorf("vmm exit: %v, %v; want status 0", st, err)
	}
	if raw, _ := os.ReadFile(vm.console); !strings.Contains(string(raw), markerShutdown) {
		t.Errorf("the guest did not run its shutdown actions:\n%s", tail(string(raw), 20))
	}
	for _, p := range []string{vm.sock, vm.sock + ".qmp"} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// checkMetrics checks the metrics file's last line: Firecracker's shape,
// the root drive read, the NIC carried the pings.
func checkMetrics(t testing.TB, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("metrics line %q: %v", lines[len(lines)-1], err)
	}
	var root struct {
		ReadBytes uint64 `json:"read_bytes"`
		ReadCount uint64 `json:"read_count"`
	}
	var eth0 struct {
		Rx uint64 `json:"rx_packets_count"`
		Tx uint64 `json:"tx_packets_count"`
	}
	json.Unmarshal(m["block_rootfs"], &root)
	json.Unmarshal(m["net_eth0"], &eth0)
	if _, ok := m["utc_timestamp_ms"]; !ok || root.ReadBytes == 0 || root.ReadCount == 0 || eth0.Rx < 3 || eth0.Tx < 3 {
		t.Errorf("metrics: got %s", lines[len(lines)-1])
	}
	if _, ok := m["block_data"]; !ok {
		t.Errorf("metrics lack block_data: %s", lines[len(lines)-1])
	}
}

// TestVMMRediscoveredAfterClientLoss loses everything but the socket
// path, as a daemon crash would, with the VMM no longer our child: the
// PID comes back through FindPID (not QEMU's, whose argv holds the QMP
// path next to the socket) and Stop ends the VM cleanly without being its
// parent.
func TestVMMRediscoveredAfterClientLoss(t *testing.T) {
	kernel := requireVMHost(t)
	testutil.Slow(t)
	dir := t.TempDir()
	s := vmSetup{kernel: kernel, rootfs: buildRootfs(t, dir), detached: true}
	vm := launchVM(t, s)
	vm.configure(t, s)
	vm.start(t)
	sock, launched := vm.sock, vm.pid
	vm = nil // the daemon "crashed"

	pid, err := FindPID(sock)
	if err != nil {
		t.Fatal(err)
	}
	if pid != launched {
		t.Fatalf("FindPID: got %d, want %d", pid, launched)
	}
	if kids := childPIDs(pid); len(kids) != 1 {
		t.Errorf("want exactly one child (qemu) of the vmm, got %v", kids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	c := newCheckedClient(t, sock)
	if info, err := c.Describe(ctx); err != nil || info.State != StateRunning {
		t.Fatalf("Describe: %+v, %v", info, err)
	}
	res, err := Stop(ctx, c, pid, 2*time.Minute)
	if err != nil || !res.Clean {
		t.Fatalf("Stop: got %+v, %v; want clean", res, err)
	}
	if Alive(pid) {
		t.Error("vmm still alive")
	}
	if _, err := FindPID(sock); err == nil {
		t.Error("FindPID still finds a vmm for the socket")
	}
}

// TestVMMDeathTakesQEMUDown kills banger-vmm-qemu with SIGKILL (no chance
// to clean up): its QEMU must die with it (PR_SET_PDEATHSIG).
func TestVMMDeathTakesQEMUDown(t *testing.T) {
	kernel := requireVMHost(t)
	dir := t.TempDir()
	s := vmSetup{kernel: kernel, rootfs: buildRootfs(t, dir)}
	vm := launchVM(t, s)
	vm.configure(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := vm.c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	kids := childPIDs(vm.pid)
	if len(kids) != 1 {
		t.Fatalf("want one qemu child, got %v", kids)
	}
	qemu := kids[0]
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-vm.p.Done()
	deadline := time.Now().Add(10 * time.Second)
	for Alive(qemu) {
		if time.Now().After(deadline) {
			syscall.Kill(qemu, syscall.SIGKILL)
			t.Fatalf("qemu %d outlived its vmm", qemu)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVMMBootsBzImageWithInitrd boots a distro kernel (Debian's cloud
// bzImage, BANGER_TEST_BZIMAGE) with an initramfs built here, whose /init
// prints the marker and reboots: the VMM then exits 0 by itself, as
// Firecracker does when its guest reboots.
func TestVMMBootsBzImageWithInitrd(t *testing.T) {
	requireVMHost(t)
	bz := testutil.RequireEnvFile(t, "BANGER_TEST_BZIMAGE", "a distro bzImage (scripts/fetch-test-bzimage.sh prints one)")
	testutil.Slow(t)
	dir := t.TempDir()
	s := vmSetup{kernel: bz, initrd: buildInitramfs(t, dir), memMiB: 512}
	vm := launchVM(t, s)
	vm.configure(t, s)
	console, bootTime := vm.start(t)
	t.Logf("bzImage: userspace %v after InstanceStart", bootTime)
	if !strings.Contains(console, "BANGER-KERNEL") {
		console, _ = waitConsole(context.Background(), vm.console, "BANGER-KERNEL")
	}
	select {
	case <-vm.p.Done():
	case <-time.After(bootTimeout):
		t.Fatalf("vmm still running after the guest rebooted\n%s", readTail(vm.console))
	}
	if st, err := vm.p.ExitState(); err != nil || st.ExitCode() != 0 {
		t.Errorf("vmm exit: %v, %v; want status 0", st, err)
	}
	if !strings.Contains(console, "-cloud-amd64") {
		t.Errorf("console does not show the distro kernel running:\n%s", tail(console, 10))
	}
}

// BenchmarkVMMBoot measures, per boot, the time from starting
// banger-vmm-qemu to its API answering and from InstanceStart to the
// guest's first userspace line on the console, then stops the VM with
// Ctrl-Alt-Del. Run it as root with BANGER_TEST_KERNEL set:
//
//	go test ./internal/firecracker -run '^$' -bench VMMBoot -benchtime 5x
func BenchmarkVMMBoot(b *testing.B) {
	kernel := requireVMHost(b)
	rootfs := buildRootfs(b, b.TempDir())
	var api, user, stop time.Duration
	for i := 0; i < b.N; i++ {
		s := vmSetup{kernel: kernel, rootfs: rootfs}
		vm := launchVM(b, s)
		vm.configure(b, s)
		_, bootTime := vm.start(b)
		t0 := time.Now()
		res, err := Stop(context.Background(), vm.c, vm.pid, 2*time.Minute)
		if err != nil || !res.Clean {
			b.Fatalf("stop: %+v, %v", res, err)
		}
		stop += time.Since(t0)
		api += vm.apiReady
		user += bootTime
		b.Logf("boot %d: api ready %v, userspace %v", i+1, vm.apiReady, bootTime)
	}
	b.ReportMetric(float64(api.Milliseconds())/float64(b.N), "api-ready-ms")
	b.ReportMetric(float64(user.Milliseconds())/float64(b.N), "userspace-ms")
	b.ReportMetric(float64(stop.Milliseconds())/float64(b.N), "clean-stop-ms")
}
