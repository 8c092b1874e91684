package firecracker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenTap opens the existing tap device name for a VMM that cannot open it
// itself (it runs unprivileged): TUNSETIFF on /dev/net/tun with IFF_TAP,
// IFF_NO_PI and IFF_VNET_HDR, the flags QEMU's `-netdev tap,fd=N` expects.
// The caller passes the file to the VMM (LaunchConfig.TapFDs) and closes
// its own copy.
func OpenTap(name string) (*os.File, error) {
	if len(name) == 0 || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open tap %q: bad name", name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
