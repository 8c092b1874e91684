package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/testutil"
)

// testCacheDir is where integration tests keep base systems between runs,
// so only the first run pays for debootstrap.
func testCacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-test"
}

// TestBuildImageBoot builds an image, checks its filesystems without
// mounting them, then boots two copies with QEMU the way Firecracker
// would and checks what the guests say over SSH.
func TestBuildImageBoot(t *testing.T) {
	testutil.Slow(t)
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "debootstrap", "chroot", "tar", "mkfs.ext4", "e2fsck", "debugfs", "e2label", "qemu-system-x86_64", "ip", "cp")
	kernel := testutil.RequireEnvFile(t, "BANGER_TEST_KERNEL", "a Firecracker guest vmlinux (banger kernel build)")

	if ok, err := HasPVHNote(kernel); err != nil || !ok {
		t.Fatalf("BANGER_TEST_KERNEL=%s: PVH note %t, %v; want a Firecracker guest vmlinux", kernel, ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "id_ed25519")
	pub, fp, err := EnsureSSHKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "images", "test")
	start := time.Now()
	art, err := BuildImage(ctx, ImageOptions{
		Name: "test", OutDir: out, CacheDir: testCacheDir(), KernelPath: kernel,
		SSHPublicKey: pub, DNS: "192.0.2.53",
	}, func(step, msg string) { t.Logf("build: %-11s %s", step, msg) })
	if err != nil {
		t.Fatalf("BuildImage: %v", err)
	}
	t.Logf("built in %s (cache hit %t): %+v", time.Since(start).Round(time.Second), art.CacheHit, art)
	if art.SSHKeyFingerprint != fp {
		t.Errorf("fingerprint = %s, want %s", art.SSHKeyFingerprint, fp)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Errorf("images dir holds %d entries, want only the image (no temp dir left)", len(entries))
	}
	for _, p := range []string{art.RootfsPath, art.KernelPath, art.WorkSeedPath, art.LogPath} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("artifact: %v", err)
		}
	}

	t.Run("rootfs", func(t *testing.T) {
		if got := strings.TrimSpace(runOut(t, "e2label", art.RootfsPath)); got != RootfsLabel {
			t.Errorf("rootfs label = %q, want %q", got, RootfsLabel)
		}
		if got := strings.TrimSpace(runOut(t, "e2label", art.WorkSeedPath)); got != WorkDiskLabel {
			t.Errorf("work seed label = %q, want %q", got, WorkDiskLabel)
		}
		if ls := debugfsCmd(t, art.RootfsPath, "ls /etc/ssh"); strings.Contains(ls, "ssh_host_") {
			t.Errorf("image carries SSH host keys:\n%s", ls)
		}
		if ls := debugfsCmd(t, art.RootfsPath, "ls /etc/ssh"); !strings.Contains(ls, "sshd_config.d") {
			t.Errorf("no sshd_config.d in /etc/ssh:\n%s", ls)
		}
		if got := debugfsCmd(t, art.RootfsPath, "cat /etc/ssh/banger_authorized_keys"); strings.TrimSpace(got) != pub {
			t.Errorf("banger_authorized_keys = %q, want %q", got, pub)
		}
		if got := debugfsCmd(t, art.RootfsPath, "cat /etc/machine-id"); got != "" {
			t.Errorf("machine-id = %q, want empty", got)
		}
		if got := debugfsCmd(t, art.RootfsPath, "stat /etc/hostname"); !strings.Contains(got, "not found") {
			t.Errorf("/etc/hostname present:\n%s", got)
		}
		for _, u := range []string{"banger-work.service", "banger-resolv.service", "banger-ssh-hostkeys.service"} {
			if got := debugfsCmd(t, art.RootfsPath, "cat /etc/systemd/system/"+u); !strings.Contains(got, "[Service]") {
				t.Errorf("%s missing or empty: %q", u, got)
			}
		}
		if got := debugfsCmd(t, art.RootfsPath, "stat /etc/systemd/system/getty@tty1.service"); !strings.Contains(got, `"/dev/null"`) {
			t.Errorf("getty@tty1 not masked:\n%s", got)
		}
		if got := debugfsCmd(t, art.WorkSeedPath, "cat /.ssh/authorized_keys"); strings.TrimSpace(got) != pub {
			t.Errorf("work seed authorized_keys = %q, want %q", got, pub)
		}
		if got := debugfsCmd(t, art.WorkSeedPath, "stat /.ssh/authorized_keys"); !strings.Contains(got, "Mode:  0600") {
			t.Errorf("work seed authorized_keys mode:\n%s", got)
		}
		for _, img := range []string{art.RootfsPath, art.WorkSeedPath} {
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
			}
		}
	})

	t.Run("boot", func(t *testing.T) {
		testBootImage(t, ctx, art, keyPath)
	})
}

func runOut(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return string(out)
}

