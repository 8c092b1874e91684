package qemuvmm

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths of the form /dev/fd/N or /proc/self/fd/N name a descriptor the
// VMM inherited from whoever started it (bangerd opens the disks, kernel
// and initrd itself and passes them, so the unprivileged VMM needs no
// right to their paths). Such a descriptor is used as it is, never
// reopened by path: reopening /dev/fd/N of a root-owned 0600 file fails
// for the VMM's uid.

// fdFromPath returns N when path is /dev/fd/N or /proc/self/fd/N.
func fdFromPath(path string) (int, bool) {
	var rest string
	switch {
	case strings.HasPrefix(path, "/dev/fd/"):
		rest = strings.TrimPrefix(path, "/dev/fd/")
	case strings.HasPrefix(path, "/proc/self/fd/"):
		rest = strings.TrimPrefix(path, "/proc/self/fd/")
	default:
		return 0, false
	}
	if rest == "" || len(rest) > 9 || strings.TrimLeft(rest, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil {
		return 0, false
	}
	return n, true
}

// inheritedFile is a duplicate of an inherited descriptor: the VMM's own
// copy, closed when the resource that uses it goes, while the inherited
// number stays open for the life of the process (a snapshot load finds
// drives at the same numbers).
type inheritedFile struct {
	f        *os.File
	fd       int // the inherited number
	size     int64
	blockDev bool
	// accMode is O_RDONLY, O_WRONLY or O_RDWR.
	accMode int
}

// openInherited duplicates inherited descriptor n, for what (a fault
// message's subject), and describes it. Only descriptors the VMM was
// started with (cfg.InheritedFD) and only regular files or block devices
// are accepted.
func (v *VMM) openInherited(n int, what string) (*inheritedFile, error) {
	if n < 3 {
		return nil, fmt.Errorf("%s: descriptor %d is a standard stream, not a file", what, n)
	}
	if v.cfg.InheritedFD != nil && !v.cfg.InheritedFD(n) {
		return nil, fmt.Errorf("%s: descriptor %d was not inherited by %s", what, n, AppName)
	}
	dup, err := unix.FcntlInt(uintptr(n), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("%s: descriptor %d: %w", what, n, err)
	}
	f := os.NewFile(uintptr(dup), "/dev/fd/"+strconv.Itoa(n))
	info, err := describeFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: descriptor %d: %w", what, n, err)
	}
	info.fd = n
	return info, nil
}

// describeFile returns f's kind, size and access mode; it refuses what is
// neither a regular file nor a block device.
func describeFile(f *os.File) (*inheritedFile, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return nil, err
	}
	info := &inheritedFile{f: f, accMode: fl & unix.O_ACCMODE}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		info.size = st.Size
	case unix.S_IFBLK:
		info.blockDev = true
		size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			return nil, fmt.Errorf("block device size: %w", err)
		}
		info.size = int64(size)
	default:
		return nil, fmt.Errorf("not a regular file or block device (mode %#o)", st.Mode&unix.S_IFMT)
	}
	return info, nil
}

// readable reports whether the descriptor allows reading.
func (i *inheritedFile) readable() bool { return i.accMode != unix.O_WRONLY }

func (i *inheritedFile) close() {
	if i != nil && i.f != nil {
		i.f.Close()
	}
}

// copyForQEMU copies the content of src into an unnamed file QEMU can
// open as /dev/fd/N: QEMU loads the kernel and initrd by path (and maps
// them: it reads the initrd from its mapping for the whole boot, so the
// copy must stay whole while QEMU lives), and the inherited descriptor's
// path cannot be reopened by an unprivileged VMM. The copy is an
// O_TMPFILE in dir (page cache, reclaimable, gone with QEMU; reflinked
// where the file system can), or a memfd where dir takes no O_TMPFILE.
// src is read at explicit offsets, so the shared offset does not move.
func copyForQEMU(dir, name string, src *os.File, size int64) (*os.File, error) {
	var dst *os.File
	if fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		dst = os.NewFile(uintptr(fd), filepath.Join(dir, name))
	} else {
		fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", name, err)
		}
		dst = os.NewFile(uintptr(fd), "memfd:"+name)
	}
	var off, dstOff int64
	for off < size {
		n, err := unix.CopyFileRange(int(src.Fd()), &off, int(dst.Fd()), &dstOff, int(size-off), 0)
		if err != nil || n == 0 {
			// copy_file_range cannot cross every pair of file systems;
			// fall back to reads and writes.
			if _, err := io.Copy(io.NewOffsetWriter(dst, dstOff), io.NewSectionReader(src, off, size-off)); err != nil {
				dst.Close()
				return nil, fmt.Errorf("copy %s: %w", name, err)
			}
			break
		}
	}
	return dst, nil
}

// InheritedFDs returns the descriptors above 2 this process holds now;
// called first thing in main, it is the set the VMM was started with.
func InheritedFDs() (map[int]bool, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list inherited descriptors: %w", err)
	}
	out := map[int]bool{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err == nil && n > 2 {
			out[n] = true
		}
	}
	// The directory listing's own descriptor was among them.
	for n := range out {
		if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err != nil {
			delete(out, n)
		}
	}
	return out, nil
}
