package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The ids of the build sandbox (step.Sandbox): root inside it is
// sandboxUIDBase on the host, an id no user or VM has (VMMs run from
// vmm_uid_base, 1500000000 by default). A container image's package
// manager runs there, not as the host's root: its binaries are the
// image's, which anyone may have made.
const (
	sandboxUIDBase = 1_400_000_000
	sandboxIDCount = 65536
)

// shiftOwners moves the owner and group of every entry of root that has
// an id in [from, from+sandboxIDCount) to the same offset from to,
// without following links. A chown clears setuid and setgid bits and
// file capabilities, so both are put back; a capability the sandbox set
// (which names the sandbox's root) is made the host's.
func shiftOwners(root string, from, to int) error {
	shift := func(id uint32) (int, bool) {
		if int(id) >= from && int(id) < from+sandboxIDCount {
			return int(id) - from + to, true
		}
		return int(id), false
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		uid, uok := shift(st.Uid)
		gid, gok := shift(st.Gid)
		if !uok && !gok {
			return nil
		}
		typ := st.Mode & unix.S_IFMT
		var caps []byte
		if typ == unix.S_IFREG {
			caps = getCaps(p)
		}
		if err := unix.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("shift owner of %s: %w", p, err)
		}
		if typ != unix.S_IFLNK && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			// Nothing else writes the tree meanwhile, and p is not a
			// link: chmod by name is safe.
			if err := unix.Chmod(p, st.Mode&0o7777); err != nil {
				return fmt.Errorf("restore mode of %s: %w", p, err)
			}
		}
		if caps != nil {
			if err := unix.Lsetxattr(p, "security.capability", capsV2(caps), 0); err != nil {
				return fmt.Errorf("restore capabilities of %s: %w", p, err)
			}
		}
		return nil
	})
}

// getCaps returns p's file capabilities, or nil.
func getCaps(p string) []byte {
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(p, "security.capability", buf)
	if err != nil || n < 20 {
		return nil
	}
	return buf[:n]
}

// capsV2 turns version-3 file capabilities (which name the root of a user
// namespace) into version 2 (the host's root); others are kept.
func capsV2(c []byte) []byte {
	const revMask, rev3, rev2 = 0xFF000000, 0x03000000, 0x02000000
	magic := binary.LittleEndian.Uint32(c[:4])
	if magic&revMask != rev3 || len(c) < 24 {
		return c
	}
	out := append([]byte(nil), c[:20]...)
	binary.LittleEndian.PutUint32(out[:4], magic&^revMask|rev2)
	return out
}

// errNotDir is a path of the image that should be a directory.
var errNotDir = errors.New("is not a directory")
