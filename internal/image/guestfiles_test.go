package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFf8m0fJqzJ7aZ8hYk8Vv3lqzJc5zXo0vY9yH8bC1dXy banger"

func testGuestConfig() guestConfig {
	return guestConfig{ImageName: "dev", AuthorizedKey: testKey, DNS: "192.0.2.53", BuiltAt: time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)}
}

func guestFileMap(c guestConfig) map[string]guestFile {
	m := map[string]guestFile{}
	for _, f := range guestFiles(c) {
		m[f.Path] = f
	}
	return m
}

func TestGuestFilesUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range guestFiles(guestConfig{Docker: true, DNS: "192.0.2.53"}) {
		if !strings.HasPrefix(f.Path, "/") {
			t.Errorf("%q is not absolute", f.Path)
		}
		if seen[f.Path] {
			t.Errorf("%q written twice", f.Path)
		}
		seen[f.Path] = true
	}
}

func TestSSHDConfig(t *testing.T) {
	got := guestFileMap(testGuestConfig())["/etc/ssh/sshd_config.d/banger.conf"].Content
	for _, line := range []string{
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"UseDNS no",
		"AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys",
		"HostKey /etc/ssh/ssh_host_ed25519_key",
	} {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("sshd config lacks %q:\n%s", line, got)
		}
	}
}

