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

// WriteAtomic is WriteFileAtomic with the content read from r.
func WriteAtomic(path string, r io.Reader, mode os.FileMode) error {
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
	if err := f.Sync(); err != nil {
		f.Close()
		return err
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
