package firecracker

import (
	"regexp"
	"strings"

	"banger/internal/model"
)

// baseBootArgs is banger's fixed part of the guest kernel command line: a
// serial console on ttyS0, reboot through the keyboard controller (which
// ends the VMM: Firecracker and banger-vmm-qemu exit when the guest
// reboots), reboot one second after a panic, and the i8042 settings that
// keep the PS/2 controller usable for Ctrl-Alt-Del without probing an aux
// port or a multiplexer. i8042.nopnp is deliberately absent: on ACPI
// kernels it breaks Ctrl-Alt-Del.
var baseBootArgs = []string{
	"console=ttyS0", "reboot=k", "panic=1",
	"i8042.noaux", "i8042.nomux", "i8042.dumbkbd",
}

var hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// BootArgsConfig holds the per-VM parts of the kernel command line.
type BootArgsConfig struct {
	// IP is the kernel's ip= argument (network.KernelIPArg builds it); ""
	// leaves the guest network to userspace.
	IP string
	// Hostname, when set, is passed as systemd.hostname=: the ip= argument
	// already sets the kernel's hostname, but systemd would replace it
	// from the image's /etc/hostname unless the command line names it.
	Hostname string
	// Extra arguments are appended last; each may hold several
	// space-separated words.
	Extra []string
}

// BootArgs returns the guest kernel command line for PUT /boot-source. It
// never contains root=: the VMM appends root=/dev/vda and ro or rw from
// the root drive, and a second root= would fight it.
func BootArgs(c BootArgsConfig) (string, error) {
	args := append([]string(nil), baseBootArgs...)
	if c.IP != "" {
		if !strings.HasPrefix(c.IP, "ip=") || strings.ContainsAny(c.IP, " \t\n") {
			return "", model.Errorf(model.EINVALID, "boot args: ip argument %q: want one ip=... word", c.IP)
		}
		args = append(args, c.IP)
	}
	if c.Hostname != "" {
		if !hostnameRe.MatchString(c.Hostname) {
			return "", model.Errorf(model.EINVALID, "boot args: hostname %q: want letters, digits and inner hyphens, at most 63", c.Hostname)
		}
		args = append(args, "systemd.hostname="+c.Hostname)
	}
	for _, e := range c.Extra {
		for _, w := range strings.Fields(e) {
			key, _, _ := strings.Cut(w, "=")
			switch {
			case key == "root":
				return "", model.Errorf(model.EINVALID, "boot args: %q: the VMM sets root= itself from the root drive", w)
			case w == "i8042.nopnp":
				return "", model.Errorf(model.EINVALID, "boot args: i8042.nopnp breaks Ctrl-Alt-Del on ACPI guests")
			case key == "ip" && c.IP != "":
				return "", model.Errorf(model.EINVALID, "boot args: %q: ip= is already set from the VM's address", w)
			}
			args = append(args, w)
		}
	}
	return strings.Join(args, " "), nil
}