func TestGuestUnits(t *testing.T) {
	files := guestFileMap(testGuestConfig())
	tests := []struct {
		path string
		want []string
		not  []string
	}{
		{
			path: "/etc/systemd/system/banger-work.service",
			want: []string{"DefaultDependencies=no", "Before=local-fs.target ssh.service", "ExecStart=/bin/mount -o noatime LABEL=banger-work /root", "WantedBy=local-fs.target"},
			// No device unit: the image has no udev to announce it.
			not: []string{".device", "Requires="},
		},
		{
			path: "/etc/systemd/system/banger-ssh-hostkeys.service",
			want: []string{"Before=ssh.service", "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key", "ssh-keygen -q -t $$t"},
			not:  []string{"-t rsa"},
		},
		{
			path: "/etc/systemd/system/ssh.service.d/banger.conf",
			want: []string{"Wants=banger-ssh-hostkeys.service", "After=banger-ssh-hostkeys.service banger-work.service"},
		},
		{
			path: "/etc/systemd/system/banger-resolv.service",
			want: []string{"ExecStart=/usr/lib/banger/banger-resolv", "Before=sysinit.target network.target nss-lookup.target"},
		},
		{
			path: "/usr/lib/banger/banger-resolv",
			want: []string{"/proc/net/pnp", "echo 'nameserver 192.0.2.53'", "mv -f \"$tmp\" /etc/resolv.conf"},
		},
		{
			path: "/etc/systemd/system/serial-getty@ttyS0.service",
			want: []string{"TTYPath=/dev/ttyS0", "WantedBy=getty.target"},
			not:  []string{"BindsTo=", "dev-"},
		},
		{path: "/etc/resolv.conf", want: []string{"nameserver 192.0.2.53\n"}},
		{path: "/etc/ssh/banger_authorized_keys", want: []string{testKey + "\n"}},
		{path: "/root/.ssh/authorized_keys", want: []string{testKey + "\n"}},
		{path: "/usr/local/sbin/poweroff", want: []string{"systemctl start reboot.target --job-mode=replace-irreversibly"}},
		{path: "/usr/local/sbin/reboot", want: []string{"systemctl start reboot.target"}},
		{path: "/etc/banger-image", want: []string{`BANGER_IMAGE_NAME="dev"`, `BANGER_IMAGE_BUILT="2026-11-26T01:00:00Z"`}},
	}
	for _, tt := range tests {
		f, ok := files[tt.path]
		if !ok {
			t.Errorf("no %s", tt.path)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(f.Content, w) {
				t.Errorf("%s lacks %q:\n%s", tt.path, w, f.Content)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(f.Content, n) {
				t.Errorf("%s contains %q:\n%s", tt.path, n, f.Content)
			}
		}
	}
	modes := map[string]os.FileMode{
		"/root/.ssh/authorized_keys":      0o600,
		"/etc/ssh/banger_authorized_keys": 0o644,
		"/usr/lib/banger/banger-resolv":   0o755,
		"/etc/machine-id":                 0o444,
	}
	for p, want := range modes {
		if got := files[p].Mode; got != want {
			t.Errorf("%s mode = %o, want %o", p, got, want)
		}
	}
	if got := files["/etc/machine-id"].Content; got != "" {
		t.Errorf("machine-id = %q, want empty for first boot", got)
	}
}

func TestGuestLinks(t *testing.T) {
	files := guestFileMap(testGuestConfig())
	for _, unit := range []string{
		"getty@tty1.service", "systemd-networkd-wait-online.service", "systemd-network-generator.service",
		"apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
		"e2scrub_reap.service", "fstrim.timer", "ssh.socket",
	} {
		if got := files["/etc/systemd/system/"+unit].Link; got != "/dev/null" {
			t.Errorf("%s links to %q, want masked (/dev/null)", unit, got)
		}
	}
	for _, unit := range []string{"serial-getty@ttyS0.service", "ssh.service", "ctrl-alt-del.target", "reboot.target", "systemd-journald.service"} {
		if f, ok := files["/etc/systemd/system/"+unit]; ok && f.Link != "" {
			t.Errorf("%s is redirected to %q; it must keep its default", unit, f.Link)
		}
	}
	wantLinks := map[string]string{
		"/etc/systemd/system/poweroff.target":                            "/lib/systemd/system/reboot.target",
		"/etc/systemd/system/halt.target":                                "/lib/systemd/system/reboot.target",
		"/etc/systemd/system/local-fs.target.wants/banger-work.service":  "/etc/systemd/system/banger-work.service",
		"/etc/systemd/system/sysinit.target.wants/banger-resolv.service": "/etc/systemd/system/banger-resolv.service",
	}
	for p, want := range wantLinks {
		if got := files[p].Link; got != want {
			t.Errorf("%s -> %q, want %q", p, got, want)
		}
	}
	dockerLink := "/etc/systemd/system/multi-user.target.wants/docker.service"
	if _, ok := files[dockerLink]; ok {
		t.Errorf("docker enabled without Docker")
	}
	c := testGuestConfig()
	c.Docker = true
	if got := guestFileMap(c)[dockerLink].Link; got != "/lib/systemd/system/docker.service" {
		t.Errorf("with Docker, %s -> %q", dockerLink, got)
	}
}

// TestConfigureGuest applies the files to a fake image tree whose
// /etc/resolv.conf is an absolute symlink pointing at a file outside the
// image: the build must replace the link, not write through it.
func TestConfigureGuest(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "host-resolv.conf")
	if err := os.WriteFile(outside, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mk := func(p, content string) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("etc/hostname", "buildhost\n")
	mk("etc/ssh/ssh_host_rsa_key", "secret")
	mk("etc/ssh/ssh_host_rsa_key.pub", "pub")
	mk("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n")
	mk("root/.bashrc", "# bashrc\n")
	mk("root/.profile", "# profile\n")
	mk("etc/update-motd.d/10-uname", "#!/bin/sh\nuname -snrvm\n")
	mk("etc/update-motd.d/sub/x", "x")
	if err := os.Symlink(outside, filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	// An absolute symlink in a parent directory of written files must
	// resolve inside the image too: /usr/lib -> /ulib.
	if err := os.MkdirAll(filepath.Join(root, "ulib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/ulib", filepath.Join(root, "usr/lib")); err != nil {
		t.Fatal(err)
	}

	if err := configureGuest(root, testGuestConfig()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "host\n" {
		t.Errorf("host file changed through the image's symlink: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, "ulib/banger/banger-resolv")); err != nil {
		t.Errorf("resolv script not written through the image's /usr/lib link: %v", err)
	}
	fi, err := os.Lstat(filepath.Join(root, "etc/resolv.conf"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("resolv.conf: %v, %v; want a regular file", fi, err)
	}
	if left, err := os.ReadDir(filepath.Join(root, "etc/update-motd.d")); err != nil || len(left) != 0 {
		t.Errorf("update-motd.d: %v %v, want it there and empty", left, err)
	}
	for _, gone := range []string{"etc/hostname", "etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", gone, err)
		}
	}
	checkMode := func(p string, want os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %o, want %o", p, fi.Mode().Perm(), want)
		}
	}
	checkMode("root/.ssh", 0o700)
	checkMode("root/.ssh/authorized_keys", 0o600)
	checkMode("etc/ssh/banger_authorized_keys", 0o644)
	if target, err := os.Readlink(filepath.Join(root, "etc/systemd/system/getty@tty1.service")); err != nil || target != "/dev/null" {
		t.Errorf("getty@tty1 -> %q, %v", target, err)
	}

	seed := filepath.Join(t.TempDir(), "seed")
	if err := makeWorkSeedDir(root, seed, testKey); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{"": 0o700, ".ssh": 0o700, ".ssh/authorized_keys": 0o600, ".bashrc": 0o644, ".profile": 0o644} {
		fi, err := os.Stat(filepath.Join(seed, p))
		if err != nil {
			t.Errorf("seed %s: %v", p, err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("seed %q mode = %o, want %o", p, fi.Mode().Perm(), want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(seed, ".ssh/authorized_keys")); string(b) != testKey+"\n" {
		t.Errorf("seed authorized_keys = %q", b)
	}
}
