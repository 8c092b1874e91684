package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/storage"
)

// hostKeyPath is where the daemon keeps the private half of the SSH host
// key it made for a VM (root only).
func hostKeyPath(vmDir string) string { return filepath.Join(vmDir, "ssh_host_ed25519_key") }

// vmmUID is the unprivileged uid (and gid) a VM's VMM and the sandboxed
// tools working on its disks run as: the configured base plus the offset
// of the VM's guest IP in the subnet. Guest IPs are unique among VMs, so
// no two VMs share a uid.
func (d *Daemon) vmmUID(vm model.VMRecord) (int, error) {
	prefix, err := network.Subnet(d.cfg.BridgeIP, d.cfg.CIDR)
	if err != nil {
		return 0, err
	}
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil || !prefix.Contains(ip) || !ip.Is4() {
		return 0, fmt.Errorf("vm %s: guest IP %q is not in %s", vm.Name, vm.Runtime.GuestIP, prefix)
	}
	a, b := ip.As4(), prefix.Masked().Addr().As4()
	off := (int(a[0])<<24 | int(a[1])<<16 | int(a[2])<<8 | int(a[3])) - (int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3]))
	base := d.cfg.VMMUIDBase
	if base == 0 {
		base = defaultVMMUIDBase
	}
	return base + off, nil
}

// defaultVMMUIDBase is config.DefaultVMMUIDBase, for daemons built from a
// configuration that did not set one (tests).
const defaultVMMUIDBase = 1500000000

// ensureHostKey makes sure the VM has a host key pair made by the daemon,
// recorded in the row (public) and the VM dir (private), and that it is on
// the system disk at device, whose filesystem sshd boots from. The daemon
// then accepts only that key (guest.Dial): it never learns a key from a
// guest, so a guest answering on another VM's address during that VM's
// boot receives no connection. A new key is made when none is recorded or
// the private half is missing; it is installed when the system disk is
// fresh (first start, reset-system) or the key is new. The row is saved
// after each change, so a crash at any point re-does only what is left.
func (d *Daemon) ensureHostKey(ctx context.Context, vm *model.VMRecord, device string, uid int) error {
	path := hostKeyPath(vm.Runtime.VMDir)
	priv, err := os.ReadFile(path)
	var pub string
	if err == nil {
		if s, perr := ssh.ParsePrivateKey(priv); perr == nil {
			pub = guest.AuthorizedKey(s.PublicKey())
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("host key: %w", err)
	}
	if pub == "" || pub != vm.Runtime.SSHHostKey {
		if priv, pub, err = guest.NewHostKey(); err != nil {
			return err
		}
		if err := fsutil.WriteFileAtomic(path, priv, 0o600); err != nil {
			return fmt.Errorf("host key: %w", err)
		}
		vm.Runtime.SSHHostKey = pub
		vm.Runtime.HostKeyInstalled = false
		vm.UpdatedAt = model.Now()
		if err := d.store.UpdateVM(ctx, *vm); err != nil {
			return err
		}
	}
	if vm.Runtime.HostKeyInstalled {
		return nil
	}
	if err := d.storage.InstallHostKey(ctx, device, uid, storage.HostKey{Private: priv, Public: pub}); err != nil {
		return err
	}
	vm.Runtime.HostKeyInstalled = true
	vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}
