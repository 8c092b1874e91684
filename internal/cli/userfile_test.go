package cli

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/model"
)

func TestOpenUserFile(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "vmlinux")
	os.WriteFile(reg, []byte("\x7fELF"), 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(reg, link)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := openUserFile("kernel", reg)
	if err != nil {
		t.Fatalf("a regular file: %v", err)
	}
	f.Close()
	// The file this test has open as descriptor N: /proc/self/fd/N is a
	// (magic) symbolic link and is refused like any other.
	held, _ := os.Open(reg)
	defer held.Close()
	procFD := "/proc/self/fd/" + strconv.Itoa(int(held.Fd()))
	tests := []struct {
		path, saying string
	}{
		{link, "symbolic link"},
		{procFD, "symbolic link"},
		{fifo, "FIFO"},
		{dir, "directory"},
		{"/dev/null", "device"},
		{filepath.Join(dir, "missing"), "no such file"},
	}
	for _, tt := range tests {
		start := time.Now()
		f, err := openUserFile("kernel", tt.path)
		if err == nil {
			f.Close()
			t.Errorf("%s: opened", tt.path)
			continue
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("%s: refused after %s; want at once", tt.path, took)
		}
		if model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), tt.saying) || !strings.Contains(err.Error(), "--kernel") {
			t.Errorf("%s: %v; want EINVALID naming --kernel and saying %q", tt.path, err, tt.saying)
		}
	}
}
