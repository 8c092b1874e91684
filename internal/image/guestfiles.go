package image

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Labels of the two filesystems an image provides. The guest finds its
// work disk by label, whatever the order of the drives.
const (
	RootfsLabel   = "banger-root"
	WorkDiskLabel = "banger-work"
)

// guestConfig is what the files written into an image depend on.
type guestConfig struct {
	ImageName string
	// AuthorizedKey is the daemon's public key, authorized for root.
	AuthorizedKey string
	// DNS is the nameserver used when the kernel command line gives none.
	DNS     string
	Docker  bool
	BuiltAt time.Time
}

// guestFile is one entry banger writes into an image: a regular file, or a
// symlink when Link is set (a link to /dev/null masks a unit).
type guestFile struct {
	Path    string
	Mode    os.FileMode
	Content string
	Link    string
}

// guestRemovals are removed from every image: the build host's hostname
// (systemd then keeps the one the kernel's ip= set), SSH host keys (each VM
// makes its own at first boot), and machine IDs (made at first boot).
var guestRemovals = []string{
	"/etc/hostname",
	"/etc/ssh/ssh_host_*",
	"/var/lib/dbus/machine-id",
	"/usr/sbin/policy-rc.d",
}

// guestEmptied are directories banger's own images keep empty: the
// scripts sshd's PAM session runs at every login to make the message of
// the day (Debian's is uname, in a shell, under run-parts: 0.2 s of
// every SSH connection in an emulated guest, measured). An imported
// image keeps its own: what is in it is its author's.
var guestEmptied = []string{"/etc/update-motd.d"}

// maskedUnits are units a banger guest does not need: networking comes
// from the kernel's ip= (networkd and its generator would take eth0 over),
// there are no VTs, no kernel modules, no hardware to scrub or trim, and
// no unattended apt runs. Masking a missing unit is harmless, so the list
// also covers units only some package sets install.
var maskedUnits = []string{
	"getty@tty1.service",
	"getty-static.service",
	"systemd-networkd.service",
	"systemd-networkd.socket",
	"systemd-networkd-wait-online.service",
	"systemd-network-generator.service",
	"systemd-resolved.service",
	"systemd-timesyncd.service",
	"systemd-firstboot.service",
	"systemd-pstore.service",
	"systemd-modules-load.service",
	"modprobe@.service",
	"kmod-static-nodes.service",
	"apt-daily.timer",
	"apt-daily.service",
	"apt-daily-upgrade.timer",
	"apt-daily-upgrade.service",
	"man-db.timer",
	"man-db.service",
	"e2scrub_all.timer",
	"e2scrub_all.service",
	"e2scrub_reap.service",
	"fstrim.timer",
	"fstrim.service",
	"dev-hugepages.mount",
	"sys-fs-fuse-connections.mount",
	"sys-kernel-debug.mount",
	"sys-kernel-tracing.mount",
	// Debian ships ssh.socket disabled; a first-boot preset could enable
	// it next to ssh.service, and the two conflict.
	"ssh.socket",
}

const (
	unitDir        = "/etc/systemd/system"
	systemUnitDir  = "/lib/systemd/system"
	bangerLibDir   = "/usr/lib/banger"
	resolvScript   = bangerLibDir + "/banger-resolv"
	authorizedKeys = "/etc/ssh/banger_authorized_keys"
)

