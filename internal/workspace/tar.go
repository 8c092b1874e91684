package workspace

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// Counter counts what a stream has carried so far; progress reads it
// from another goroutine.
type Counter struct {
	files atomic.Int64
	bytes atomic.Int64
}

// Files returns the number of entries written.
func (c *Counter) Files() int64 { return c.files.Load() }

// Bytes returns the number of content bytes written.
func (c *Counter) Bytes() int64 { return c.bytes.Load() }

// Modes override the permissions of what a TarWriter adds; zero fields
// keep the modes on disk.
type Modes struct {
	File fs.FileMode
	Dir  fs.FileMode
}

// TarWriter writes a tar stream of host files. Entries are owned by root
// (uid and gid 0), regular files keep their permission bits (unless
// overridden), symlinks are stored as links and never followed, and
// sockets, pipes and devices are skipped with a warning.
type TarWriter struct {
	tw      *tar.Writer
	count   *Counter
	emitted map[string]bool
	// Warn receives what was skipped; nil discards it.
	Warn func(string)
}

// NewTarWriter returns a writer of a tar stream to w, counting into c
// (which may be nil).
func NewTarWriter(w io.Writer, c *Counter) *TarWriter {
	if c == nil {
		c = &Counter{}
	}
	return &TarWriter{tw: tar.NewWriter(w), count: c, emitted: map[string]bool{}}
}

// Close writes the end of the archive.
func (t *TarWriter) Close() error { return t.tw.Close() }

func (t *TarWriter) warn(format string, args ...any) {
	if t.Warn != nil {
		t.Warn(fmt.Sprintf(format, args...))
	}
}

// HeaderFor builds the tar header of one host file: name is the entry's
// name in the archive, link the symlink target (for symlinks), and modes
// override permissions. It returns nil for a file type a tar of a
// repository does not carry (sockets, pipes, devices).
func HeaderFor(name string, fi fs.FileInfo, link string, modes Modes) (*tar.Header, error) {
	if err := CheckEntryName(name); err != nil {
		return nil, err
	}
	// Whole seconds, as tar(1) stores them: a sub-second time would
	// cost every entry a PAX record (1 KiB more per file to send and for
	// the guest's tar to parse). The format is left to archive/tar,
	// which writes plain USTAR and adds PAX records only where a field
	// needs them (long or non-ASCII names and links, large sizes).
	h := &tar.Header{
		Name:    name,
		ModTime: fi.ModTime().Truncate(time.Second),
		Uid:     0, Gid: 0, Uname: "root", Gname: "root",
	}
	perm := fi.Mode().Perm()
	switch {
	case fi.Mode().IsRegular():
		h.Typeflag = tar.TypeReg
		h.Size = fi.Size()
		if modes.File != 0 {
			perm = modes.File
		}
	case fi.IsDir():
		h.Typeflag = tar.TypeDir
		h.Name = name + "/"
		if modes.Dir != 0 {
			perm = modes.Dir
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		h.Typeflag = tar.TypeSymlink
		h.Linkname = link
		perm = 0o777
	default:
		return nil, nil
	}
	h.Mode = int64(perm)
	return h, nil
}

// CheckEntryName refuses a tar entry name that could leave the directory
// it is extracted into: absolute, empty, ".", with a ".." component, or
// not in clean form.
func CheckEntryName(name string) error {
	trimmed := strings.TrimSuffix(name, "/")
	switch {
	case trimmed == "" || trimmed == ".":
		return fmt.Errorf("tar entry %q: empty name", name)
	case strings.HasPrefix(trimmed, "/"):
		return fmt.Errorf("tar entry %q: absolute path", name)
	case strings.ContainsRune(trimmed, 0):
		return fmt.Errorf("tar entry %q: NUL in name", name)
	}
	for _, part := range strings.Split(trimmed, "/") {
		if part == ".." {
			return fmt.Errorf("tar entry %q: \"..\" leaves the target directory", name)
		}
	}
	if path.Clean(trimmed) != trimmed {
		return fmt.Errorf("tar entry %q: not a clean path", name)
	}
	return nil
}

// parents adds directory entries for name's parent directories that are
// not in the archive yet, with the modes of the matching directories
// under root.
func (t *TarWriter) parents(root, name string) error {
	dir := path.Dir(name)
	if dir == "." || t.emitted[dir] {
		return nil
	}
	if err := t.parents(root, dir); err != nil {
		return err
	}
	fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(dir)))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(root, dir), err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", filepath.Join(root, dir))
	}
	return t.add(filepath.Join(root, filepath.FromSlash(dir)), dir, fi, Modes{})
}

