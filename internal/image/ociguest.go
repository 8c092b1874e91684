package image

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/guestinit"
)

// Kinds of init an imported image boots with.
const (
	InitSystemd = "systemd"
	InitBanger  = "banger-init"
)

// systemdPaths are where images keep systemd.
var systemdPaths = []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"}

// sshdPaths are where images keep sshd (guestinit looks in the same
// places).
var sshdPaths = []string{"/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd", "/usr/local/sbin/sshd", "/bin/sshd"}

// packageManager is one way to install an SSH server into an image.
type packageManager struct {
	name  string
	paths []string
	// script runs in the image (in the build sandbox) and installs
	// openssh-server.
	script string
}

const sandboxPath = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"

// packageManagers are tried in order.
var packageManagers = []packageManager{
	{"apt", []string{"/usr/bin/apt-get"}, "set -eu\n" + sandboxPath + `export DEBIAN_FRONTEND=noninteractive
apt-get update ` + aptLimitOpts + `
apt-get install -y --no-install-recommends ` + aptLimitOpts + ` -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold openssh-server
apt-get clean
rm -rf /var/lib/apt/lists/*
`},
	{"apk", []string{"/sbin/apk", "/usr/sbin/apk", "/bin/apk", "/usr/bin/apk"}, "set -eu\n" + sandboxPath + "apk add --no-cache openssh-server\n"},
	{"dnf", []string{"/usr/bin/dnf"}, "set -eu\n" + sandboxPath + "dnf install -y --setopt=install_weak_deps=False openssh-server\ndnf clean all\n"},
	{"microdnf", []string{"/usr/bin/microdnf"}, "set -eu\n" + sandboxPath + "microdnf install -y openssh-server\nmicrodnf clean all\n"},
	{"yum", []string{"/usr/bin/yum"}, "set -eu\n" + sandboxPath + "yum install -y openssh-server\nyum clean all\n"},
}

// treeFacts is what an imported tree has.
type treeFacts struct {
	systemd string
	sshd    string
	shell   bool
	root    bool // /etc/passwd has root
	pm      *packageManager
}

func firstExisting(r *imageRoot, paths []string) string {
	for _, p := range paths {
		if r.Exists(p) {
			return p
		}
	}
	return ""
}

func inspectTree(r *imageRoot) treeFacts {
	f := treeFacts{
		systemd: firstExisting(r, systemdPaths),
		sshd:    firstExisting(r, sshdPaths),
		shell:   r.Exists("/bin/sh"),
	}
	if b, err := r.ReadFile("/etc/passwd"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "root:") {
				f.root = true
			}
		}
	}
	for i := range packageManagers {
		if firstExisting(r, packageManagers[i].paths) != "" {
			f.pm = &packageManagers[i]
			break
		}
	}
	return f
}

// pmNames lists the package managers banger can use.
func pmNames() string {
	var n []string
	for _, pm := range packageManagers {
		n = append(n, pm.name)
	}
	return strings.Join(n, ", ")
}

// ociSSHDConfig is the sshd configuration banger-init runs sshd with:
// what today's images set in sshd_config.d, complete on its own since an
// image's own sshd_config may include nothing. Options old servers lack
// are left out; sftp is sshd's own, whatever the image ships.
func ociSSHDConfig() string {
	return `# banger: sshd as banger-init runs it (sshd -f ` + guestinit.SSHDConfigPath + `).
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
UseDNS no
PrintMotd no
AuthorizedKeysFile .ssh/authorized_keys ` + authorizedKeys + `
Subsystem sftp internal-sftp
PidFile /run/sshd.pid
`
}

