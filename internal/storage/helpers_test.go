package storage

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/hostexec/fakeos"
)

// testVMID is a VM ID as model.NewID makes them.
const testVMID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// testDM is DMName(testVMID).
const testDM = "banger-0123456789ab"

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newFake returns a Manager on a fake host that has device-mapper, whose
// dmsetup makes /dev/mapper nodes, and whose files cannot be cloned; the
// test fails on any command the fake does not know.
func newFake(t *testing.T) (*Manager, *fakeos.OS) {
	t.Helper()
	o := fakeos.New()
	t.Cleanup(func() {
		if u := o.Runner().Unexpected(); len(u) > 0 {
			t.Errorf("commands the fake does not know: %q", u)
		}
	})
	return managerOn(t, o), o
}

// managerOn returns a new Manager on the fake host o, as a restarted
// daemon would be.
func managerOn(t *testing.T, o *fakeos.OS) *Manager {
	m := New(o.Runner(), testLogger(t), Options{})
	m.exists = func(p string) bool {
		switch {
		case p == m.dmControl, p == m.dmSysfs:
			return true
		case strings.HasPrefix(p, m.mapperDir+"/"):
			return o.DM[strings.TrimPrefix(p, m.mapperDir+"/")] != nil
		}
		return fileExists(p)
	}
	m.sleep = func(context.Context, time.Duration) error { return nil }
	m.clone = func(dst, src *os.File) error { return unix.EOPNOTSUPP }
	return m
}

// makeImage makes a sparse file of size bytes that the fake e2fsprogs
// take for ext4, with data written at the given offsets.
func makeImage(t *testing.T, path string, size int64, data map[int64][]byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := fakeos.WriteExt4Magic(path); err != nil {
		t.Fatal(err)
	}
}

// pattern returns n non-zero bytes derived from seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i%251) + 1
		if b[i] == 0 {
			b[i] = 1
		}
	}
	return b
}

// sameContent reports whether a's first n bytes equal b's.
func sameContent(t *testing.T, a, b string, n int64) bool {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	ra, rb := io.LimitReader(fa, n), io.LimitReader(fb, n)
	for {
		na, ea := io.ReadFull(ra, ba)
		nb, _ := io.ReadFull(rb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil {
			return true
		}
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func noFile(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); err == nil {
		t.Errorf("%s exists, want it gone", p)
	}
}

// testOwner is the unprivileged user work disks are given to in unit
// tests: a VM's uid when the test runs as root (which may chown), else
// the test's own user (a chown to oneself needs no privilege).
func testOwner(t *testing.T) hostexec.Credential {
	t.Helper()
	if os.Getuid() == 0 {
		return hostexec.Credential{UID: 1500000002, GID: 1500000002}
	}
	return hostexec.Credential{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
}

// checkOwned fails unless path is owner's, mode 0600.
func checkOwned(t *testing.T, path string, owner hostexec.Credential) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != owner.UID || st.Gid != owner.GID || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s is %d:%d %v, want %s -rw-------", path, st.Uid, st.Gid, fi.Mode().Perm(), owner)
	}
}
