package qemuvmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// nonblockFile is a log or metrics destination opened the way Firecracker
// opens them (open_file_nonblock): read-write, O_NONBLOCK, created when
// missing. A FIFO then opens at once without a reader (write-only with
// O_NONBLOCK would fail with ENXIO, without it open blocks), and a write
// that would block (a full pipe nobody reads) is dropped and counted, as
// Firecracker counts missed log and metrics writes. The descriptor is
// used with plain system calls, not through Go's poller, so no write
// ever waits; Close is safe against concurrent writers.
type nonblockFile struct {
	path   string
	mu     sync.Mutex
	fd     int
	closed bool
	// missed counts writes dropped, fully or in part.
	missed atomic.Uint64
}

// openNonblock opens path for a nonblockFile; appendMode adds O_APPEND,
// so a regular log file is appended to rather than overwritten from its
// start.
func openNonblock(path string, appendMode bool) (*nonblockFile, error) {
	flags := unix.O_RDWR | unix.O_NONBLOCK | unix.O_CREAT | unix.O_CLOEXEC
	if appendMode {
		flags |= unix.O_APPEND
	}
	fd, err := unix.Open(path, flags, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &nonblockFile{path: path, fd: fd}, nil
}

// Write writes p, or as much of it as fits without blocking; it never
// fails for want of room, so a logger on a stalled FIFO keeps going.
func (f *nonblockFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, errors.New("write " + f.path + ": closed")
	}
	for done := 0; done < len(p); {
		n, err := unix.Write(f.fd, p[done:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			f.missed.Add(1)
			return len(p), nil
		case err != nil:
			return done, fmt.Errorf("write %s: %w", f.path, err)
		}
		done += n
	}
	return len(p), nil
}

// Close closes the descriptor; later writes fail.
func (f *nonblockFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	return unix.Close(f.fd)
}
