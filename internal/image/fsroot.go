package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// imageRoot edits a directory tree that will become an image's root
// filesystem. Every path is resolved inside the tree (openat2 with
// RESOLVE_IN_ROOT), so a symlink in the image such as /etc/resolv.conf ->
// /run/... never makes the build write to the host's files.
type imageRoot struct {
	fd  int
	dir string
}

func openImageRoot(dir string) (*imageRoot, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image root %s: %w", dir, err)
	}
	return &imageRoot{fd: fd, dir: dir}, nil
}

func (r *imageRoot) Close() error { return unix.Close(r.fd) }

// openDir opens directory p (absolute inside the image) for *at calls.
func (r *imageRoot) openDir(p string) (int, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(r.fd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT,
	})
	if err != nil {
		return -1, fmt.Errorf("open %s in image: %w", p, err)
	}
	return fd, nil
}

// MkdirAll creates directory p and its parents with mode (existing ones
// are left as they are).
func (r *imageRoot) MkdirAll(p string, mode os.FileMode) error {
	cur := "/"
	for _, name := range strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/") {
		if name == "" {
			continue
		}
		dfd, err := r.openDir(cur)
		if err != nil {
			return err
		}
		err = unix.Mkdirat(dfd, name, uint32(mode.Perm()))
		unix.Close(dfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s in image: %w", path.Join(cur, name), err)
		}
		cur = path.Join(cur, name)
	}
	return nil
}

// splitParent opens the parent of p (creating it) and returns the
// parent's fd and p's base name.
func (r *imageRoot) splitParent(p string) (int, string, error) {
	p = path.Clean("/" + p)
	dir, name := path.Split(p)
	if name == "" {
		return -1, "", fmt.Errorf("image path %q has no name", p)
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return -1, "", err
	}
	fd, err := r.openDir(dir)
	return fd, name, err
}

// WriteFile replaces p with a regular file (never following a symlink at
// p) holding data with mode.
func (r *imageRoot) WriteFile(p string, data []byte, mode os.FileMode) error {
	dfd, name, err := r.splitParent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("replace %s in image: %w", p, err)
	}
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return fmt.Errorf("create %s in image: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s in image: %w", p, err)
	}
	// Fchmod after creation: the umask must not change the mode.
	if err := f.Chmod(mode.Perm()); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s in image: %w", p, err)
	}
	return f.Close()
}

// Symlink replaces p with a symlink to target.
func (r *imageRoot) Symlink(target, p string) error {
	dfd, name, err := r.splitParent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("replace %s in image: %w", p, err)
	}
	if err := unix.Symlinkat(target, dfd, name); err != nil {
		return fmt.Errorf("symlink %s in image: %w", p, err)
	}
	return nil
}

// RemoveGlob removes the files (not directories) matching pattern, whose
// directory part is literal and whose base may hold path.Match wildcards.
// Nothing matching is not an error.
func (r *imageRoot) RemoveGlob(pattern string) error {
	dir, base := path.Split(path.Clean("/" + pattern))
	dfd, err := r.openDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	// O_PATH fds cannot list; open the directory for reading through it.
	lfd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("list %s in image: %w", dir, err)
	}
	d := os.NewFile(uintptr(lfd), dir)
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("list %s in image: %w", dir, err)
	}
	for _, n := range names {
		ok, err := path.Match(base, n)
		if err != nil {
			return fmt.Errorf("remove %s: %w", pattern, err)
		}
		if !ok {
			continue
		}
		if err := unix.Unlinkat(dfd, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s in image: %w", path.Join(dir, n), err)
		}
	}
	return nil
}

// RemoveAllIn empties directory p (keeping p itself), for caches such as
// /var/lib/apt/lists. A missing p is not an error.
func (r *imageRoot) RemoveAllIn(p string) error {
	dfd, err := r.openDir(p)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	// The directory was resolved inside the image; /proc/self/fd gives its
	// real path on the host, which os.RemoveAll then walks without
	// following symlinks.
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dfd))
	unix.Close(dfd)
	if err != nil {
		return fmt.Errorf("resolve %s in image: %w", p, err)
	}
	if real != r.dir && !strings.HasPrefix(real, r.dir+"/") {
		return fmt.Errorf("resolve %s in image: %s is outside the image", p, real)
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return fmt.Errorf("list %s in image: %w", p, err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(path.Join(real, e.Name())); err != nil {
			return fmt.Errorf("empty %s in image: %w", p, err)
		}
	}
	return nil
}

// ReadFile reads p from the image, or returns an error wrapping
// fs.ErrNotExist when it is missing.
func (r *imageRoot) ReadFile(p string) ([]byte, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	fd, err := unix.Openat2(r.fd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT,
	})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("read %s in image: %w", p, os.ErrNotExist)
		}
		return nil, fmt.Errorf("read %s in image: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return io.ReadAll(f)
}

// Exists reports whether p exists in the image (a dangling symlink at p
// counts).
func (r *imageRoot) Exists(p string) bool {
	dfd, name, err := r.splitParentNoCreate(p)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	return unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

func (r *imageRoot) splitParentNoCreate(p string) (int, string, error) {
	dir, name := path.Split(path.Clean("/" + p))
	fd, err := r.openDir(dir)
	return fd, name, err
}
