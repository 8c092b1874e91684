package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// A Pool is a copy-on-write disk pool for hosts whose state directory
// cannot reflink and that have no device-mapper: an XFS filesystem
// (reflink=1) in a sparse file, loop-mounted on a directory, grown as
// VMs need. Images' files are mirrored into it once, grown to the size
// VMs ask for (templates), and every VM disk made from them is a reflink
// clone: milliseconds whatever its size. The pool is opened at daemon
// start; opening one that exists reuses it, and a loop device or mount
// left by an earlier daemon is taken over, never duplicated (two loops
// on one XFS file would corrupt it).
type Pool struct {
	m *Manager
	// File is the pool's backing file; Dir is where it is mounted.
	File, Dir string
	// mu serialises template builds and growth.
	mu sync.Mutex
}

// PoolSpec says where a pool lives.
type PoolSpec struct {
	// File is the sparse file holding the filesystem; it is made when
	// absent.
	File string
	// Dir is the mount point, made when absent.
	Dir string
	// InitialSize is the size of a new pool file; zero picks one from
	// the host's free space (poolInitialSize).
	InitialSize int64
}

// Pool sizes.
const (
	// poolMinSize and poolMaxInitial bound a new pool's size; it is a
	// fifth of the host's free space between them, as Incus sizes its
	// loop-backed default pool.
	poolMinSize    = 5 << 30
	poolMaxInitial = 30 << 30
	// PoolHeadroom is the free space a pool keeps for guests' writes
	// beyond what a new disk needs at once; it grows to keep it.
	PoolHeadroom = 1 << 30
	// hostReserve is the host's free space a pool never grows into.
	hostReserve = 1 << 30
	// poolLabel is the pool filesystem's label.
	poolLabel = "banger-pool"
)

// mkfsXFSArgs returns mkfs.xfs's argv to make a reflink-capable XFS in
// file.
func mkfsXFSArgs(file string) []string {
	return []string{"-q", "-m", "reflink=1", "-L", poolLabel, file}
}

// mountLoopArgs mounts file on dir through a fresh loop device, which
// the kernel detaches by itself once the filesystem is unmounted
// everywhere (autoclear).
func mountLoopArgs(file, dir string) []string {
	return []string{"-t", "xfs", "-o", "loop", file, dir}
}

// mountDevArgs mounts an existing loop device on dir.
func mountDevArgs(dev, dir string) []string { return []string{"-t", "xfs", dev, dir} }

// findmntArgs reports what is mounted on dir.
func findmntArgs(dir string) []string {
	return []string{"-n", "-o", "SOURCE,FSTYPE", "--mountpoint", dir}
}

// poolInitialSize is a new pool's size for a host with free bytes free.
func poolInitialSize(free int64) int64 {
	size := min(max(free/5, poolMinSize), poolMaxInitial)
	return size &^ (1<<20 - 1)
}

// OpenPool makes the pool when its file is absent, attaches and mounts
// it unless that is already done, and checks that it clones files.
// Calling it again (a restarted daemon) changes nothing that is in
// place.
func (m *Manager) OpenPool(ctx context.Context, spec PoolSpec) (*Pool, error) {
	if spec.File == "" || spec.Dir == "" {
		return nil, model.Errorf(model.EINVALID, "storage pool needs a file and a mount point")
	}
	p := &Pool{m: m, File: filepath.Clean(spec.File), Dir: filepath.Clean(spec.Dir)}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage pool: %w", err)
	}
	if _, err := os.Stat(p.File); errors.Is(err, os.ErrNotExist) {
		if err := p.create(ctx, spec.InitialSize); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("storage pool: %w", err)
	}
	if err := p.mount(ctx); err != nil {
		return nil, err
	}
	if ok, why := m.probeReflink(p.Dir); !ok {
		return nil, fmt.Errorf("storage pool %s: %s", p.Dir, why)
	}
	for _, sub := range []string{"images", "vms"} {
		if err := os.MkdirAll(filepath.Join(p.Dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("storage pool: %w", err)
		}
	}
	return p, nil
}

