package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A suspended VM's saved state is two files in <vm dir>/saved: "state"
// (the machine and device description) and "mem" (the guest's memory),
// as the VMM wrote them with PUT /snapshot/create.
//
// The VMM may write only <vm dir>/vmm, so it writes them there first
// (suspend.state, suspend.mem). Once it is dead, the daemon checks them
// (regular files of the VM's uid, one link each) and moves them into
// saved.new, a directory only root may enter, then renames saved.new to
// saved. Only a directory named saved counts as a saved state: files a
// VMM finished writing after the daemon crashed, or a move cut short, are
// never taken for one. A resume passes the two files to the new VMM as
// descriptors, and drops the directory (renamed to saved.old, then
// emptied) once the VMM has loaded it and before the guest runs again:
// a saved state older than the disks is never loaded.

const (
	savedDirName    = "saved"
	savedNewDirName = "saved.new"
	savedOldDirName = "saved.old"
	savedStateName  = "state"
	savedMemName    = "mem"
	// stagingState and stagingMem are where the VMM writes, in its own
	// directory.
	stagingState = "suspend.state"
	stagingMem   = "suspend.mem"
)

func savedDir(vmDir string) string { return filepath.Join(vmDir, savedDirName) }

// stagingPaths are the files the VMM writes a snapshot to.
func stagingPaths(vmDir string) (state, mem string) {
	return filepath.Join(vmmDir(vmDir), stagingState), filepath.Join(vmmDir(vmDir), stagingMem)
}

// savedPaths are a saved state's files.
func savedPaths(vmDir string) (state, mem string) {
	return filepath.Join(savedDir(vmDir), savedStateName), filepath.Join(savedDir(vmDir), savedMemName)
}

// savedStateInfo describes what of a saved state is on disk.
type savedStateInfo struct {
	// Complete says the saved directory holds both files.
	Complete bool
	// Bytes is the disk the saved state takes (allocated blocks).
	Bytes int64
	// At is when it was saved (the saved directory's time).
	At time.Time
	// Partial says a move or a drop was cut short, or the VMM left
	// snapshot files in its directory: leftovers, never a saved state.
	Partial bool
}

// readSavedState looks at a VM dir's saved state. It never follows a
// link.
func readSavedState(vmDir string) savedStateInfo {
	var info savedStateInfo
	st, mem := savedPaths(vmDir)
	if fi, err := os.Lstat(savedDir(vmDir)); err == nil && fi.IsDir() {
		a, aerr := os.Lstat(st)
		b, berr := os.Lstat(mem)
		if aerr == nil && berr == nil && a.Mode().IsRegular() && b.Mode().IsRegular() {
			info.Complete = true
			info.Bytes = allocated(a) + allocated(b)
			info.At = fi.ModTime().UTC().Truncate(time.Second)
		} else {
			info.Partial = true
		}
	} else if err == nil {
		info.Partial = true // something that is not a directory
	}
	sst, smem := stagingPaths(vmDir)
	for _, p := range []string{filepath.Join(vmDir, savedNewDirName), filepath.Join(vmDir, savedOldDirName), sst, smem} {
		if _, err := os.Lstat(p); err == nil {
			info.Partial = true
		}
	}
	if partials, _ := filepath.Glob(filepath.Join(vmmDir(vmDir), ".suspend.*.partial-*")); len(partials) > 0 {
		info.Partial = true
	}
	return info
}

