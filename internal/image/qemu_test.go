package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// This file holds the test harness that boots an image the way Firecracker
// would, with plain QEMU: microvm machine, PVH kernel, virtio-mmio disks, a
// tap on a bridge inside a network namespace the test owns.

// testNetns is a network namespace with a bridge; the test removes it (and
// every tap in it) at cleanup.
type testNetns struct {
	name    string
	gateway string
}

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	ns := &testNetns{name: "bgimg-" + randomSuffix(), gateway: "172.31.77.1"}
	mustRun(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	ns.run(t, "ip", "link", "set", "lo", "up")
	ns.run(t, "ip", "link", "add", "br0", "type", "bridge")
	ns.run(t, "ip", "addr", "add", ns.gateway+"/24", "dev", "br0")
	ns.run(t, "ip", "link", "set", "br0", "up")
	return ns
}

func (ns *testNetns) run(t *testing.T, argv ...string) {
	t.Helper()
	mustRun(t, append([]string{"ip", "netns", "exec", ns.name}, argv...)...)
}

func (ns *testNetns) addTap(t *testing.T, name string) {
	t.Helper()
	ns.run(t, "ip", "tuntap", "add", "dev", name, "mode", "tap")
	ns.run(t, "ip", "link", "set", name, "master", "br0", "up")
}

func mustRun(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

// dial connects to addr from inside the namespace: the calling thread
// enters it just long enough to create the socket.
func (ns *testNetns) dial(addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns.name)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns: %w", err)
	}
	conn, dialErr := net.DialTimeout("tcp", addr, timeout)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays in the wrong namespace: keep it locked so it
		// dies with this goroutine instead of serving others.
		return nil, fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}

// qemuVM is one guest under QEMU.
type qemuVM struct {
	cmd     *exec.Cmd
	qmp     string
	console string
	done    chan struct{}
	started time.Time
}

// qemuArgv returns the QEMU command line that boots kernel like
// Firecracker does (see /work/shared/ref/qemu-as-firecracker.md).
func qemuArgv(kernel, rootfs, seed, tap, mac, cmdline, qmp, console string) []string {
	return []string{
		"qemu-system-x86_64",
		"-M", "microvm,acpi=on,pit=on,pic=on,rtc=on",
		"-device", "i8042",
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024",
		"-nodefaults", "-no-reboot", "-display", "none",
		"-kernel", kernel, "-append", cmdline,
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-drive", "id=work,file=" + seed + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=work",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac=" + mac,
		"-serial", "file:" + console,
		"-qmp", "unix:" + qmp + ",server=on,wait=off",
	}
}

// guestCmdline is the kernel command line the daemon gives a guest (dns
// may be empty), plus the TSC rate QEMU needs (see hostTSCParam).
func guestCmdline(ip, gateway, hostname, dns string) string {
	ipArg := fmt.Sprintf("ip=%s::%s:255.255.255.0:%s:eth0:off", ip, gateway, hostname)
	if dns != "" {
		ipArg += ":" + dns
	}
	return strings.TrimSpace("console=ttyS0 reboot=k panic=1 root=/dev/vda rw " + ipArg + " " + hostTSCParam())
}

// hostTSCParam returns tsc_early_khz=<host rate>. Under TCG the guest's
// TSC runs at the host's rate, and the kernel's own calibration against
// the emulated PIT fails when the host is busy ("tsc: Unable to calibrate
// against PIT"), after which the boot hangs. Firecracker guests get the
// rate from KVM and need nothing of the sort.
func hostTSCParam() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		var mhz float64
		if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f", &mhz); err != nil || mhz <= 0 {
			return ""
		}
		return fmt.Sprintf("tsc_early_khz=%d", int64(mhz*1000))
	}
	return ""
}

