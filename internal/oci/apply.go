package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// Whiteout names of the OCI layer format (image-spec layer.md): a file
// ".wh.NAME" removes NAME of the layers below, and ".wh..wh..opq" in a
// directory hides everything the layers below put in it.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// maxNameLen bounds an entry's path: a longer one could not be used in
// the guest (PATH_MAX), and an unbounded depth would make every later
// walk of the tree (mkfs, the cache) recurse without end.
const maxNameLen = 4095

// Applier applies image layers, in order, onto a root directory. Every
// path is resolved one component at a time beneath the root without
// following symbolic links: a layer that makes /etc a link to the host's
// /etc, then writes etc/passwd, is refused instead of writing through it.
// Whiteouts and opaque directories remove what lower layers made; modes
// (setuid included), owners, hard links, symbolic links, FIFOs, times and
// extended attributes are kept. Device nodes are not created: a guest
// has devtmpfs, and a node on the host could reach the host's devices.
type Applier struct {
	root int
	// KeepOwners applies the entries' uids and gids (root only); without
	// it files belong to the applier's user.
	KeepOwners bool
	// MaxBytes bounds the file data of all the layers applied; 0 means
	// no bound.
	MaxBytes int64
	// MaxEntries bounds the entries of all the layers; 0 means no bound.
	MaxEntries int
	// Warn receives notes about entries skipped (device nodes, extended
	// attributes the filesystem refuses); nil discards them.
	Warn func(msg string)

	bytes   int64
	entries int

	// layer is the current layer's number (from 1), for errors.
	layer int
	// created holds the paths the current layer made: its whiteouts
	// apply only to the layers below it (image-spec).
	created map[string]bool
	// dirTimes are the directories' times, set once the layer is done
	// (adding entries changes a directory's mtime).
	dirTimes []dirTime
	// cache is the last parent directory resolved.
	cacheRel string
	cacheFD  int
	skipped  map[string]int
}

type dirTime struct {
	rel   string
	mtime time.Time
}

// OpenApplier opens dir (an existing directory) as the root layers are
// applied onto. Close releases it.
func OpenApplier(dir string) (*Applier, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image root %s: %w", dir, err)
	}
	return &Applier{root: fd, cacheFD: -1}, nil
}

// Close releases the root.
func (a *Applier) Close() error {
	a.dropCache()
	return unix.Close(a.root)
}

// LayerError is a layer that cannot be applied: hostile or broken.
type LayerError struct {
	Layer int
	Entry string
	Err   error
}

func (e *LayerError) Error() string {
	if e.Entry == "" {
		return fmt.Sprintf("layer %d: %v", e.Layer, e.Err)
	}
	return fmt.Sprintf("layer %d: entry %q: %v", e.Layer, e.Entry, e.Err)
}

func (e *LayerError) Unwrap() error { return e.Err }

// errThroughLink is an entry whose path goes through a symbolic link.
var errThroughLink = errors.New("goes through a symbolic link; banger never writes through a link an image made")

// errEscapes is an entry whose name climbs out of the root.
var errEscapes = errors.New("climbs out of the image's root with \"..\"")

// Apply applies one uncompressed layer tar. It reads the tar to its end
// marker; the caller drains and verifies the rest of the stream. A
// hostile or broken layer is a *LayerError with code EINVALID; the tree
// is then half-applied and must be thrown away.
func (a *Applier) Apply(ctx context.Context, layer io.Reader) error {
	a.layer++
	a.created = map[string]bool{}
	a.dirTimes = nil
	a.skipped = map[string]int{}
	defer a.dropCache()
	tr := tar.NewReader(layer)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A layer reader's own refusal (a corrupt compressed stream)
			// already names the layer.
			var me *model.Error
			if errors.As(err, &me) {
				return err
			}
			return a.fail("", fmt.Errorf("not a tar stream or a broken one: %w", err))
		}
		a.entries++
		if a.MaxEntries > 0 && a.entries > a.MaxEntries {
			return model.Errorf(model.ELIMIT, "layer %d: the image has more than %d files; banger does not unpack it", a.layer, a.MaxEntries)
		}
		if err := a.entry(hdr, tr); err != nil {
			if model.ErrorCode(err) != model.EINTERNAL || ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("layer %d: entry %q: %w", a.layer, hdr.Name, err)
		}
	}
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		dt := a.dirTimes[i]
		pfd, base, err := a.parent(dt.rel, false)
		if err != nil {
			continue // removed later in the layer
		}
		ts := []unix.Timespec{unix.NsecToTimespec(dt.mtime.UnixNano()), unix.NsecToTimespec(dt.mtime.UnixNano())}
		_ = unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if a.Warn != nil {
		for what, n := range a.skipped {
			a.Warn(fmt.Sprintf("layer %d: %d %s skipped", a.layer, n, what))
		}
	}
	return nil
}

