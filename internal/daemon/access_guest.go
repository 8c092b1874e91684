package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// VMLogs implements api.Backend: the VM's serial console, optionally the
// last Tail lines first, optionally following new output until ctx ends.
func (d *Daemon) VMLogs(ctx context.Context, ref string, opts api.LogsOptions, w io.Writer) error {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return err
	}
	path := vm.Runtime.LogPath
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if !opts.Follow {
			return nil
		}
	} else if err != nil {
		return err
	}
	var offset int64
	if f != nil {
		if opts.Tail > 0 {
			offset = tailOffset(f, opts.Tail)
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return err
		}
		n, err := io.Copy(w, f)
		offset += n
		f.Close()
		if err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	// Follow: poll for growth; a shrink means the log was trimmed, so
	// start over from its beginning.
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		if fi.Size() < offset {
			offset = 0
		}
		if fi.Size() == offset {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		f.Seek(offset, io.SeekStart)
		n, err := io.Copy(w, f)
		offset += n
		f.Close()
		if err != nil {
			return err
		}
	}
}

// tailOffset finds where the last n lines of f begin.
func tailOffset(f *os.File, n int) int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	size := fi.Size()
	const chunk = 8192
	count := 0
	pos := size
	buf := make([]byte, chunk)
	for pos > 0 {
		read := int64(chunk)
		if pos < read {
			read = pos
		}
		pos -= read
		f.ReadAt(buf[:read], pos)
		for i := read - 1; i >= 0; i-- {
			if buf[i] == '\n' && pos+i != size-1 {
				count++
				if count == n {
					return pos + i + 1
				}
			}
		}
	}
	return 0
}

// Connect implements api.Backend: a TCP stream to a guest port, counted
// as activity while it is open.
func (d *Daemon) Connect(ctx context.Context, ref string, port int) (net.Conn, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	// A connection to a suspended VM wakes it.
	if vm, err = d.wake(ctx, vm, api.NoProgress); err != nil {
		return nil, err
	}
	if vm.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %q is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dialer.DialContext(dctx, "tcp", net.JoinHostPort(vm.Runtime.GuestIP, strconv.Itoa(port)))
	if err != nil {
		return nil, model.Errorf(model.EUNAVAILABLE, "connect to %s port %d: %v", vm.Name, port, err)
	}
	d.touch(vm.ID)
	d.sessions.add(vm.ID, 1)
	return &sessionConn{Conn: conn, done: func() {
		d.sessions.add(vm.ID, -1)
		d.touch(vm.ID)
	}}, nil
}

// Hold implements api.Backend: the VM counts as in use, as with an open
// connect stream, until release is called. A suspended VM is resumed
// first, as Connect does.
func (d *Daemon) Hold(ctx context.Context, ref string) (func(), error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	if vm, err = d.wake(ctx, vm, api.NoProgress); err != nil {
		return nil, err
	}
	if vm.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %q is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	d.touch(vm.ID)
	d.sessions.add(vm.ID, 1)
	var once sync.Once
	return func() {
		once.Do(func() {
			d.sessions.add(vm.ID, -1)
			d.touch(vm.ID)
		})
	}, nil
}

// touch records use of a VM.
func (d *Daemon) touch(id string) {
	if err := d.store.TouchVM(context.Background(), id, model.Now()); err != nil {
		d.logger.Debug("touch vm", "id", id, "err", err)
	}
}

// sessionConn calls done once when closed.
type sessionConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *sessionConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

// CloseWrite half-closes the guest side.
func (c *sessionConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// sessionCounter counts open streams per VM.
type sessionCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func newSessionCounter() *sessionCounter { return &sessionCounter{n: map[string]int{}} }

func (s *sessionCounter) add(id string, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[id] += delta
	if s.n[id] <= 0 {
		delete(s.n, id)
	}
}

func (s *sessionCounter) open(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[id]
}
