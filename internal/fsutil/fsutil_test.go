package fsutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFileAtomic(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(b) != "two" || fi.Mode().Perm() != 0o640 {
		t.Errorf("got %q %v", b, fi.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("write into a missing dir succeeded")
	}
	if !IsTemp(".f.tmp-123") || IsTemp("f") {
		t.Error("IsTemp")
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("a\nb\nc\nd\n"), 0o600)
	if got, _ := Tail(p, 2, 1<<20); got != "c\nd" {
		t.Errorf("Tail 2 = %q", got)
	}
	if got, _ := Tail(p, 10, 1<<20); got != "a\nb\nc\nd" {
		t.Errorf("Tail 10 = %q", got)
	}
	// Only the last bytes are read; the cut line is dropped.
	os.WriteFile(p, []byte(strings.Repeat("x", 100)+"\nlast\n"), 0o600)
	if got, _ := Tail(p, 10, 10); got != "last" {
		t.Errorf("Tail bounded = %q", got)
	}
	if _, err := Tail(filepath.Join(t.TempDir(), "none"), 1, 1); err == nil {
		t.Error("Tail of a missing file succeeded")
	}
}
