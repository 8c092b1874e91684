package guest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// clockScript says "ready" once the guest's shell runs, reads the time
// the host sends back at that moment and sets the clock to it (seconds
// and nanoseconds since the epoch, in UTC).
const clockScript = `echo ready; IFS= read -r t; date -u -s "@$t" >/dev/null`

// SetClock sets the guest's clock to now(). The time is taken when the
// guest's shell says it is ready to read it, not when the command is
// sent, so the session's start-up (slow in an emulated guest) is not
// left as skew; what remains is one trip over the SSH connection.
func (c *Conn) SetClock(ctx context.Context, now func() time.Time) error {
	pr, pw := io.Pipe()
	defer pw.Close()
	out := &readyWriter{onReady: func() {
		t := now()
		// The pipe is read by the session's stdin copier; write from a
		// goroutine so the guest's output is never held up by it.
		go func() {
			fmt.Fprintf(pw, "%d.%09d\n", t.Unix(), t.Nanosecond())
			pw.Close()
		}()
	}}
	if err := c.Run(ctx, clockScript, pr, out, nil); err != nil {
		return fmt.Errorf("set the guest's clock: %w", err)
	}
	if !out.seen() {
		return fmt.Errorf("set the guest's clock: the guest never said it was ready")
	}
	return nil
}

// readyWriter calls onReady once when the line "ready" has been written
// to it.
type readyWriter struct {
	mu      sync.Mutex
	buf     []byte
	fired   bool
	onReady func()
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired {
		return len(p), nil
	}
	// Only the first line matters; a guest cannot make this buffer grow
	// past a short line.
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(w.buf[:i])
		w.buf = w.buf[i+1:]
		if string(line) == "ready" {
			w.fired = true
			w.buf = nil
			w.onReady()
			return len(p), nil
		}
	}
	if len(w.buf) > 64 {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

func (w *readyWriter) seen() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}
