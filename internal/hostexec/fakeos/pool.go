package fakeos

import (
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/hostexec"
)

// The storage pool's commands: mkfs.xfs makes a filesystem in a file,
// mount and umount put it on a directory (through a loop device with
// -o loop), findmnt reports a mount point, xfs_growfs grows a mounted
// filesystem. The directory itself stays an ordinary directory: a test
// that needs clones replaces the clone function.

func init() {
	register("mkfs.xfs", (*OS).mkfsXFS)
	register("mount", (*OS).mount)
	register("umount", (*OS).umount)
	register("findmnt", (*OS).findmnt)
	register("xfs_growfs", (*OS).xfsGrowfs)
}

// Mount is a mounted filesystem.
type Mount struct {
	Source string // the device
	Dir    string
	FSType string
	// Grown counts xfs_growfs runs on the mount.
	Grown int
}

// xfsMagic starts an XFS superblock.
const xfsMagic = "XFSB"

// fsType is the filesystem in file, as far as the fake knows them.
func fsType(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, 0); err == nil && string(b) == xfsMagic {
		return "xfs"
	}
	return ""
}

// mkfsXFS handles `mkfs.xfs -q -m reflink=1 -L LABEL FILE`.
func (o *OS) mkfsXFS(args []string, _ string) (string, error) {
	if len(args) != 6 || args[0] != "-q" || args[1] != "-m" || args[2] != "reflink=1" || args[3] != "-L" {
		return "", hostexec.ErrUnexpected
	}
	fi, err := os.Stat(args[5])
	if err != nil || fi.Size() < 300<<20 {
		return fmt.Sprintf("mkfs.xfs: %s: not a file of at least 300 MiB\n", args[5]), fmt.Errorf("exit status 1")
	}
	// The superblock's magic, as mkfs.xfs writes it: mount reads it
	// back, whatever the file is renamed to.
	f, err := os.OpenFile(args[5], os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(xfsMagic), 0); err != nil {
		return "", err
	}
	return "", nil
}

// mount handles `mount -t TYPE [-o loop] SOURCE DIR`.
func (o *OS) mount(args []string, _ string) (string, error) {
	if len(args) < 4 || args[0] != "-t" {
		return "", hostexec.ErrUnexpected
	}
	fstype, rest := args[1], args[2:]
	loop := false
	if len(rest) == 4 && rest[0] == "-o" && rest[1] == "loop" {
		loop, rest = true, rest[2:]
	}
	if len(rest) != 2 {
		return "", hostexec.ErrUnexpected
	}
	src, dir := rest[0], filepath.Clean(rest[1])
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Sprintf("mount: %s: mount point does not exist.\n", dir), fmt.Errorf("exit status 32")
	}
	if m := o.Mounts[dir]; m != nil {
		return fmt.Sprintf("mount: %s: %s already mounted on %s.\n", dir, m.Source, dir), fmt.Errorf("exit status 32")
	}
	file := src
	if loop {
		p, err := realPath(src)
		if err != nil {
			return fmt.Sprintf("mount: %s: failed to setup loop device.\n", src), fmt.Errorf("exit status 32")
		}
		n := 0
		for o.Loops[fmt.Sprintf("/dev/loop%d", n)] != nil {
			n++
		}
		src = fmt.Sprintf("/dev/loop%d", n)
		o.Loops[src] = &Loop{Dev: src, File: p}
		file = p
	} else if l := o.Loops[src]; l != nil {
		file = l.File
	} else {
		return fmt.Sprintf("mount: %s: special device %s does not exist.\n", dir, src), fmt.Errorf("exit status 32")
	}
	if fsType(file) != fstype {
		return fmt.Sprintf("mount: %s: wrong fs type, bad option, bad superblock on %s.\n", dir, src), fmt.Errorf("exit status 32")
	}
	o.Mounts[dir] = &Mount{Source: src, Dir: dir, FSType: fstype}
	return "", nil
}

// umount handles `umount DIR`.
func (o *OS) umount(args []string, _ string) (string, error) {
	if len(args) != 1 {
		return "", hostexec.ErrUnexpected
	}
	dir := filepath.Clean(args[0])
	if o.Mounts[dir] == nil {
		return fmt.Sprintf("umount: %s: not mounted.\n", dir), fmt.Errorf("exit status 32")
	}
	delete(o.Mounts, dir)
	return "", nil
}

// findmnt handles `findmnt -n -o SOURCE,FSTYPE --mountpoint DIR`: exit
// status 1 and no output when nothing is mounted there.
func (o *OS) findmnt(args []string, _ string) (string, error) {
	if len(args) != 5 || args[0] != "-n" || args[1] != "-o" || args[2] != "SOURCE,FSTYPE" || args[3] != "--mountpoint" {
		return "", hostexec.ErrUnexpected
	}
	m := o.Mounts[filepath.Clean(args[4])]
	if m == nil {
		return "", fmt.Errorf("exit status 1")
	}
	return m.Source + " " + m.FSType + "\n", nil
}

// xfsGrowfs handles `xfs_growfs DIR`.
func (o *OS) xfsGrowfs(args []string, _ string) (string, error) {
	if len(args) != 1 {
		return "", hostexec.ErrUnexpected
	}
	m := o.Mounts[filepath.Clean(args[0])]
	if m == nil || m.FSType != "xfs" {
		return fmt.Sprintf("xfs_growfs: %s is not a mounted XFS filesystem\n", args[0]), fmt.Errorf("exit status 1")
	}
	m.Grown++
	return "", nil
}