// testBootImage boots two copies of the image in a throwaway network
// namespace and checks hostname, address, work disk, DNS, distinct host
// keys, and that Ctrl-Alt-Del and power-off both end the VM.
func testBootImage(t *testing.T, ctx context.Context, art Artifacts, keyPath string) {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ns := newTestNetns(t)
	type guest struct {
		name, ip, tap, mac, dns, wantDNS string
		vm                               *qemuVM
		client                           *ssh.Client
		hostKey                          ssh.PublicKey
		bootTime                         time.Duration
		err                              error
	}
	guests := []*guest{
		{name: "vm-a", ip: "172.31.77.2", tap: "tap0", mac: "06:00:ac:1f:4d:02", dns: "192.0.2.10", wantDNS: "192.0.2.10"},
		{name: "vm-b", ip: "172.31.77.3", tap: "tap1", mac: "06:00:ac:1f:4d:03", wantDNS: "192.0.2.53"},
	}
	for _, g := range guests {
		g.vm = startVM(t, ns, art, g.name, g.tap, g.mac, guestCmdline(g.ip, ns.gateway, g.name, g.dns))
	}
	var wg sync.WaitGroup
	for _, g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
			defer cancel()
			g.client, g.hostKey, g.err = sshGuest(sctx, ns, g.ip+":22", signer)
			g.bootTime = time.Since(g.vm.started)
		}()
	}
	wg.Wait()
	for _, g := range guests {
		if g.err != nil {
			t.Fatalf("%s: %v", g.name, g.err)
		}
		defer g.client.Close()
		t.Logf("%s: QEMU start to SSH login %s (two guests booting at once)", g.name, g.bootTime.Round(100*time.Millisecond))
	}

	for _, g := range guests {
		check := func(cmd, want string) {
			t.Helper()
			out, err := guestRun(g.client, cmd)
			if err != nil {
				t.Errorf("%s: %s: %v: %s", g.name, cmd, err, out)
				return
			}
			if !strings.Contains(out, want) {
				t.Errorf("%s: %s = %q, want it to contain %q", g.name, cmd, out, want)
			}
		}
		check("hostname", g.name)
		check("ip -4 -o addr show dev eth0", g.ip+"/24")
		check("findmnt -n -o SOURCE,FSTYPE /root", "/dev/vdb ext4")
		check("cat /etc/resolv.conf", "nameserver "+g.wantDNS)
		check("cat /root/.ssh/authorized_keys", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))))
		check("test -s /etc/machine-id && echo machine-id-set", "machine-id-set")
		check("systemctl show -p Id poweroff.target", "Id=reboot.target")
		check("systemctl is-system-running --wait || systemctl --failed --no-legend", "running")
		if out, err := guestRun(g.client, "systemd-analyze; systemd-analyze blame | head -n 12"); err == nil {
			t.Logf("%s boot:\n%s", g.name, out)
		}
	}
	if a, b := guests[0].hostKey, guests[1].hostKey; a == nil || b == nil || ssh.FingerprintSHA256(a) == ssh.FingerprintSHA256(b) {
		t.Errorf("both guests have the host key %s; want a key per VM", ssh.FingerprintSHA256(a))
	}

	// Ctrl-Alt-Del, the daemon's way to stop a VM, must end QEMU.
	if err := guests[0].vm.sendCtrlAltDel(); err != nil {
		t.Errorf("vm-a: ctrl-alt-del: %v", err)
	}
	// A power-off from inside must end the VM too (under Firecracker it
	// becomes a reboot, which ends the VMM).
	_, _ = guestRun(guests[1].client, "systemctl poweroff")
	for _, g := range guests {
		if !g.vm.exited(90 * time.Second) {
			t.Errorf("%s: QEMU still running 90 s after the stop request", g.name)
			killQEMU(g.vm)
		}
	}
}

// TestBuildImageCancel interrupts a build while debootstrap runs programs
// inside the new root (no cache, so debootstrap runs; its second stage
// chroots in with /proc mounted) and checks that nothing is left: no image
// or temporary directory, no process in the half-made root, no mount, no
// loop device; only the failed build's log.
func TestBuildImageCancel(t *testing.T) {
	testutil.Slow(t)
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "debootstrap", "chroot", "tar", "mkfs.ext4", "e2fsck", "losetup")
	kernel := testutil.RequireEnvFile(t, "BANGER_TEST_KERNEL", "a Firecracker guest vmlinux (banger kernel build)")
	parent := filepath.Join(t.TempDir(), "images")
	pub, _, err := EnsureSSHKey(filepath.Join(t.TempDir(), "id"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel as soon as a process runs chrooted into the new root.
	var chrooted string
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for ctx.Err() == nil {
			if pids := processesRootedUnder(parent); len(pids) > 0 {
				chrooted = strings.Join(pids, " ")
				cancel()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	start := time.Now()
	_, err = BuildImage(ctx, ImageOptions{Name: "cancelled", OutDir: filepath.Join(parent, "cancelled"), KernelPath: kernel, SSHPublicKey: pub},
		func(step, msg string) { t.Logf("build: %-11s %s", step, msg) })
	cancel()
	<-pollDone
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("BuildImage = %v, want context.Canceled", err)
	}
	t.Logf("cancelled with chrooted processes %s; BuildImage returned %s after the start", chrooted, time.Since(start).Round(time.Second))
	entries, _ := os.ReadDir(parent)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != "cancelled.failed.log" {
		t.Errorf("left in %s: %q, want only cancelled.failed.log", parent, names)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), parent) {
		t.Errorf("mounts left under %s:\n%s", parent, b)
	}
	if pids := processesRootedUnder(parent); len(pids) > 0 {
		t.Errorf("processes still run in the build's root: %v", pids)
	}
	if out, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(out), parent) {
		t.Errorf("loop devices on the build's files:\n%s", out)
	}
}

// processesRootedUnder returns the pids whose root directory is below dir.
func processesRootedUnder(dir string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && strings.HasPrefix(root, dir+"/") {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