// guestFiles returns every file banger writes into an image, in order.
func guestFiles(c guestConfig) []guestFile {
	key := strings.TrimSpace(c.AuthorizedKey) + "\n"
	files := []guestFile{
		{Path: "/etc/banger-image", Mode: 0o644, Content: imageInfo(c)},
		{Path: "/etc/machine-id", Mode: 0o444, Content: ""},
		{Path: "/etc/hosts", Mode: 0o644, Content: "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"},
		{Path: "/etc/fstab", Mode: 0o644, Content: "# / is root= on the kernel command line; /root is the work disk,\n# mounted by banger-work.service (LABEL=" + WorkDiskLabel + ").\n"},
		{Path: "/etc/resolv.conf", Mode: 0o644, Content: "nameserver " + c.DNS + "\n"},
		{Path: "/etc/ssh/sshd_config.d/banger.conf", Mode: 0o644, Content: sshdConfig()},
		{Path: authorizedKeys, Mode: 0o644, Content: key},
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Content: key},
		{Path: resolvScript, Mode: 0o755, Content: resolvScriptText(c.DNS)},
		{Path: unitDir + "/banger-resolv.service", Mode: 0o644, Content: resolvUnit()},
		{Path: unitDir + "/banger-work.service", Mode: 0o644, Content: workUnit()},
		{Path: unitDir + "/banger-ssh-hostkeys.service", Mode: 0o644, Content: hostKeysUnit()},
		{Path: unitDir + "/serial-getty@ttyS0.service", Mode: 0o644, Content: serialGettyUnit()},
		{Path: unitDir + "/ssh.service.d/banger.conf", Mode: 0o644, Content: sshDropIn()},
		{Path: "/etc/systemd/system.conf.d/banger.conf", Mode: 0o644, Content: systemConf()},
		{Path: "/usr/local/sbin/poweroff", Mode: 0o755, Content: powerScript()},
		{Path: "/usr/local/sbin/reboot", Mode: 0o755, Content: powerScript()},
		{Path: "/usr/local/sbin/halt", Mode: 0o755, Content: powerScript()},
		// A first boot (empty machine-id) makes systemd enable units by
		// preset; only the ones named in presets, not every unit.
		{Path: "/etc/systemd/system-preset/99-banger.preset", Mode: 0o644, Content: "# banger enables what it needs itself.\ndisable *\n"},
		{Path: unitDir + "/sysinit.target.wants/banger-resolv.service", Link: unitDir + "/banger-resolv.service"},
		{Path: unitDir + "/local-fs.target.wants/banger-work.service", Link: unitDir + "/banger-work.service"},
		// Under Firecracker a power-off leaves the VMM running; a reboot
		// (with reboot=k) ends it. Both must end the VM.
		{Path: unitDir + "/poweroff.target", Link: systemUnitDir + "/reboot.target"},
		{Path: unitDir + "/halt.target", Link: systemUnitDir + "/reboot.target"},
	}
	if c.Docker {
		files = append(files,
			guestFile{Path: unitDir + "/multi-user.target.wants/docker.service", Link: systemUnitDir + "/docker.service"},
			guestFile{Path: unitDir + "/sockets.target.wants/docker.socket", Link: systemUnitDir + "/docker.socket"},
		)
	}
	for _, u := range maskedUnits {
		files = append(files, guestFile{Path: unitDir + "/" + u, Link: "/dev/null"})
	}
	return files
}

func imageInfo(c guestConfig) string {
	return fmt.Sprintf("BANGER_IMAGE_NAME=%q\nBANGER_IMAGE_RECIPE=%q\nBANGER_IMAGE_BUILT=%q\nBANGER_IMAGE_DOCKER=%t\n",
		c.ImageName, imageRecipeVersion, c.BuiltAt.UTC().Format(time.RFC3339), c.Docker)
}

// sshdConfig is read before the rest of sshd_config (Debian's includes
// sshd_config.d first, and the first value wins): root logs in with a key
// only, from ~/.ssh/authorized_keys on the work disk or the daemon's key in
// /etc/ssh/banger_authorized_keys.
func sshdConfig() string {
	return `# banger: key-only root login; the daemon's key lives in /etc/ssh.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
AuthorizedKeysFile .ssh/authorized_keys ` + authorizedKeys + `
`
}

// resolvScriptText writes /etc/resolv.conf at boot from the DNS servers of
// the kernel's ip= parameter, which the kernel shows only in /proc/net/pnp,
// and falls back to the nameserver the image was built with; and it maps
// the hostname to 127.0.1.1 in /etc/hosts.
func resolvScriptText(dns string) string {
	return `#!/bin/sh
# banger-resolv: /etc/resolv.conf from the kernel's ip= DNS servers
# (/proc/net/pnp), else the image's default nameserver.
set -eu
tmp=/etc/.resolv.conf.banger
if [ -r /proc/net/pnp ] && grep -q '^nameserver ' /proc/net/pnp; then
	grep -E '^(nameserver|domain|search) ' /proc/net/pnp >"$tmp"
else
	echo 'nameserver ` + dns + `' >"$tmp"
fi
chmod 0644 "$tmp"
mv -f "$tmp" /etc/resolv.conf
# The hostname (from the kernel command line) resolves locally, so tools
# that look it up (git, sudo) never wait on a DNS server they cannot reach.
h=$(hostname)
if [ -n "$h" ] && ! grep -qE "[[:space:]]$h([[:space:]]|\$)" /etc/hosts; then
	printf '127.0.1.1\t%s\n' "$h" >>/etc/hosts
fi
`
}