// fail is a hostile or broken entry (or layer, when entry is "").
func (a *Applier) fail(entry string, err error) error {
	le := &LayerError{Layer: a.layer, Entry: entry, Err: err}
	return &model.Error{Code: model.EINVALID, Message: le.Error(), Err: le}
}

// cleanName turns an entry's name into a path relative to the root ("" is
// the root itself). Leading slashes and "./" are dropped, as tar does; a
// ".." anywhere is refused.
func cleanName(name string) (string, error) {
	if len(name) > maxNameLen {
		return "", fmt.Errorf("name is %d bytes, over the %d a path may have", len(name), maxNameLen)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("name holds a NUL byte")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", errEscapes
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "/"), nil
}

func (a *Applier) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return a.fail(hdr.Name, err)
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	}
	if rel == "" {
		// The root itself: its mode and owner, never replaced.
		if hdr.Typeflag != tar.TypeDir {
			return a.fail(hdr.Name, errors.New("the root of an image must be a directory"))
		}
		fd, err := unix.Openat(a.root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return a.setMeta(fd, hdr)
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	for _, p := range strings.Split(dir, "/") {
		if strings.HasPrefix(p, whiteoutMeta) {
			// Inside an aufs metadata directory (.wh..wh.plnk): not
			// part of the image.
			return nil
		}
	}
	if base == opaqueMarker {
		return a.opaque(dir, hdr.Name)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" {
			return a.fail(hdr.Name, errors.New("a whiteout without a name"))
		}
		return a.whiteout(path.Join(dir, name), hdr.Name)
	}

	pfd, _, err := a.parent(rel, true)
	if err != nil {
		return a.pathError(hdr.Name, err)
	}
	var st unix.Stat_t
	exists := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	isDir := exists && st.Mode&unix.S_IFMT == unix.S_IFDIR

	switch hdr.Typeflag {
	case tar.TypeDir:
		if exists && !isDir {
			if err := a.remove(pfd, base, false); err != nil {
				return err
			}
		}
		if !exists || !isDir {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return err
			}
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := a.setMeta(fd, hdr); err != nil {
			return err
		}
		a.created[rel] = true
		a.dirTimes = append(a.dirTimes, dirTime{rel: rel, mtime: hdr.ModTime})
		return nil
	case tar.TypeReg: // archive/tar reads the old TypeRegA as TypeReg or TypeDir.
		if exists {
			if err := a.remove(pfd, base, isDir); err != nil {
				return err
			}
		}
		if a.MaxBytes > 0 && a.bytes+hdr.Size > a.MaxBytes {
			return model.Errorf(model.ELIMIT, "layer %d: the image unpacks to more than %s; banger does not unpack it", a.layer, model.FormatSizeBytes(a.MaxBytes))
		}
		a.bytes += hdr.Size
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), base)
		defer f.Close()
		if _, err := io.CopyN(f, r, hdr.Size); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return a.fail(hdr.Name, errors.New("the layer ends inside this file"))
			}
			return err
		}
		if err := a.setMeta(fd, hdr); err != nil {
			return err
		}
		a.created[rel] = true
		return a.setTimes(pfd, base, hdr)
	case tar.TypeSymlink:
		if exists {
			if err := a.remove(pfd, base, isDir); err != nil {
				return err
			}
		}
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 || len(hdr.Linkname) > maxNameLen {
			return a.fail(hdr.Name, errors.New("a symbolic link needs a target"))
		}
		// The target is kept as it is, absolute or not: the guest
		// follows it; the applier never does.
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
		if a.KeepOwners {
			if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		a.created[rel] = true
		return a.setTimes(pfd, base, hdr)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return a.fail(hdr.Name, fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
		}
		if target == "" {
			return a.fail(hdr.Name, errors.New("a hard link to the root"))
		}
		if target == rel {
			return nil
		}
		tdir, tbase := path.Split(target)
		tfd, err := a.walk(strings.TrimSuffix(tdir, "/"), false)
		if errors.Is(err, unix.ENOENT) {
			return a.fail(hdr.Name, fmt.Errorf("hard link target %q is not in the image", hdr.Linkname))
		}
		if err != nil {
			return a.pathError(hdr.Name, fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
		}
		defer unix.Close(tfd)
		var tst unix.Stat_t
		if err := unix.Fstatat(tfd, tbase, &tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return a.fail(hdr.Name, fmt.Errorf("hard link target %q is not in the image", hdr.Linkname))
		}
		if tst.Mode&unix.S_IFMT == unix.S_IFDIR {
			return a.fail(hdr.Name, fmt.Errorf("hard link target %q is a directory", hdr.Linkname))
		}
		if exists {
			if err := a.remove(pfd, base, isDir); err != nil {
				return err
			}
			if isDir {
				// The target may have been inside what was removed.
				if err := unix.Fstatat(tfd, tbase, &tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					return a.fail(hdr.Name, fmt.Errorf("hard link target %q is not in the image", hdr.Linkname))
				}
			}
		}
		// Flags 0: a link to a symbolic link links the link itself.
		if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
			return err
		}
		a.created[rel] = true
		return nil
	case tar.TypeFifo:
		if exists {
			if err := a.remove(pfd, base, isDir); err != nil {
				return err
			}
		}
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return err
		}
		if a.KeepOwners {
			if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		// A FIFO just made by this applier, not a link: chmod by name
		// is safe.
		if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return err
		}
		a.created[rel] = true
		return a.setTimes(pfd, base, hdr)
	case tar.TypeChar, tar.TypeBlock:
		a.skipped["device nodes"]++
		return nil
	default:
		return a.fail(hdr.Name, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag))
	}
}

