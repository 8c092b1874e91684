package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// diskMode is the permission of overlay and work disk files: they hold a
// guest's root filesystem and home, readable by root only.
const diskMode = 0o600

// AllocatedBytes returns the bytes a file occupies on disk (st_blocks ×
// 512), which for a sparse disk is far below its size. Blocks a reflink
// clone shares with its source are counted in full: st_blocks does not
// see sharing.
func AllocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("allocated bytes of %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

// cloneFile makes dst share src's blocks (FICLONE).
func cloneFile(dst, src *os.File) error {
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
}

// copyBlock is the unit sparseCopy checks for zeros: a block of zeros in
// the source becomes a hole in the copy.
const copyBlock = 4096

// sparseCopy copies src into dst, which must be empty, leaving holes
// where src has holes (found with SEEK_DATA/SEEK_HOLE) and where src has
// whole blocks of zeros. dst ends up the size of src.
func sparseCopy(ctx context.Context, dst, src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	fd := int(src.Fd())
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		hole := size
		if err != nil {
			// The filesystem cannot report holes: copy the rest,
			// skipping zero blocks.
			data = off
		} else if hole, err = unix.Seek(fd, data, unix.SEEK_HOLE); err != nil {
			return fmt.Errorf("seek hole in %s: %w", src.Name(), err)
		}
		if err := copyRange(ctx, dst, src, data, min(hole, size), buf); err != nil {
			return err
		}
		off = hole
	}
	return dst.Truncate(size)
}

// copyRange copies [from, to) of src into dst at the same offsets,
// skipping blocks of zeros.
func copyRange(ctx context.Context, dst, src *os.File, from, to int64, buf []byte) error {
	zero := make([]byte, copyBlock)
	for off := from; off < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := src.ReadAt(buf[:min(int64(len(buf)), to-off)], off)
		if n == 0 && err != nil {
			if err == io.EOF {
				return nil // src shrank under us; the final truncate fixes the size
			}
			return fmt.Errorf("read %s: %w", src.Name(), err)
		}
		chunk := buf[:n]
		for start := 0; start < len(chunk); {
			end := min(start+copyBlock, len(chunk))
			if bytes.Equal(chunk[start:end], zero[:end-start]) {
				start = end
				continue
			}
			// Extend the run of non-zero blocks and write it at once.
			for end < len(chunk) {
				next := min(end+copyBlock, len(chunk))
				if bytes.Equal(chunk[end:next], zero[:next-end]) {
					break
				}
				end = next
			}
			if _, err := dst.WriteAt(chunk[start:end], off+int64(start)); err != nil {
				return fmt.Errorf("write %s: %w", dst.Name(), err)
			}
			start = end
		}
		off += int64(n)
	}
	return nil
}

// fillFrom fills dst (empty) with src's contents: a reflink clone when
// tryClone is set and the filesystem allows it, else a sparse copy. It
// reports whether it cloned.
func (m *Manager) fillFrom(ctx context.Context, dst *os.File, srcPath string, tryClone bool) (bool, error) {
	src, err := os.Open(srcPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, model.Errorf(model.ENOTFOUND, "%s does not exist: %w", srcPath, err)
		}
		return false, err
	}
	defer src.Close()
	return m.fillFromFile(ctx, dst, src, tryClone)
}

func (m *Manager) fillFromFile(ctx context.Context, dst, src *os.File, tryClone bool) (bool, error) {
	if tryClone {
		err := m.clone(dst, src)
		if err == nil {
			return true, nil
		}
		m.logger.Warn("reflink clone failed, copying instead", "src", src.Name(), "dst", dst.Name(), "err", err)
	}
	if err := sparseCopy(ctx, dst, src); err != nil {
		return false, fmt.Errorf("copy %s: %w", src.Name(), err)
	}
	return false, nil
}

// ImportFile fills dst, an empty file of the daemon's, with src's
// contents: a reflink clone where the filesystem shares blocks, else a
// sparse copy (holes and blocks of zeros stay holes). It reports whether
// it cloned. Once it returns, nothing done to src reaches dst.
func (m *Manager) ImportFile(ctx context.Context, dst, src *os.File) (bool, error) {
	// A clone across filesystems fails at once (EXDEV): that is the
	// common case here, not worth a warning.
	if m.clone(dst, src) == nil {
		return true, nil
	}
	if err := sparseCopy(ctx, dst, src); err != nil {
		return false, fmt.Errorf("copy %s: %w", src.Name(), err)
	}
	return false, nil
}

// e2fsckArgs returns e2fsck's argv to check and repair an image file
// before resize2fs, which insists on a freshly checked filesystem.
func e2fsckArgs(path string) []string { return []string{"-fy", path} }

// resize2fsArgs returns resize2fs's argv to grow the filesystem in path
// to the size of the file.
func resize2fsArgs(path string) []string { return []string{path} }

// mkfsArgs returns mkfs.ext4's argv to make an empty work filesystem
// filling path.
func mkfsArgs(path string) []string { return []string{"-q", "-F", "-L", "work", path} }

// fsToolTimeout bounds one e2fsck or resize2fs run on a VM's disk: a
// filesystem a guest crafted must not keep the daemon waiting forever.
const fsToolTimeout = 10 * time.Minute

