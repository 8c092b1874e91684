package qemuvmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultAccelCacheDir is where the accelerator choice is kept: under
// /run, so it goes with the host boot it was measured in.
const DefaultAccelCacheDir = "/run/banger-vmm-qemu"

// bootIDPath holds the kernel's random id of this host boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// AccelCache keeps the auto accelerator choice for one host boot, so the
// probe guest runs once per boot (banger-vmm-qemu --probe-accel, run by
// the daemon as root, fills it) and unprivileged VMMs only read it. The
// file is Dir/accel-<boot id>.json; it is written without temporary
// names (an O_TMPFILE linked in when complete), so a writer killed at
// any point leaves nothing behind.
type AccelCache struct {
	Dir string
	// BootIDPath is the boot id file; default /proc/sys/kernel/random/boot_id.
	BootIDPath string
	// Log, if set, hears why a choice was not cached.
	Log *slog.Logger
}

// cachedAccel is the cache file's content.
type cachedAccel struct {
	Version int    `json:"version"`
	BootID  string `json:"boot_id"`
	// QEMU identifies the binary the probe ran: path, size and mtime.
	QEMU   string `json:"qemu"`
	Accel  string `json:"accel"`
	Why    string `json:"why"`
	TSCkHz uint64 `json:"tsc_khz"`
}

const accelCacheVersion = 1

func (c *AccelCache) bootID() (string, error) {
	p := c.BootIDPath
	if p == "" {
		p = bootIDPath
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(raw))
	if id == "" || strings.ContainsAny(id, "/ ") {
		return "", fmt.Errorf("read boot id: bad id %q", id)
	}
	return id, nil
}

// qemuIdentity names the QEMU binary by resolved path, size and mtime, so
// an upgrade within a boot invalidates the choice.
func qemuIdentity(qemu string) (string, error) {
	p, err := exec.LookPath(qemu)
	if err != nil {
		return "", err
	}
	if p, err = filepath.Abs(p); err != nil {
		return "", err
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s size=%d mtime=%d", p, st.Size(), st.ModTime().UnixNano()), nil
}

// path returns the cache file of this boot.
func (c *AccelCache) path() (string, error) {
	id, err := c.bootID()
	if err != nil {
		return "", err
	}
	return filepath.Join(c.Dir, "accel-"+id+".json"), nil
}

// Load returns the cached choice for this boot and QEMU binary. A file
// that is missing, unreadable, malformed, for another binary, or that
// could have been planted (not owned by root or by us, or writable by
// others) is a miss.
func (c *AccelCache) Load(qemu string) (AccelChoice, bool) {
	p, err := c.path()
	if err != nil {
		return AccelChoice{}, false
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return AccelChoice{}, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o022 != 0 || st.Size() > 64<<10 {
		return AccelChoice{}, false
	}
	if owner := st.Sys().(*syscall.Stat_t).Uid; owner != 0 && int(owner) != os.Geteuid() {
		return AccelChoice{}, false
	}
	var e cachedAccel
	if err := json.NewDecoder(f).Decode(&e); err != nil {
		return AccelChoice{}, false
	}
	id, err := qemuIdentity(qemu)
	bid, _ := c.bootID()
	if err != nil || e.Version != accelCacheVersion || e.QEMU != id || e.BootID != bid ||
		(e.Accel != AccelKVM && e.Accel != AccelTCG) {
		return AccelChoice{}, false
	}
	return AccelChoice{Accel: e.Accel, Why: e.Why + " (cached for this boot)", TSCkHz: e.TSCkHz}, true
}

// Store records choice for this boot and QEMU binary, replacing any
// previous file, and removes the files of other boots.
func (c *AccelCache) Store(qemu string, choice AccelChoice) error {
	id, err := qemuIdentity(qemu)
	if err != nil {
		return fmt.Errorf("cache accelerator choice: %w", err)
	}
	bid, err := c.bootID()
	if err != nil {
		return fmt.Errorf("cache accelerator choice: %w", err)
	}
	raw, err := json.Marshal(cachedAccel{
		Version: accelCacheVersion, BootID: bid, QEMU: id,
		Accel: choice.Accel, Why: choice.Why, TSCkHz: choice.TSCkHz,
	})
	if err != nil {
		return fmt.Errorf("cache accelerator choice: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("cache accelerator choice: %w", err)
	}
	final := filepath.Join(c.Dir, "accel-"+bid+".json")
	if err := linkNewFile(c.Dir, final, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("cache accelerator choice: %w", err)
	}
	old, _ := filepath.Glob(filepath.Join(c.Dir, "accel-*.json"))
	for _, o := range old {
		if o != final {
			os.Remove(o)
		}
	}
	return nil
}

// linkNewFile writes data to an unnamed file in dir (O_TMPFILE) and links
// it in as path, replacing what was there: readers see the old file, no
// file, or the whole new one, and nothing is left if the writer dies.
func linkNewFile(dir, path string, data []byte, perm os.FileMode) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, uint32(perm))
	if err != nil {
		return fmt.Errorf("create unnamed file in %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	src := "/proc/self/fd/" + strconv.Itoa(fd)
	for range 3 {
		err = unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
		if !errors.Is(err, unix.EEXIST) {
			break
		}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return rerr
		}
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
}

// memfdWith returns a memfd holding data, for QEMU to read as
// /dev/fd/N: no file on disk, gone with the last descriptor.
func memfdWith(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return f, nil
}
