package firecracker

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// TapFlags are the TUNSETIFF flags a VMM's tap descriptor is opened
// with: a tap (Ethernet frames), no packet information prefix, and the
// virtio-net header, as Firecracker opens its taps (net/tap.rs) and as
// QEMU expects of a descriptor given with -netdev tap,fd=.
const TapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// CheckTapName checks name against the kernel's rules for interface
// names (dev_valid_name): 1 to 15 bytes, not "." or "..", no '/', ':' or
// white space.
func CheckTapName(name string) error {
	switch {
	case name == "" || len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("interface name %q: want 1 to %d bytes", name, unix.IFNAMSIZ-1)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("interface name %q: no '/', ':' or white space allowed", name)
	}
	return nil
}

// OpenTap attaches to the tap device name in the calling thread's
// network namespace and returns its descriptor, opened with TapFlags
// (close-on-exec; pass it to the VMM in LaunchConfig.ExtraFiles and name
// it in LaunchConfig.TapFDs). Attaching to an existing tap needs
// CAP_NET_ADMIN or the tap's owner or group; a name that does not exist
// creates a transient tap, which needs CAP_NET_ADMIN.
func OpenTap(name string) (*os.File, error) {
	if err := CheckTapName(name); err != nil {
		return nil, fmt.Errorf("open tap: %w", err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	ifr.SetUint16(TapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("open tap %s: %w (needs CAP_NET_ADMIN or ownership of the tap)", name, err)
		}
		return nil, fmt.Errorf("open tap %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// TapName returns the name of the tap device f is attached to and its
// TUN flags (TUNGETIFF); it fails when f is not a tun/tap descriptor.
func TapName(f *os.File) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return "", 0, fmt.Errorf("tap name: %w", err)
	}
	var ioErr error
	if err := raw.Control(func(fd uintptr) { ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) }); err != nil {
		return "", 0, fmt.Errorf("tap name: %w", err)
	}
	if ioErr != nil {
		return "", 0, fmt.Errorf("tap name: TUNGETIFF: %w (not a tap descriptor)", ioErr)
	}
	return ifr.Name(), ifr.Uint16(), nil
}

// SetTapOwner lets uid attach to the tap device name (TUNSETOWNER on the
// persistent tap), for a VMM that opens its tap by name as that uid:
// Firecracker under its jailer.
func SetTapOwner(name string, uid int) error {
	f, err := OpenTap(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("tap %s: set owner %d: %w", name, uid, err)
	}
	return nil
}