// startVM copies the image's disks and boots them on a new tap.
func startVM(t *testing.T, ns *testNetns, art Artifacts, name, tap, mac, cmdline string) *qemuVM {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	seed := filepath.Join(dir, "work.ext4")
	mustRun(t, "cp", "--sparse=always", art.RootfsPath, rootfs)
	mustRun(t, "cp", "--sparse=always", art.WorkSeedPath, seed)
	ns.addTap(t, tap)
	vm := &qemuVM{qmp: filepath.Join(dir, "qmp.sock"), console: filepath.Join(dir, "console.log"), done: make(chan struct{})}
	argv := append([]string{"ip", "netns", "exec", ns.name}, qemuArgv(art.KernelPath, rootfs, seed, tap, mac, cmdline, vm.qmp, vm.console)...)
	vm.cmd = exec.Command(argv[0], argv[1:]...)
	vm.cmd.Stdout, vm.cmd.Stderr = os.Stderr, os.Stderr
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		_ = vm.cmd.Wait()
		close(vm.done)
	}()
	t.Cleanup(func() {
		select {
		case <-vm.done:
		default:
			_ = vm.cmd.Process.Kill()
			<-vm.done
		}
		if t.Failed() {
			if b, err := os.ReadFile(vm.console); err == nil {
				t.Logf("%s console:\n%s", name, lastLines(string(b), 60))
			}
		}
	})
	return vm
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exited waits up to timeout for QEMU to end.
func (vm *qemuVM) exited(timeout time.Duration) bool {
	select {
	case <-vm.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// sendCtrlAltDel presses Ctrl-Alt-Del through QMP, as Firecracker's
// SendCtrlAltDel does through its i8042.
func (vm *qemuVM) sendCtrlAltDel() error {
	conn, err := net.DialTimeout("unix", vm.qmp, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	dec := json.NewDecoder(r)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	call := func(cmd map[string]any) error {
		if err := json.NewEncoder(conn).Encode(cmd); err != nil {
			return err
		}
		for {
			var resp map[string]any
			if err := dec.Decode(&resp); err != nil {
				return err
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("qmp %v: %v", cmd["execute"], e)
			}
			if _, ok := resp["return"]; ok {
				return nil
			}
		}
	}
	if err := call(map[string]any{"execute": "qmp_capabilities"}); err != nil {
		return err
	}
	keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
	return call(map[string]any{"execute": "send-key", "arguments": map[string]any{"keys": keys}})
}

// sshGuest logs in as root with the daemon's key, retrying until the guest
// answers or the deadline passes. It returns the client and the host key
// the guest presented.
func sshGuest(ctx context.Context, ns *testNetns, addr string, signer ssh.Signer) (*ssh.Client, ssh.PublicKey, error) {
	var hostKey ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			hostKey = key
			return nil
		},
		Timeout: 10 * time.Second,
	}
	var lastErr error
	for ctx.Err() == nil {
		conn, err := ns.dial(addr, 3*time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
			if err == nil {
				_ = conn.SetDeadline(time.Time{})
				return ssh.NewClient(c, chans, reqs), hostKey, nil
			}
			conn.Close()
			lastErr = err
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil, nil, fmt.Errorf("ssh %s: %w (last error: %v)", addr, ctx.Err(), lastErr)
}

// guestRun runs a command over SSH and returns its output, stdout then
// stderr. (One bytes.Buffer for both would be filled by two goroutines at
// once, and its ReadFrom truncates what the other wrote.)
func guestRun(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	err = s.Run(cmd)
	return stdout.String() + stderr.String(), err
}

// debugfsCat prints a file of an ext4 image without mounting it.
func debugfsCmd(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v: %s", req, img, err, out)
	}
	// debugfs prints its version banner first on stderr.
	lines := strings.SplitN(string(out), "\n", 2)
	if len(lines) == 2 && strings.HasPrefix(lines[0], "debugfs ") {
		return lines[1]
	}
	return string(out)
}

// killQEMU is a last resort for a QEMU that ignores its guest.
func killQEMU(vm *qemuVM) {
	if vm.cmd.Process != nil {
		_ = vm.cmd.Process.Signal(syscall.SIGKILL)
	}
}