// AddPath adds root/rel as the entry rel, after its parent directories
// (with their modes on disk). A directory is added alone, not its
// contents.
func (t *TarWriter) AddPath(root, rel string) error {
	name := filepath.ToSlash(rel)
	if err := CheckEntryName(name); err != nil {
		return err
	}
	if t.emitted[name] {
		return nil
	}
	if err := t.parents(root, name); err != nil {
		return err
	}
	p := filepath.Join(root, rel)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		t.warn("skipped %s: deleted while preparing", p)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	return t.add(p, name, fi, Modes{})
}

// AddTree adds dir and everything under it as entries under name. Links
// are stored, never followed. Parents of name are not added.
func (t *TarWriter) AddTree(ctx context.Context, dir, name string, modes Modes) error {
	return filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p != dir {
			// Gone since it was listed (a lock file, say).
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		entry := name
		if rel != "." {
			entry = path.Join(name, filepath.ToSlash(rel))
		}
		fi, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		return t.add(p, entry, fi, modes)
	})
}

// AddFile adds the host file p (following a symlink at p itself, as the
// user named it) as the entry name with modes.
func (t *TarWriter) AddFile(p, name string, modes Modes) error {
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	return t.add(p, name, fi, modes)
}

// add writes one entry; a regular file's content is read from p.
func (t *TarWriter) add(p, name string, fi fs.FileInfo, modes Modes) error {
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		l, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("read link %s: %w", p, err)
		}
		link = l
	}
	h, err := HeaderFor(name, fi, link, modes)
	if err != nil {
		return err
	}
	if h == nil {
		t.warn("skipped %s: not a file, directory or symlink", p)
		return nil
	}
	var f *os.File
	if h.Typeflag == tar.TypeReg {
		// Open before writing the header, so an unreadable file fails
		// cleanly instead of leaving a truncated entry.
		if f, err = os.Open(p); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		defer f.Close()
	}
	if err := t.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	t.emitted[strings.TrimSuffix(h.Name, "/")] = true
	t.count.files.Add(1)
	if f == nil {
		return nil
	}
	n, err := io.CopyN(countingWriter{w: t.tw, n: &t.count.bytes}, f, h.Size)
	if errors.Is(err, io.EOF) || (err == nil && n < h.Size) {
		return fmt.Errorf("%s shrank while it was being read; try again", p)
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", p, err)
	}
	return nil
}

// countingWriter adds what it writes to n as it goes, so progress moves
// during a large file too.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// RepoStream is what a workspace tar carries: the working tree paths
// under Root and, as ".git", the repository directory GitDir (the real
// one for a full copy, a depth-1 clone for a shallow overlay). An empty
// GitDir ships no repository.
type RepoStream struct {
	Root   string
	Paths  []string
	GitDir string
}

// WriteRepo writes s as a tar stream to w.
func WriteRepo(ctx context.Context, w io.Writer, s RepoStream, c *Counter, warn func(string)) error {
	t := NewTarWriter(w, c)
	t.Warn = warn
	if s.GitDir != "" {
		if err := t.AddTree(ctx, s.GitDir, ".git", Modes{}); err != nil {
			return err
		}
	}
	for _, p := range s.Paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == ".git" || strings.HasPrefix(p, ".git/") {
			continue
		}
		if err := t.AddPath(s.Root, p); err != nil {
			return err
		}
	}
	return t.Close()
}
