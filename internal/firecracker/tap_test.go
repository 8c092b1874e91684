package firecracker

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/testutil"
)

func TestCheckTapName(t *testing.T) {
	for _, ok := range []string{"tap0", "tap-fc-12", "a", strings.Repeat("t", 15)} {
		if err := CheckTapName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "tap/0", "tap:0", "tap 0", "tap\n", strings.Repeat("t", 16)} {
		if err := CheckTapName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestOpenTap opens a tap for real, in a network namespace of its own
// (the thread is unshared and never returned to the runtime), and reads
// its name and flags back as QEMU will.
func TestOpenTap(t *testing.T) {
	testutil.RequireRoot(t)
	type result struct {
		name  string
		flags uint16
		err   error
	}
	done := make(chan result, 1)
	go func() {
		// The thread stays locked: it dies with this goroutine, taking
		// its private network namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		f, err := OpenTap("bgtap0")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer f.Close()
		name, flags, err := TapName(f)
		done <- result{name, flags, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.name != "bgtap0" || r.flags&TapFlags != TapFlags {
		t.Errorf("got %s flags %#x, want bgtap0 with %#x", r.name, r.flags, TapFlags)
	}
	// A descriptor that is no tap is told apart.
	f, _ := os.Open("/dev/null")
	defer f.Close()
	if _, _, err := TapName(f); err == nil {
		t.Error("TapName(/dev/null) succeeded")
	}
	if _, err := OpenTap("bad/name"); err == nil {
		t.Error("OpenTap accepted a bad name")
	}
}
