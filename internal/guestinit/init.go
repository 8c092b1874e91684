package guestinit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sshdPaths are where images keep sshd.
var sshdPaths = []string{"/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd", "/usr/local/sbin/sshd", "/bin/sshd"}

// defaultPath is the PATH of the processes the init starts.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// mount is one filesystem the init mounts.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// mounts are what a Linux userland expects; a mount point that is
// already mounted (devtmpfs by the kernel, say) is left as it is.
var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
}

// devLinks are the /dev entries devtmpfs lacks.
var devLinks = [][2]string{
	{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
	{"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
	{"pts/ptmx", "/dev/ptmx"},
}

// logf writes a line to the console.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "banger-init: "+format+"\n", args...)
}

// RunInit is PID 1. It never returns: it ends by rebooting, which ends
// the VM (the VMM exits when its guest reboots; a power-off would leave
// Firecracker running).
func RunInit() {
	// Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate
	// reboot, so the init can stop processes and unmount first.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	// Named for ps and /proc/1/comm, whatever path the kernel ran.
	name := []byte("banger-init\x00")
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGINT, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR, unix.SIGHUP)

	setup()
	cfg, err := readConfig(ConfigPath)
	if err != nil {
		logf("%v", err)
	}
	network(cfg)
	workDisk()
	sshdPID, started := startSSHD(), time.Now()
	var restartAt time.Time
	backoff := time.Second
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case s := <-sigs:
			switch s {
			case unix.SIGCHLD:
				for _, pid := range reap() {
					if pid != sshdPID || pid == 0 {
						continue
					}
					if time.Since(started) > time.Minute {
						// It ran a while: the next failure starts over
						// from a short wait.
						backoff = time.Second
					}
					logf("sshd exited; starting it again in %s", backoff)
					sshdPID, restartAt = 0, time.Now().Add(backoff)
					backoff = min(backoff*2, 30*time.Second)
				}
			case unix.SIGHUP:
				// Ignored: a hangup of the console must not end the VM.
			default:
				logf("%s: stopping", map[os.Signal]string{
					unix.SIGINT: "Ctrl-Alt-Del", unix.SIGTERM: "reboot", unix.SIGUSR1: "halt",
					unix.SIGUSR2: "poweroff", unix.SIGPWR: "power failure",
				}[s])
				shutdown()
			}
		case <-tick.C:
			if sshdPID == 0 && !restartAt.IsZero() && time.Now().After(restartAt) {
				restartAt = time.Time{}
				sshdPID, started = startSSHD(), time.Now()
			}
		}
	}
}

// setup mounts the pseudo filesystems and makes / writable.
func setup() {
	_ = unix.Mount("", "/", "", unix.MS_REMOUNT, "")
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			logf("mkdir %s: %v", m.target, err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", m.fstype, m.target, err)
		}
	}
	for _, l := range devLinks {
		if _, err := os.Lstat(l[1]); err != nil {
			_ = os.Symlink(l[0], l[1])
		}
	}
	for _, d := range []string{"/run/sshd", "/var/empty", "/var/run"} {
		if _, err := os.Lstat(d); err != nil {
			_ = os.MkdirAll(d, 0o755)
		}
	}
	_ = os.Chmod("/run/sshd", 0o755)
}

// network sets the hostname and DNS from the kernel command line and
// brings the loopback up; the kernel's ip= configured eth0 already.
func network(cfg Config) {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	name := Hostname(string(cmdline))
	if name != "" {
		if err := unix.Sethostname([]byte(name)); err != nil {
			logf("hostname %s: %v", name, err)
		}
	}
	if err := linkUp("lo"); err != nil {
		logf("loopback: %v", err)
	}
	pnp, _ := os.ReadFile("/proc/net/pnp")
	if err := replaceFile("/etc/resolv.conf", []byte(ResolvConf(string(pnp), cfg.DNS)), 0o644); err != nil {
		logf("resolv.conf: %v", err)
	}
	hosts, _ := os.ReadFile("/etc/hosts")
	if h := HostsWithName(string(hosts), name); h != string(hosts) {
		if err := replaceFile("/etc/hosts", []byte(h), 0o644); err != nil {
			logf("hosts: %v", err)
		}
	}
}