func resolvUnit() string {
	return `[Unit]
Description=banger: resolv.conf from the kernel command line
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target network.target nss-lookup.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + resolvScript + `

[Install]
WantedBy=sysinit.target
`
}

// workUnit mounts the work disk on /root before anything logs in. It is a
// service running mount(8), not a .mount unit: a mount unit would wait for
// a udev device unit, and the image has no udev; mount finds the label
// through libblkid.
func workUnit() string {
	return `[Unit]
Description=banger: work disk (LABEL=` + WorkDiskLabel + `) on /root
DefaultDependencies=no
After=local-fs-pre.target
Before=local-fs.target ssh.service
ConditionPathIsMountPoint=!/root

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -o noatime LABEL=` + WorkDiskLabel + ` /root

[Install]
WantedBy=local-fs.target
`
}

// powerScript stands before systemctl's poweroff, reboot and halt on
// root's PATH. The image has no D-Bus (and so no logind), and systemctl
// first asks logind to power off, printing "Failed to connect to bus"
// before it falls back to systemd itself; this asks systemd directly.
// Under Firecracker a reboot ends the VM, as a power-off does (poweroff
// and halt are reboot.target here). Forced and special modes still go to
// systemctl.
func powerScript() string {
	return `#!/bin/sh
# banger: this image has no D-Bus, so systemctl's own poweroff would first
# fail to reach logind ("Failed to connect to bus"); ask systemd directly.
# A reboot ends the VM, as a poweroff does.
for a in "$@"; do
	case "$a" in
	-f|--force|-w|--wtmp-only|-d|--no-wtmp|-n|--no-sync|--help|-p|--poweroff|--halt|--reboot)
		exec /usr/bin/systemctl "$(basename "$0")" "$@" ;;
	esac
done
exec /usr/bin/systemctl start reboot.target --job-mode=replace-irreversibly --no-block
`
}

// hostKeysUnit makes the VM's SSH host keys at first boot; images carry
// none, so two VMs of one image never share a host key. It makes ed25519
// and ECDSA keys only: "ssh-keygen -A" adds an RSA-3072 key, which takes
// about 10 s to generate under QEMU's software emulation (a third of the
// boot) and which no current client needs.
func hostKeysUnit() string {
	return `[Unit]
Description=banger: SSH host keys for this VM
DefaultDependencies=no
After=local-fs.target
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do f=/etc/ssh/ssh_host_$${t}_key; [ -e "$$f" ] || /usr/bin/ssh-keygen -q -t $$t -N "" -f "$$f"; done'
`
}

// serialGettyUnit replaces Debian's serial-getty@.service for the console
// on ttyS0: the stock unit binds to dev-ttyS0.device, which only udev
// announces, and the image has no udev, so it would wait 90 s and fail.
// The port exists from the start (console=ttyS0); this unit just runs
// agetty on it.
func serialGettyUnit() string {
	return `[Unit]
Description=banger: serial getty on ttyS0
After=systemd-user-sessions.service
Before=getty.target
IgnoreOnIsolate=yes
Conflicts=rescue.service
Before=rescue.service

[Service]
ExecStart=-/sbin/agetty -o '-p -- \\u' --keep-baud 115200,57600,38400,9600 - $TERM
Type=idle
Restart=always
UtmpIdentifier=ttyS0
StandardInput=tty
StandardOutput=tty
TTYPath=/dev/ttyS0
TTYReset=yes
TTYVHangup=yes
IgnoreSIGPIPE=no
SendSIGHUP=yes

[Install]
WantedBy=getty.target
`
}

// sshDropIn pulls the host key unit in with ssh and orders ssh after the
// work disk, whose ~/.ssh/authorized_keys it reads.
func sshDropIn() string {
	return `[Unit]
Wants=banger-ssh-hostkeys.service
After=banger-ssh-hostkeys.service banger-work.service
`
}

// systemConf shortens the stop timeout: the daemon stops a VM with
// Ctrl-Alt-Del and kills it if it has not ended in time.
func systemConf() string {
	return `[Manager]
DefaultTimeoutStopSec=15s
`
}