// allocated is the disk a file takes.
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// removeSavedPartial removes what is never a saved state: the VMM's
// snapshot files, a move or a drop cut short.
func removeSavedPartial(vmDir string) error {
	sst, smem := stagingPaths(vmDir)
	// A VMM that cannot make unnamed files writes under a temporary
	// name first.
	partials, _ := filepath.Glob(filepath.Join(vmmDir(vmDir), ".suspend.*.partial-*"))
	var errs []error
	for _, p := range append([]string{sst, smem, filepath.Join(vmDir, savedNewDirName), filepath.Join(vmDir, savedOldDirName)}, partials...) {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dropSavedState removes a VM's saved state and any partial one. The
// directory is first renamed, so a crash part way never leaves a saved
// directory missing a file; the files are emptied before they go, so a
// VMM that still holds them (a resumed one keeps its descriptors) does
// not keep their blocks.
func dropSavedState(vmDir string) error {
	old := filepath.Join(vmDir, savedOldDirName)
	if err := os.Rename(savedDir(vmDir), old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop saved state: %w", err)
	}
	for _, name := range []string{savedStateName, savedMemName} {
		truncateNoFollow(filepath.Join(old, name))
	}
	if err := removeSavedPartial(vmDir); err != nil {
		return fmt.Errorf("drop saved state: %w", err)
	}
	return nil
}

// dropSavedStateSoon is dropSavedState for a resume's commit, whose
// caller is waiting on it: the saved directory is renamed away at once
// (from then on it is never a saved state: readSavedState sees a drop
// cut short, which reconcile removes), and its files, hundreds of MiB
// whose blocks take the filesystem a while to free, are emptied and
// removed in the background (wg counts it: the daemon's Close waits).
func dropSavedStateSoon(vmDir string, log *slog.Logger, wg *sync.WaitGroup) error {
	old := filepath.Join(vmDir, savedOldDirName)
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("drop saved state: %w", err)
	}
	if err := os.Rename(savedDir(vmDir), old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop saved state: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, name := range []string{savedStateName, savedMemName} {
			truncateNoFollow(filepath.Join(old, name))
		}
		// Whatever else removes partial saved states may get there
		// first; what is gone is gone.
		if err := os.RemoveAll(old); err != nil {
			log.Warn("remove a dropped saved state", "dir", old, "err", err)
		}
	}()
	return nil
}

// truncateNoFollow empties a regular file; links and anything else are
// left alone (they are removed with their directory).
func truncateNoFollow(path string) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		unix.Ftruncate(fd, 0)
	}
}

// adoptSnapshot moves the files a VMM (now dead) wrote into the VM's
// saved directory, checking each is a regular file with one link, owned
// by uid (the VMM's) or the daemon, once it is where the VMM cannot reach
// it. It returns the saved state's size.
func adoptSnapshot(vmDir string, uid int) (int64, error) {
	sst, smem := stagingPaths(vmDir)
	newDir := filepath.Join(vmDir, savedNewDirName)
	for _, p := range []string{newDir, filepath.Join(vmDir, savedOldDirName), savedDir(vmDir)} {
		if err := os.RemoveAll(p); err != nil {
			return 0, fmt.Errorf("saved state: %w", err)
		}
	}
	if err := os.Mkdir(newDir, 0o700); err != nil {
		return 0, fmt.Errorf("saved state: %w", err)
	}
	var total int64
	for _, f := range []struct{ from, to string }{{smem, savedMemName}, {sst, savedStateName}} {
		to := filepath.Join(newDir, f.to)
		if err := os.Rename(f.from, to); err != nil {
			return 0, fmt.Errorf("saved state: the VMM's snapshot: %w", err)
		}
		// In newDir nothing but root can swap the file any more.
		fi, err := os.Lstat(to)
		if err != nil {
			return 0, fmt.Errorf("saved state: %w", err)
		}
		if err := checkSnapshotFile(fi, uid); err != nil {
			return 0, fmt.Errorf("saved state: the VMM's %s: %w", filepath.Base(f.from), err)
		}
		total += allocated(fi)
	}
	syncDir(newDir)
	if err := os.Rename(newDir, savedDir(vmDir)); err != nil {
		return 0, fmt.Errorf("saved state: %w", err)
	}
	syncDir(vmDir)
	return total, nil
}

// checkSnapshotFile refuses what a VMM could have put in place of its
// snapshot file to make root read something else: a link, a device, a
// FIFO, a hard link to another file, a file of another user.
func checkSnapshotFile(fi fs.FileInfo, uid int) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if st.Nlink != 1 {
		return fmt.Errorf("has %d links", st.Nlink)
	}
	if int(st.Uid) != uid && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("belongs to uid %d, not the VMM's %d", st.Uid, uid)
	}
	return nil
}

// openSaved opens a saved state's file for the VMM that loads it: never
// through a link, only a regular file with one link.
func openSaved(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("saved state: open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err == nil {
		if !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", path)
		} else if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
			err = fmt.Errorf("%s has %d links", path, st.Nlink)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("saved state: %w", err)
	}
	return f, nil
}

// syncDir flushes a directory's entries.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
