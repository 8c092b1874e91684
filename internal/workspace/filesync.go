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
	"strconv"
	"strings"

	"banger/internal/model"
)

// Default modes of file sync entries without a mode.
const (
	DefaultSyncFileMode fs.FileMode = 0o600
	DefaultSyncDirMode  fs.FileMode = 0o755
)

// FileSyncScript extracts a file sync tar from standard input into /root,
// everything owned by root, and takes whatever follows the archive's end
// so the sender never writes into a closed channel. It ends with sync: the
// daemon deletes its copy once the script succeeds, so the files must be
// on the disk, not in the guest's page cache, before a killed VMM (a crash,
// a kill) could lose them.
const FileSyncScript = "tar -x --no-same-owner -f - -C " + GuestHome + " && cat >/dev/null && sync"

// SyncItem is one file sync entry resolved for the requesting user.
type SyncItem struct {
	// Host is the absolute host path.
	Host string
	// Guest is the entry's name relative to /root.
	Guest string
	// Mode is the configured mode; zero means the defaults.
	Mode fs.FileMode
}

// ResolveFileSync expands file sync entries for a user whose home is
// home: "~" and "~/..." and relative host paths are under home; guest
// paths are relative to /root (or absolute under it) and never leave it.
func ResolveFileSync(entries []model.FileSyncEntry, home string) ([]SyncItem, error) {
	var out []SyncItem
	for i, e := range entries {
		host, err := expandHome(e.Host, home)
		if err != nil {
			return nil, fmt.Errorf("file_sync entry %d: %w", i, err)
		}
		guest, err := SyncTarget(e.Guest)
		if err != nil {
			return nil, fmt.Errorf("file_sync entry %d: %w", i, err)
		}
		var mode fs.FileMode
		if e.Mode != "" {
			v, err := strconv.ParseUint(e.Mode, 8, 32)
			if err != nil || v > 0o7777 {
				return nil, model.Errorf(model.EINVALID, "file_sync entry %d: mode %q must be octal, such as \"0600\"", i, e.Mode)
			}
			mode = fs.FileMode(v)
		}
		out = append(out, SyncItem{Host: host, Guest: guest, Mode: mode})
	}
	return out, nil
}

// expandHome resolves a file sync host path against the user's home.
func expandHome(p, home string) (string, error) {
	if strings.TrimSpace(p) == "" {
		return "", model.Errorf(model.EINVALID, "empty host path")
	}
	switch {
	case p == "~":
		p = home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case !filepath.IsAbs(p):
		p = filepath.Join(home, p)
	}
	if !filepath.IsAbs(p) {
		return "", model.Errorf(model.EINVALID, "host path %q: no home directory to resolve it against", p)
	}
	return filepath.Clean(p), nil
}

// SyncTarget turns a file sync guest path into its name relative to
// /root: "x", "~/x" and "/root/x" are all "x". A path outside /root, with
// "..", or naming /root itself is refused.
func SyncTarget(guest string) (string, error) {
	p := guest
	switch {
	case strings.HasPrefix(p, "~/"):
		p = p[2:]
	case p == GuestHome || strings.HasPrefix(p, GuestHome+"/"):
		p = strings.TrimPrefix(strings.TrimPrefix(p, GuestHome), "/")
	case strings.HasPrefix(p, "/"):
		return "", model.Errorf(model.EINVALID, "guest path %q must be under /root", guest)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", model.Errorf(model.EINVALID, "guest path %q must stay under /root (no \"..\")", guest)
		}
	}
	p = path.Clean(p)
	if p == "." || p == "" {
		return "", model.Errorf(model.EINVALID, "guest path %q must name a file or directory under /root, not /root itself", guest)
	}
	return p, nil
}

// SyncDirMode is the directory mode that goes with a configured mode:
// the mode with execute bits wherever it has read bits, so directories
// stay traversable.
func SyncDirMode(m fs.FileMode) fs.FileMode {
	return m | (m&0o444)>>2
}

// WriteFileSync writes items as one tar stream to w, reading with the
// current process's rights: a missing host path is reported to warn and
// skipped; one the user cannot read (or anything unreadable inside a
// directory) is an error. A symlink named by an entry is followed (it is
// the user's own path); symlinks inside directories are stored as links.
// It returns how many entries were copied.
func WriteFileSync(ctx context.Context, w io.Writer, items []SyncItem, c *Counter, warn func(string)) (int, error) {
	t := NewTarWriter(w, c)
	t.Warn = warn
	copied := 0
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return copied, err
		}
		fi, err := os.Stat(it.Host)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if warn != nil {
				warn(fmt.Sprintf("file sync: %s does not exist; skipped", it.Host))
			}
			continue
		case err != nil:
			return copied, syncError(it, err)
		}
		fileMode, dirMode := DefaultSyncFileMode, DefaultSyncDirMode
		if it.Mode != 0 {
			fileMode, dirMode = it.Mode, SyncDirMode(it.Mode)
		}
		modes := Modes{File: fileMode, Dir: dirMode}
		switch {
		case fi.Mode().IsRegular():
			err = t.AddFile(it.Host, it.Guest, modes)
		case fi.IsDir():
			err = t.AddTree(ctx, it.Host, it.Guest, modes)
		default:
			err = model.Errorf(model.EINVALID, "not a regular file or directory")
		}
		if err != nil {
			return copied, syncError(it, err)
		}
		copied++
	}
	return copied, t.Close()
}

// syncError explains a file sync source that cannot be copied.
func syncError(it SyncItem, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return model.Errorf(model.EFORBIDDEN, "file sync %s -> /root/%s: %v; banger reads file sync sources with your own rights: make it readable to you or remove the entry from the daemon's file_sync", it.Host, it.Guest, err)
	}
	return model.Errorf(model.EINVALID, "file sync %s -> /root/%s: %v", it.Host, it.Guest, err)
}

// CheckFileSyncTar reads a whole file sync tar and refuses any entry that
// could land outside /root: an absolute or unclean name, a ".."
// component, an entry beneath a symlink of the same archive, or a type
// other than file, directory or symlink. It returns the number of entries
// and content bytes.
func CheckFileSyncTar(r io.Reader) (entries int, size int64, err error) {
	tr := tar.NewReader(r)
	var links []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries, size, nil
		}
		if err != nil {
			return entries, size, model.Errorf(model.EINVALID, "file sync archive: %v", err)
		}
		if err := CheckEntryName(h.Name); err != nil {
			return entries, size, model.Errorf(model.EINVALID, "file sync archive: %v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		for _, l := range links {
			if strings.HasPrefix(name, l+"/") {
				return entries, size, model.Errorf(model.EINVALID, "file sync archive: entry %q is beneath the symlink %q", h.Name, l)
			}
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir:
		case tar.TypeSymlink:
			links = append(links, name)
		default:
			return entries, size, model.Errorf(model.EINVALID, "file sync archive: entry %q has type %q; only files, directories and symlinks are allowed", h.Name, string(h.Typeflag))
		}
		entries++
		size += h.Size
	}
}
