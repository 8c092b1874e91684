package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServePprof: the profiles are served on a socket only its owner may
// use, a stale socket is replaced, and a file that is not a socket is
// refused and left alone.
func TestServePprof(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "pprof.sock")
	log := slog.New(slog.DiscardHandler)
	for range 2 { // the second run replaces the first's socket
		closeFn, err := servePprof(sock, log)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(sock)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket %v mode %v", err, fi.Mode())
		}
		cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
		resp, err := cl.Get("http://bangerd/debug/pprof/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Errorf("cmdline: %s %q", resp.Status, b)
		}
		closeFn()
		// Leave a stale socket file for the next run.
		if l, err := net.Listen("unix", sock); err == nil {
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
		}
	}
	plain := filepath.Join(dir, "notes.txt")
	os.WriteFile(plain, []byte("keep"), 0o600)
	if _, err := servePprof(plain, log); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep" {
		t.Errorf("the file was touched")
	}
}
