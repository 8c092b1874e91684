package storage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// HostKey is the SSH host key pair the daemon makes for a VM: the private
// key in OpenSSH format and the public key in authorized_keys format.
type HostKey struct {
	Private []byte
	Public  string
}

// sandboxTimeout bounds a sandboxed e2fsprogs run: a hostile filesystem
// must not hold a VM's start forever.
const sandboxTimeout = 2 * time.Minute

// hostKeyDir is where sshd finds its host keys.
const hostKeyDir = "/etc/ssh"

// staleHostKeys are removed so the guest offers only banger's key.
var staleHostKeys = []string{
	"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub",
	"ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub",
	"ssh_host_rsa_key", "ssh_host_rsa_key.pub",
	"ssh_host_dsa_key", "ssh_host_dsa_key.pub",
}

// hostKeyScript is the debugfs command file that replaces the host keys
// in /etc/ssh with the two files inherited at privPath and pubPath. Only
// constants and the descriptor paths appear in it.
func hostKeyScript(privPath, pubPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cd %s\n", hostKeyDir)
	for _, k := range staleHostKeys {
		fmt.Fprintf(&b, "rm %s\n", k)
	}
	for _, f := range []struct {
		src, name string
		mode      string
	}{
		{privPath, "ssh_host_ed25519_key", "0100600"},
		{pubPath, "ssh_host_ed25519_key.pub", "0100644"},
	} {
		fmt.Fprintf(&b, "write %s %s\n", f.src, f.name)
		fmt.Fprintf(&b, "sif %s mode %s\n", f.name, f.mode)
		fmt.Fprintf(&b, "sif %s uid 0\n", f.name)
		fmt.Fprintf(&b, "sif %s gid 0\n", f.name)
	}
	return b.String()
}

// memFile returns an anonymous in-memory file holding data, which a
// sandboxed command can read through its descriptor path.
func memFile(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return f, nil
}

// InstallHostKey writes key into /etc/ssh on the ext4 filesystem of
// device (a VM's system disk, not running), replacing any host key the
// image carried, so the guest's sshd presents the key the daemon made
// and the daemon never has to learn a key from the guest. debugfs edits
// the filesystem as an unprivileged uid with the disk and the key passed
// as descriptors: root never parses a disk's contents, which a user's
// image or an earlier boot of the guest wrote. The result is read back
// and compared.
func (m *Manager) InstallHostKey(ctx context.Context, device string, uid int, key HostKey) error {
	or, ok := m.run.(hostexec.OptionRunner)
	if !ok {
		return fmt.Errorf("install host key: the command runner cannot run commands as another user")
	}
	disk, err := m.openDevice(device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("install host key: %w", err)
	}
	defer disk.Close()
	priv, err := memFile("host-key", key.Private)
	if err != nil {
		return fmt.Errorf("install host key: %w", err)
	}
	defer priv.Close()
	pub, err := memFile("host-key.pub", []byte(strings.TrimSpace(key.Public)+"\n"))
	if err != nil {
		return fmt.Errorf("install host key: %w", err)
	}
	defer pub.Close()

	as := &hostexec.Credential{UID: uint32(uid), GID: uint32(uid)}
	opts := hostexec.Options{
		As: as, ExtraFiles: []*os.File{disk, priv, pub}, Timeout: sandboxTimeout,
		Stdin: strings.NewReader(hostKeyScript(hostexec.FDPath(1), hostexec.FDPath(2))),
	}
	// debugfs exits 0 whatever its commands did; the read-back below is
	// what says whether the key is there.
	if _, err := or.RunWith(ctx, opts, "debugfs", "-w", "-f", "-", hostexec.FDPath(0)); err != nil {
		return fmt.Errorf("install host key: %w", err)
	}
	check := hostexec.Options{As: as, ExtraFiles: []*os.File{disk}, Timeout: sandboxTimeout}
	out, err := or.RunWith(ctx, check, "debugfs", "-R", "cat "+hostKeyDir+"/ssh_host_ed25519_key.pub", hostexec.FDPath(0))
	if err != nil {
		return fmt.Errorf("install host key: read back: %w", err)
	}
	if !bytes.Equal(bytes.TrimSpace(out), []byte(strings.TrimSpace(key.Public))) {
		return model.Errorf(model.EINVALID, "install host key: the system disk has no usable %s (is its root filesystem ext4 with an /etc/ssh directory?)", hostKeyDir)
	}
	return nil
}

// OwnAttached gives the VM's uid the device its system disk is attached
// as (a dm node; for the file strategies, the overlay file itself), so
// the sandboxed tools and the VMM running as that uid can use it.
func (m *Manager) OwnAttached(att Attached, uid int) error {
	return m.own(att.Device, uid, m.openDevice)
}

// OwnDisk gives the VM's uid one of its disk files (the overlay, the
// work disk), which the daemon made in a root-only directory.
func (m *Manager) OwnDisk(path string, uid int) error {
	return m.own(path, uid, os.OpenFile)
}

func (m *Manager) own(path string, uid int, open func(string, int, os.FileMode) (*os.File, error)) error {
	f, err := open(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("disk owner: %w", err)
	}
	defer f.Close()
	if err := m.chown(f, uid, uid); err != nil {
		return fmt.Errorf("disk owner: %w", err)
	}
	return nil
}