// replaceFile writes path by a rename, replacing a link there instead of
// writing through it.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), ".banger-init-"+filepath.Base(path))
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// linkUp sets IFF_UP on an interface.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// workDisk mounts the filesystem labelled banger-work on /root.
func workDisk() {
	dev, err := findLabel("/sys/class/block", "/dev", WorkLabel)
	if err != nil {
		logf("work disk: %v; /root stays the image's", err)
		return
	}
	_ = os.MkdirAll("/root", 0o700)
	if err := unix.Mount(dev, "/root", "ext4", unix.MS_NOATIME, ""); err != nil {
		logf("mount %s on /root: %v", dev, err)
	}
}

// findLabel returns the block device in devDir whose ext2/3/4
// filesystem is labelled label, looking at the devices sysDir lists.
func findLabel(sysDir, devDir, label string) (string, error) {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		dev := filepath.Join(devDir, e.Name())
		if ext4Label(dev) == label {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no filesystem labelled %s", label)
}

// ext4Label reads an ext2/3/4 superblock's volume name ("" when it is not
// one).
func ext4Label(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return ""
	}
	if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
		return ""
	}
	name := sb[0x78 : 0x78+16]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

// startSSHD starts sshd in the foreground (-D) logging to the console
// (-e) with banger's config, and returns its pid (0 when it cannot).
func startSSHD() int {
	bin := ""
	for _, p := range sshdPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			bin = p
			break
		}
	}
	if bin == "" {
		logf("no sshd in the image (%s)", strings.Join(sshdPaths, ", "))
		return 0
	}
	if err := ensureHostKey("/etc/ssh/ssh_host_ed25519_key"); err != nil {
		logf("host key: %v", err)
	}
	console := []uintptr{0, 1, 2}
	pid, err := syscall.ForkExec(bin, []string{bin, "-D", "-e", "-f", SSHDConfigPath}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=" + defaultPath, "LANG=C.UTF-8"},
		Files: console,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		logf("start %s: %v", bin, err)
		return 0
	}
	logf("sshd started (pid %d)", pid)
	return pid
}

// reap collects every exited child, returning their pids.
func reap() []int {
	var pids []int
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return pids
		}
		pids = append(pids, pid)
	}
}

// shutdown stops every process, unmounts the work disk, makes / read-only
// and reboots, which ends the VM.
func shutdown() {
	signal.Reset()
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		reap()
		if !othersAlive() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	reap()
	unix.Sync()
	if err := unix.Unmount("/root", 0); err != nil && !errors.Is(err, unix.EINVAL) {
		logf("unmount /root: %v", err)
		_ = unix.Unmount("/root", unix.MNT_DETACH)
	}
	_ = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	unix.Sync()
	logf("rebooting (ends the VM)")
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		time.Sleep(time.Second)
	}
}

// othersAlive reports whether any process but PID 1 and kernel threads
// is left.
func othersAlive() bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() == "1" || e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		// Kernel threads have an empty command line.
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(b) > 0 {
			return true
		}
	}
	return false
}

// Power is poweroff, reboot and halt in the guest: each asks PID 1 to
// stop the VM (busybox's signals: SIGUSR2, SIGTERM, SIGUSR1). With -f
// it reboots at once.
func Power(name string, args []string) int {
	for _, a := range args {
		if a == "-f" || a == "--force" {
			unix.Sync()
			if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
				return 1
			}
		}
	}
	sig := map[string]unix.Signal{"poweroff": unix.SIGUSR2, "reboot": unix.SIGTERM, "halt": unix.SIGUSR1}[name]
	if err := unix.Kill(1, sig); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}