// create makes the pool file: sparse, with an XFS filesystem, under its
// name only once complete.
func (p *Pool) create(ctx context.Context, size int64) error {
	if size == 0 {
		_, free, err := p.m.statfs(filepath.Dir(p.File))
		if err != nil {
			return fmt.Errorf("storage pool: %w", err)
		}
		size = poolInitialSize(free)
	}
	start := time.Now()
	err := buildFile(p.File, false, func(f *os.File, tmp string) error {
		if err := f.Truncate(size); err != nil {
			return err
		}
		if _, err := p.m.run.Run(ctx, "mkfs.xfs", mkfsXFSArgs(tmp)...); err != nil {
			return fmt.Errorf("make the pool's filesystem (is xfsprogs installed?): %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create storage pool %s: %w", p.File, err)
	}
	p.m.logger.Info("storage pool created", "file", p.File, "size", size, "took", time.Since(start))
	return nil
}

// mounted returns the device mounted on the pool's directory, or "".
func (p *Pool) mounted(ctx context.Context) (string, error) {
	out, err := p.m.run.Run(ctx, "findmnt", findmntArgs(p.Dir)...)
	if err != nil {
		// findmnt exits 1 with no output when nothing is mounted.
		if len(strings.TrimSpace(string(out))) == 0 {
			return "", nil
		}
		return "", fmt.Errorf("storage pool: findmnt %s: %w", p.Dir, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return "", fmt.Errorf("storage pool: findmnt %s printed %q", p.Dir, out)
	}
	if f[1] != "xfs" {
		return "", fmt.Errorf("storage pool: %s has a %s filesystem mounted, not the pool's XFS; unmount it or choose another storage_pool", p.Dir, f[1])
	}
	return f[0], nil
}

// loop returns the loop device backed by the pool file, or "". More than
// one is an error: the file must never be mounted twice.
func (p *Pool) loop(ctx context.Context) (string, error) {
	loops, err := p.m.LoopsFor(ctx, p.File)
	if err != nil {
		return "", fmt.Errorf("storage pool: %w", err)
	}
	var devs []string
	for _, l := range loops {
		if !l.Deleted {
			devs = append(devs, l.Dev)
		}
	}
	switch len(devs) {
	case 0:
		return "", nil
	case 1:
		return devs[0], nil
	}
	return "", fmt.Errorf("storage pool: %s is attached to several loop devices (%s); detach all but the mounted one", p.File, strings.Join(devs, ", "))
}

// mount mounts the pool on its directory unless it is: through the loop
// device an earlier daemon left, if any, else a fresh one.
func (p *Pool) mount(ctx context.Context) error {
	dev, err := p.mounted(ctx)
	if err != nil {
		return err
	}
	loop, err := p.loop(ctx)
	if err != nil {
		return err
	}
	if dev != "" {
		if dev != loop {
			return fmt.Errorf("storage pool: %s is mounted on %s, not on the pool file %s's loop device (%q); unmount it", dev, p.Dir, p.File, loop)
		}
		return nil
	}
	args := mountLoopArgs(p.File, p.Dir)
	if loop != "" {
		args = mountDevArgs(loop, p.Dir)
	}
	_, err = p.m.run.Run(ctx, "mount", args...)
	if err != nil && loop != "" {
		// The loop an earlier daemon left may be going away (the last
		// mount of it just ended, and the kernel clears it): once it
		// is gone, attach a fresh one.
		for i := 0; i < 10 && loop != ""; i++ {
			if serr := p.m.sleep(ctx, 50*time.Millisecond); serr != nil {
				return serr
			}
			if loop, err = p.loop(ctx); err != nil {
				return err
			}
		}
		if loop == "" {
			_, err = p.m.run.Run(ctx, "mount", mountLoopArgs(p.File, p.Dir)...)
		}
	}
	if err != nil {
		return fmt.Errorf("mount storage pool %s on %s: %w", p.File, p.Dir, err)
	}
	p.m.logger.Info("storage pool mounted", "file", p.File, "dir", p.Dir, "reused_loop", loop)
	return nil
}

// Check reports whether the pool is still mounted as opened, mounting it
// again if it was unmounted (reconcile calls it).
func (p *Pool) Check(ctx context.Context) error {
	if _, err := os.Stat(p.File); err != nil {
		return fmt.Errorf("storage pool: %w", err)
	}
	return p.mount(ctx)
}

// PoolUsage is a pool's space, and the free space of the filesystem
// holding its file.
type PoolUsage struct {
	SizeBytes, FreeBytes int64
	// AllocatedBytes is what the pool file occupies on the host.
	AllocatedBytes int64
	HostFreeBytes  int64
}

// Usage reports the pool's space.
func (p *Pool) Usage() (PoolUsage, error) {
	var u PoolUsage
	var err error
	if u.SizeBytes, u.FreeBytes, err = p.m.statfs(p.Dir); err != nil {
		return u, err
	}
	if _, u.HostFreeBytes, err = p.m.statfs(filepath.Dir(p.File)); err != nil {
		return u, err
	}
	u.AllocatedBytes, _ = AllocatedBytes(p.File)
	return u, nil
}

// String describes the usage in a line.
func (u PoolUsage) String() string {
	return fmt.Sprintf("%s free of %s in the pool (file uses %s); %s free on the host", model.FormatSizeBytes(u.FreeBytes), model.FormatSizeBytes(u.SizeBytes), model.FormatSizeBytes(u.AllocatedBytes), model.FormatSizeBytes(u.HostFreeBytes))
}

// Reserve makes sure the pool has need bytes free plus PoolHeadroom,
// growing the pool file (and its filesystem) into the host's free space
// when it has not. When the host is short too it returns EUNAVAILABLE
// and changes nothing.
func (p *Pool) Reserve(ctx context.Context, need int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reserveLocked(ctx, need)
}

func (p *Pool) reserveLocked(ctx context.Context, need int64) error {
	u, err := p.Usage()
	if err != nil {
		return fmt.Errorf("storage pool: %w", err)
	}
	want := need + PoolHeadroom
	// The pool file is sparse: what the pool has free, the host must
	// still be able to back.
	room := u.HostFreeBytes - hostReserve
	if room < want {
		return model.Errorf(model.EUNAVAILABLE, "storage pool is short of space: a new disk needs %s free, and the filesystem holding %s can back %s more (%s); free space there, or remove VMs or images", model.FormatSizeBytes(want), p.File, model.FormatSizeBytes(max(room, 0)), u)
	}
	if u.FreeBytes >= want {
		return nil
	}
	// Grow by what is missing, and at least a quarter, so growth is
	// rare.
	grow := min(max(want-u.FreeBytes, u.SizeBytes/4), room)
	if err := p.grow(ctx, u.SizeBytes+grow); err != nil {
		return err
	}
	return nil
}

// grow makes the pool's file size bytes and grows its filesystem.
func (p *Pool) grow(ctx context.Context, size int64) error {
	loop, err := p.loop(ctx)
	if err != nil {
		return err
	}
	if loop == "" {
		return fmt.Errorf("grow storage pool: %s has no loop device", p.File)
	}
	fi, err := os.Stat(p.File)
	if err != nil {
		return fmt.Errorf("grow storage pool: %w", err)
	}
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	if size <= fi.Size() {
		return nil
	}
	if err := os.Truncate(p.File, size); err != nil {
		return fmt.Errorf("grow storage pool: %w", err)
	}
	if _, err := p.m.run.Run(ctx, "losetup", "-c", loop); err != nil {
		return fmt.Errorf("grow storage pool: set capacity of %s: %w", loop, err)
	}
	if _, err := p.m.run.Run(ctx, "xfs_growfs", p.Dir); err != nil {
		return fmt.Errorf("grow storage pool: xfs_growfs %s: %w", p.Dir, err)
	}
	p.m.logger.Info("storage pool grown", "file", p.File, "from", fi.Size(), "to", size)
	return nil
}

// Template returns a file in the pool with src's contents whose ext4
// filesystem is grown to size (when size is above src's; zero keeps
// src's size): the source every VM disk of that size is cloned from. It
// is made on first use (a sparse copy into the pool, then e2fsck and
// resize2fs) and made again when src changes (by modification time and
// size).
func (p *Pool) Template(ctx context.Context, src string, size int64) (string, error) {
	fi, err := os.Stat(src)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", model.Errorf(model.ENOTFOUND, "%s does not exist: %w", src, err)
		}
		return "", err
	}
	size = max(size, fi.Size())
	canon := canonical(src)
	sum := sha256.Sum256([]byte(canon))
	dir := filepath.Join(p.Dir, "images", hex.EncodeToString(sum[:8]))
	path := filepath.Join(dir, fmt.Sprintf("%s@%d", filepath.Base(src), size))
	if templateFresh(path, fi) {
		return path, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if templateFresh(path, fi) {
		return path, nil
	}
	alloc, _ := AllocatedBytes(src)
	if err := p.reserveLocked(ctx, alloc); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "source"), []byte(canon+"\n"), 0o600); err != nil {
		return "", err
	}
	start := time.Now()
	err = buildFile(path, true, func(f *os.File, tmp string) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		if _, err := p.m.ImportFile(ctx, f, in); err != nil {
			return err
		}
		if size > fi.Size() {
			if err := p.m.growImageFS(ctx, tmp, size); err != nil {
				return err
			}
		}
		return os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
	})
	if err != nil {
		return "", fmt.Errorf("pool template of %s: %w", src, err)
	}
	p.m.logger.Info("pool template made", "src", src, "size", size, "path", path, "took", time.Since(start))
	return path, nil
}

// templateFresh reports whether the template at path was made from the
// source file src describes, as it is now.
func templateFresh(path string, src os.FileInfo) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.ModTime().Equal(src.ModTime()) && fi.Size() >= src.Size()
}

// PruneTemplates removes the templates of source files that no longer
// exist (images removed), and returns how many directories it removed.
func (p *Pool) PruneTemplates() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dir := filepath.Join(p.Dir, "images")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "source"))
		if err == nil {
			if _, err := os.Stat(strings.TrimSpace(string(b))); err == nil {
				continue
			}
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// statfsBytes returns the size and the free bytes (for unprivileged
// users too: root's reserve is not counted as free) of the filesystem
// holding path.
func statfsBytes(path string) (size, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}