// pathError reports a parent path that cannot be used.
func (a *Applier) pathError(entry string, err error) error {
	if errors.Is(err, errThroughLink) || errors.Is(err, unix.ENOTDIR) {
		return a.fail(entry, err)
	}
	return err
}

// setMeta gives an open file or directory the entry's owner, mode and
// extended attributes, in that order: a chown clears setuid bits and
// file capabilities.
func (a *Applier) setMeta(fd int, hdr *tar.Header) error {
	if a.KeepOwners {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !keptXattr(name) {
			continue
		}
		if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) && !a.KeepOwners {
				a.skipped["extended attributes the filesystem refused"]++
				continue
			}
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// keptXattr says which extended attributes an image may set: not
// trusted.* (meaningful to the host, overlayfs among others) nor an
// SELinux label from another system.
func keptXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, "trusted."), name == "security.selinux":
		return false
	case strings.HasPrefix(name, "user."), strings.HasPrefix(name, "security."), strings.HasPrefix(name, "system.posix_acl_"):
		return true
	}
	return false
}

func (a *Applier) setTimes(pfd int, base string, hdr *tar.Header) error {
	if hdr.ModTime.IsZero() {
		return nil
	}
	t := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	return unix.UtimesNanoAt(pfd, base, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
}

// whiteout removes rel, made by a lower layer.
func (a *Applier) whiteout(rel, entry string) error {
	if a.created[rel] {
		return nil
	}
	dir, base := path.Split(rel)
	pfd, err := a.walk(strings.TrimSuffix(dir, "/"), false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return a.pathError(entry, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil
	}
	return a.remove(pfd, base, st.Mode&unix.S_IFMT == unix.S_IFDIR)
}

// opaque empties directory dir of what lower layers put in it.
func (a *Applier) opaque(dir, entry string) error {
	fd, err := a.walk(dir, true)
	if err != nil {
		return a.pathError(entry, err)
	}
	defer unix.Close(fd)
	names, err := readNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if a.created[path.Join(dir, n)] {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if err := a.remove(fd, n, st.Mode&unix.S_IFMT == unix.S_IFDIR); err != nil {
			return err
		}
	}
	a.created[dir] = true
	return nil
}

// remove deletes name in directory pfd, recursively when it is a
// directory, without following links.
func (a *Applier) remove(pfd int, name string, isDir bool) error {
	if isDir && a.cacheFD != pfd {
		// The cached parent may be inside what goes.
		a.dropCache()
	}
	return removeAt(pfd, name)
}

func removeAt(pfd int, name string) error {
	err := unix.Unlinkat(pfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	names, err := readNames(fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			unix.Close(fd)
			return err
		}
	}
	unix.Close(fd)
	if err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// readNames lists directory fd (which stays open).
func readNames(fd int) ([]string, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(dfd), ".")
	defer d.Close()
	return d.Readdirnames(-1)
}

// parent returns a descriptor of rel's parent directory (owned by the
// applier's cache: do not close it) and rel's base name. With create,
// missing directories are made (0755, root's), as tar does.
func (a *Applier) parent(rel string, create bool) (int, string, error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if a.cacheFD >= 0 && a.cacheRel == dir {
		return a.cacheFD, base, nil
	}
	fd, err := a.walk(dir, create)
	if err != nil {
		return -1, "", err
	}
	a.dropCache()
	a.cacheRel, a.cacheFD = dir, fd
	return fd, base, nil
}

func (a *Applier) dropCache() {
	if a.cacheFD >= 0 {
		unix.Close(a.cacheFD)
	}
	a.cacheFD, a.cacheRel = -1, ""
}

// walk opens directory rel ("" is the root) one component at a time,
// refusing symbolic links and never leaving the root. The caller closes
// the descriptor.
func (a *Applier) walk(rel string, create bool) (int, error) {
	cur, err := unix.Openat(a.root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if rel == "" {
		return cur, nil
	}
	done := ""
	for _, name := range strings.Split(rel, "/") {
		next, err := unix.Openat(cur, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err := unix.Mkdirat(cur, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(cur)
				return -1, err
			}
			next, err = unix.Openat(cur, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		done = path.Join(done, name)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			var st unix.Stat_t
			if unix.Fstatat(cur, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = fmt.Errorf("%s %w", done, errThroughLink)
			} else {
				err = fmt.Errorf("%s is not a directory: %w", done, unix.ENOTDIR)
			}
		}
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}
