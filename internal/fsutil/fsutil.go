// Package fsutil holds the small file habits every part of banger shares:
// writing a file so that a crash leaves the old or the whole new one, and
// reading the end of a log.
package fsutil

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteFileAtomic writes data to a temporary file next to path, syncs it
// and renames it over path, so a reader (or a daemon restarted after a
// crash) sees the old file or the whole new one, never a part.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteAtomic(path, bytes.NewReader(data), mode)
}

// ReplaceFile is WriteFileAtomic without the sync: for scratch files that
// must survive the writer's crash (the page cache keeps them) but not a
// power loss, written on paths where an fsync would cost too much.
func ReplaceFile(path string, data []byte, mode os.FileMode) error {
	return writeAtomic(path, bytes.NewReader(data), mode, false)
}

// WriteAtomic is WriteFileAtomic with the content read from r.
func WriteAtomic(path string, r io.Reader, mode os.FileMode) error {
	return writeAtomic(path, r, mode, true)
}

func writeAtomic(path string, r io.Reader, mode os.FileMode, sync bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// IsTemp says whether name is one of WriteAtomic's temporary files, which
// a crash can leave behind.
func IsTemp(name string) bool {
	base := filepath.Base(name)
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".tmp-")
}

// Tail returns up to n trailing lines of the file at path, reading at
// most its last maxBytes bytes.
func Tail(path string, n int, maxBytes int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	start := max(fi.Size()-maxBytes, 0)
	buf := make([]byte, fi.Size()-start)
	if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
		return "", err
	}
	lines := strings.Split(strings.TrimRight(string(buf), "\n"), "\n")
	if start > 0 && len(lines) > 1 {
		// The first line was cut by maxBytes.
		lines = lines[1:]
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), nil
}

// AtomicFile is a file written under a temporary name next to its path
// and renamed over it by Commit, for writers that stream (a bundle from a
// guest, an upload): a reader, or a daemon restarted after a crash, sees
// the old file or the whole new one. Abort (or a Commit that fails)
// removes the temporary file.
type AtomicFile struct {
	*os.File
	path string
	done bool
}

// CreateAtomic starts writing path.
func CreateAtomic(path string, mode os.FileMode) (*AtomicFile, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &AtomicFile{File: f, path: path}, nil
}

// Commit syncs the file and renames it over its path.
func (f *AtomicFile) Commit() error {
	if f.done {
		return nil
	}
	f.done = true
	err := f.File.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.File.Name(), f.path)
	}
	if err != nil {
		os.Remove(f.File.Name())
	}
	return err
}

// Abort drops what was written; after Commit it does nothing.
func (f *AtomicFile) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.File.Name())
}
