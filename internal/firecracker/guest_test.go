package firecracker

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
)

// Guest-side fixtures of the integration tests: the banger-vmm-qemu
// binary, a busybox root filesystem and a busybox initramfs, all built by
// the tests themselves.

// Console markers printed by the test guests.
const (
	markerUserspace = "BANGER-USERSPACE-OK"
	markerShutdown  = "BANGER-SHUTDOWN"
)

var vmmBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// vmmBinary builds cmd/banger-vmm-qemu once per test binary; TestMain
// removes it.
func vmmBinary(t testing.TB) string {
	t.Helper()
	vmmBuild.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = "/usr/local/go/bin/go" // where the project's Go lives

		}
		vmmBuild.dir, err = os.MkdirTemp("", "banger-vmm-build-")
		if err != nil {
			vmmBuild.err = err
			return
		}
		vmmBuild.path = filepath.Join(vmmBuild.dir, "banger-vmm-qemu")
		_, vmmBuild.err = hostexec.Real{}.Run(context.Background(), gobin, "build", "-o", vmmBuild.path, "banger/cmd/banger-vmm-qemu")
	})
	if vmmBuild.err != nil {
		t.Fatalf("build banger-vmm-qemu: %v", vmmBuild.err)
	}
	return vmmBuild.path
}

func removeVMMBuild() {
	if vmmBuild.dir != "" {
		os.RemoveAll(vmmBuild.dir)
	}
}

// staticBusybox returns the host's busybox, which must be statically
// linked (Debian's busybox-static) to run in a guest without a libc.
func staticBusybox(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox: %v", err)
	}
	f, err := elf.Open(p)
	if err != nil {
		t.Fatalf("busybox %s: %v", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Fatalf("busybox %s is dynamically linked; install Debian's busybox-static", p)
		}
	}
	return p
}

// busyboxApplets are linked in the test guests' /bin.
var busyboxApplets = []string{"sh", "mount", "umount", "echo", "cat", "ip", "ls", "sleep", "reboot", "poweroff", "sync"}

// guestInittab makes busybox init run rcS, then wait; Ctrl-Alt-Del (the
// kernel sends init SIGINT) runs reboot, which makes init run the
// shutdown actions, print a marker, remount / read-only, stop every
// process and reboot: a clean guest reboot.
const guestInittab = `::sysinit:/etc/init.d/rcS
::once:/bin/sleep 2147483647
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/echo ` + markerShutdown + `
::shutdown:/bin/mount -o remount,ro /
`

// guestRcS prints the userspace marker and what the network and block
// layers look like.
const guestRcS = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo ` + markerUserspace + `
echo BANGER-BLOCK $(cd /sys/block && echo vd*)
if [ -e /sys/class/net/eth0 ]; then
	ip -4 addr show dev eth0
	cat /proc/net/pnp
fi
`

// buildRootfs builds an ext4 image with busybox as /sbin/init.
func buildRootfs(t testing.TB, dir string) string {
	t.Helper()
	stage := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "sbin", "etc/init.d", "proc", "sys", "dev", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(staticBusybox(t))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(stage, "bin/busybox"), bb, 0o755)
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(stage, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"init", "reboot", "poweroff"} {
		if err := os.Symlink("../bin/busybox", filepath.Join(stage, "sbin", a)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(stage, "etc/inittab"), []byte(guestInittab), 0o644)
	writeFile(t, filepath.Join(stage, "etc/init.d/rcS"), []byte(guestRcS), 0o755)
	if err := unix.Mknod(filepath.Join(stage, "dev/console"), unix.S_IFCHR|0o600, int(unix.Mkdev(5, 1))); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if _, err := (hostexec.Real{}).Run(context.Background(), "mkfs.ext4", "-q", "-F", "-L", "bangertest", "-d", stage, img, "32M"); err != nil {
		t.Fatal(err)
	}
	return img
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// cpioEntry is one file of a newc cpio archive.
type cpioEntry struct {
	name  string
	mode  uint32 // type and permission bits
	data  []byte // file content, or a symlink's target
	major uint32 // device numbers of a device node
	minor uint32
}

// newcCpio returns an uncompressed newc ("070701") cpio archive, the
// format the kernel unpacks as an initramfs.
func newcCpio(entries []cpioEntry) []byte {
	var buf bytes.Buffer
	pad := func() {
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
	}
	write := func(ino int, e cpioEntry) {
		fmt.Fprintf(&buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.major, e.minor, len(e.name)+1, 0)
		buf.WriteString(e.name)
		buf.WriteByte(0)
		pad()
		buf.Write(e.data)
		pad()
	}
	for i, e := range entries {
		write(i+1, e)
	}
	write(len(entries)+1, cpioEntry{name: "TRAILER!!!"})
	return buf.Bytes()
}

// buildInitramfs returns an initramfs whose /init prints the userspace
// marker and reboots the guest, which ends the VMM.
func buildInitramfs(t testing.TB, dir string) string {
	t.Helper()
	bb, err := os.ReadFile(staticBusybox(t))
	if err != nil {
		t.Fatal(err)
	}
	initScript := "#!/bin/busybox sh\n" +
		"/bin/busybox mount -t proc proc /proc\n" +
		"/bin/busybox echo " + markerUserspace + "\n" +
		"/bin/busybox echo \"BANGER-KERNEL $(/bin/busybox uname -r)\"\n" +
		"/bin/busybox reboot -f\n"
	entries := []cpioEntry{
		{name: "bin", mode: unix.S_IFDIR | 0o755},
		{name: "dev", mode: unix.S_IFDIR | 0o755},
		{name: "proc", mode: unix.S_IFDIR | 0o755},
		{name: "dev/console", mode: unix.S_IFCHR | 0o600, major: 5, minor: 1},
		{name: "bin/busybox", mode: unix.S_IFREG | 0o755, data: bb},
		{name: "bin/sh", mode: unix.S_IFLNK | 0o777, data: []byte("busybox")},
		{name: "init", mode: unix.S_IFREG | 0o755, data: []byte(initScript)},
	}
	p := filepath.Join(dir, "initramfs.cpio")
	writeFile(t, p, newcCpio(entries), 0o644)
	return p
}

// waitConsole waits until the console log at path contains marker and
// returns the log.
func waitConsole(ctx context.Context, path, marker string) (string, error) {
	for {
		raw, _ := os.ReadFile(path)
		if bytes.Contains(raw, []byte(marker)) {
			return string(raw), nil
		}
		select {
		case <-ctx.Done():
			return string(raw), fmt.Errorf("no %q on the console: %w", marker, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of s, for failure messages.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// childPIDs returns the PIDs whose parent is ppid.
func childPIDs(ppid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(raw, ')')
		if i < 0 {
			continue
		}
		var state byte
		var parent, pid int
		fmt.Sscanf(e.Name(), "%d", &pid)
		if _, err := fmt.Sscanf(string(raw[i+2:]), "%c %d", &state, &parent); err == nil && parent == ppid {
			out = append(out, pid)
		}
	}
	return out
}
