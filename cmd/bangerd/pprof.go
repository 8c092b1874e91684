package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"syscall"
)

// servePprof serves Go's profiling endpoints (/debug/pprof/...) on a
// unix socket of their own at path, for debugging only: the socket is
// mode 0600 and owned by the daemon's user (root), so nobody else can
// read the daemon's memory or profiles through it. The API socket never
// serves them. The returned function closes the socket.
func servePprof(path string, logger *slog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("pprof socket: %w", err)
	}
	// A socket left by an earlier run is replaced; anything else at
	// path is refused, never removed.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("pprof socket: %s exists and is not a socket; choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("pprof socket: %w", err)
		}
	}
	// The socket is created 0600: no window in which another user could
	// connect. Nothing else runs yet when main calls this.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("pprof socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("pprof socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	go func() {
		// Serve returns when the listener closes (the returned func).
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			logger.Warn("pprof socket", "err", err)
		}
	}()
	logger.Warn("serving profiles for debugging", "socket", path)
	return func() { srv.Close(); os.Remove(path) }, nil
}