// ociGuestFiles are the files an imported image gets besides banger-init
// itself: for systemd images today's units and settings (guestFiles),
// for the others banger-init as /sbin/init and its sshd configuration.
func ociGuestFiles(r *imageRoot, c guestConfig, facts treeFacts) []guestFile {
	if facts.systemd != "" {
		files := guestFiles(c)
		if !r.Exists("/sbin/init") {
			files = append(files, guestFile{Path: "/sbin/init", Link: facts.systemd})
		}
		// An SSH server installed in a container image may not be
		// enabled (no systemd ran its presets).
		for _, unit := range []string{"ssh.service", "sshd.service"} {
			for _, dir := range []string{systemUnitDir, "/usr/lib/systemd/system"} {
				if r.Exists(dir + "/" + unit) {
					files = append(files, guestFile{Path: unitDir + "/multi-user.target.wants/" + unit, Link: dir + "/" + unit})
					return files
				}
			}
		}
		return files
	}
	key := strings.TrimSpace(c.AuthorizedKey) + "\n"
	files := []guestFile{
		{Path: "/etc/banger-image", Mode: 0o644, Content: imageInfo(c)},
		{Path: "/etc/hosts", Mode: 0o644, Content: "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"},
		{Path: "/etc/resolv.conf", Mode: 0o644, Content: "nameserver " + c.DNS + "\n"},
		{Path: guestinit.SSHDConfigPath, Mode: 0o644, Content: ociSSHDConfig()},
		{Path: authorizedKeys, Mode: 0o644, Content: key},
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Content: key},
		{Path: "/sbin/init", Link: guestinit.BinPath},
	}
	for _, name := range []string{"poweroff", "reboot", "halt"} {
		files = append(files, guestFile{Path: "/usr/local/sbin/" + name, Link: guestinit.BinPath})
		if !r.Exists("/sbin/" + name) {
			files = append(files, guestFile{Path: "/sbin/" + name, Link: guestinit.BinPath})
		}
	}
	return files
}

// configureOCIGuest writes banger's files into an imported tree: the
// common ones, banger-init (every imported image has it: it runs ssh
// sessions as the image's user), and the init's or systemd's.
func configureOCIGuest(root string, c guestConfig, g guestinit.Config, initBin []byte, facts treeFacts) error {
	r, err := openImageRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, p := range guestRemovals {
		if err := r.RemoveGlob(p); err != nil {
			return err
		}
	}
	// The daemon writes each VM's host key into /etc/ssh before its
	// first boot.
	if err := r.MkdirAll("/etc/ssh", 0o755); err != nil {
		return err
	}
	if err := r.MkdirAll("/root/.ssh", 0o700); err != nil {
		return err
	}
	if err := r.WriteFile(guestinit.BinPath, initBin, 0o755); err != nil {
		return err
	}
	g.DNS = c.DNS
	if err := r.WriteFile(guestinit.ConfigPath, g.Marshal(), 0o644); err != nil {
		return err
	}
	if err := ensureSSHDUser(r); err != nil {
		return err
	}
	for _, f := range ociGuestFiles(r, c, facts) {
		if f.Link != "" {
			err = r.Symlink(f.Link, f.Path)
		} else {
			err = r.WriteFile(f.Path, []byte(f.Content), f.Mode)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ensureSSHDUser adds the account sshd's privilege separation needs when
// the image has an sshd but no such account.
func ensureSSHDUser(r *imageRoot) error {
	b, err := r.ReadFile("/etc/passwd")
	if err != nil {
		return err
	}
	used := map[int]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "sshd:") {
			return nil
		}
		if f := strings.Split(line, ":"); len(f) > 2 {
			if n, err := strconv.Atoi(f[2]); err == nil {
				used[n] = true
			}
		}
	}
	uid := 0
	for n := 100; n < 1000; n++ {
		if !used[n] {
			uid = n
			break
		}
	}
	if uid == 0 {
		return fmt.Errorf("configure: no free uid for sshd's privilege separation account")
	}
	s := string(b)
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	s += fmt.Sprintf("sshd:x:%d:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin\n", uid)
	return r.WriteFile("/etc/passwd", []byte(s), 0o644)
}

// checkDir makes p a directory of the image unless it is one, and
// refuses a link or a file there: the build mounts on it.
func checkDir(r *imageRoot, p string) error {
	dfd, name, err := r.splitParentNoCreate(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return r.MkdirAll(p, 0o755)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("the image's %s %w", p, errNotDir)
	}
	return nil
}