// growFS grows the disk file f to size bytes and its ext4 filesystem
// with it. The check comes first, so a filesystem that fails it is left
// at its old size. The filesystem is the guest's work, which a hostile
// guest shapes as it likes, and e2fsprogs parse it: they run as owner,
// an unprivileged user with no supplementary groups, on f passed as an
// inherited descriptor, and are killed after fsToolTimeout. f is made
// owner's (mode 0600) so that user can open it.
func (m *Manager) growFS(ctx context.Context, f *os.File, size int64, owner hostexec.Credential) error {
	if err := m.ownDisk(f, owner); err != nil {
		return err
	}
	if _, err := m.runOnDisk(ctx, f, owner, "e2fsck", e2fsckArgs(hostexec.FDPath(0))...); err != nil && !e2fsckFixed(err) {
		return fmt.Errorf("check filesystem in %s: %w", f.Name(), err)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("grow %s: %w", f.Name(), err)
	}
	if _, err := m.runOnDisk(ctx, f, owner, "resize2fs", resize2fsArgs(hostexec.FDPath(0))...); err != nil {
		return fmt.Errorf("grow filesystem in %s: %w", f.Name(), err)
	}
	return nil
}

// growImageFS grows the file at path to size bytes and its ext4
// filesystem with it, running e2fsprogs as the daemon. It serves system
// overlays, made from an image's root filesystem before any guest wrote
// to them; a guest's work disk goes through growFS.
func (m *Manager) growImageFS(ctx context.Context, path string, size int64) error {
	if _, err := m.run.Run(ctx, "e2fsck", e2fsckArgs(path)...); err != nil && !e2fsckFixed(err) {
		return fmt.Errorf("check filesystem in %s: %w", path, err)
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	if _, err := m.run.Run(ctx, "resize2fs", resize2fsArgs(path)...); err != nil {
		return fmt.Errorf("grow filesystem in %s: %w", path, err)
	}
	return nil
}

// ownDisk makes the disk file f owned by owner with mode 0600. Root
// (uid 0) is refused: a guest's filesystem is never parsed as root.
func (m *Manager) ownDisk(f *os.File, owner hostexec.Credential) error {
	if owner.UID == 0 || owner.GID == 0 {
		return fmt.Errorf("disk %s: refusing to work on a guest's filesystem as root (uid or gid 0); the daemon must pass the VM's own uid", f.Name())
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("disk %s is not a regular file", f.Name())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != owner.UID || st.Gid != owner.GID {
		if err := m.chown(f, int(owner.UID), int(owner.GID)); err != nil {
			return fmt.Errorf("give disk %s to the vm's user %s: %w", f.Name(), owner, err)
		}
	}
	if fi.Mode().Perm() != diskMode {
		if err := f.Chmod(diskMode); err != nil {
			return fmt.Errorf("chmod disk %s: %w", f.Name(), err)
		}
	}
	return nil
}

// runOnDisk runs a command as owner with f as its descriptor 3
// (hostexec.FDPath(0)), killed after fsToolTimeout.
func (m *Manager) runOnDisk(ctx context.Context, f *os.File, owner hostexec.Credential, name string, args ...string) ([]byte, error) {
	r, ok := m.run.(hostexec.OptionRunner)
	if !ok {
		return nil, fmt.Errorf("%s: the command runner cannot run commands as another user", name)
	}
	return r.RunWith(ctx, hostexec.Options{As: &owner, ExtraFiles: []*os.File{f}, Timeout: fsToolTimeout}, name, args...)
}

// e2fsckFixed reports whether an e2fsck failure is its exit status 1 or 2:
// errors found and corrected, which leaves a clean filesystem.
func e2fsckFixed(err error) bool {
	var ee *hostexec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	c := ee.ExitCode()
	return c == 1 || c == 2
}

// tempPath is where a disk file is built before it is renamed to path.
// The name is fixed, so a build interrupted by a crash is replaced by the
// next one instead of piling up.
func tempPath(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
}

// buildFile makes the file at path: build fills a fresh temporary file
// next to it (it may also run commands on the temporary path), which is
// then synced and renamed into place, so a crash never leaves a half-made
// file under path. Unless replace is set, an existing path is an
// ECONFLICT error and is left alone. On error the temporary file is
// removed.
func buildFile(path string, replace bool, build func(f *os.File, tmp string) error) (err error) {
	if !replace {
		if _, err := os.Lstat(path); err == nil {
			return model.Errorf(model.ECONFLICT, "%s already exists", path)
		}
	}
	tmp := tempPath(path)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, diskMode)
	if err != nil {
		return err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := build(f, tmp); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		f = nil
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	f = nil
	if err := rename(tmp, path, replace); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// rename moves tmp to path; unless replace is set it fails with
// ECONFLICT instead of replacing an existing path.
func rename(tmp, path string, replace bool) error {
	if replace {
		return os.Rename(tmp, path)
	}
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return model.Errorf(model.ECONFLICT, "%s already exists", path)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		// The filesystem cannot refuse to replace: check, then rename.
		if _, err := os.Lstat(path); err == nil {
			return model.Errorf(model.ECONFLICT, "%s already exists", path)
		}
		return os.Rename(tmp, path)
	}
	return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// CopyFile makes dstPath (which must not exist) a copy of srcPath as it
// is now: a reflink clone where the filesystem shares blocks, else a
// sparse copy. The copy appears under dstPath only when complete and
// flushed. It reports whether it cloned.
func (m *Manager) CopyFile(ctx context.Context, dstPath, srcPath string) (bool, error) {
	if _, err := os.Lstat(dstPath); err == nil {
		return false, fmt.Errorf("copy %s: %s already exists", srcPath, dstPath)
	}
	tmp := dstPath + ".part"
	os.Remove(tmp)
	dst, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, diskMode)
	if err != nil {
		return false, fmt.Errorf("copy %s: %w", srcPath, err)
	}
	cloned, err := m.fillFrom(ctx, dst, srcPath, true)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dstPath)
	}
	if err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("copy %s to %s: %w", srcPath, dstPath, err)
	}
	return cloned, nil
}
