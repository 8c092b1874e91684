package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// clockScript says "ready" once it runs, reads the time the host sends
// back at that moment and sets the clock to it (seconds and nanoseconds
// since the epoch, in UTC). Where the guest has perl on x86_64 or arm64,
// perl is started before "ready" and calls settimeofday the moment the
// time arrives: no program starts between the time's arrival and the
// clock's change (in an emulated guest a start takes a few hundred ms,
// all of it skew). Otherwise, or if the call fails, date(1) sets it.
const clockScript = `n=; case $(uname -m) in x86_64) n=164 ;; aarch64) n=170 ;; esac; ` +
	`if [ -n "$n" ] && command -v perl >/dev/null 2>&1; then exec perl -e '` + perlSetClock + `' "$n"; fi; ` +
	`echo ready; IFS= read -r t; date -u -s "@$t" >/dev/null`

// perlSetClock is the perl side of clockScript; $ARGV[0] is the
// settimeofday system call's number.
const perlSetClock = `$| = 1; print "ready\n"; my $t = <STDIN>; exit 1 unless defined $t; chomp $t; ` +
	`my ($s, $f) = split /\./, $t; $f = substr($f . "000000000", 0, 9); ` +
	`exit 0 if syscall($ARGV[0] + 0, pack("q q", $s, int($f / 1000)), 0) == 0; ` +
	`open STDOUT, ">", "/dev/null"; exec "date", "-u", "-s", "\@$t"`

// SetClock sets the guest's clock to now(). The time is taken when the
// guest's shell says it is ready to read it, not when the command is
// sent, so the session's start-up (slow in an emulated guest) is not
// left as skew; what remains is one trip over the SSH connection.
func (c *Conn) SetClock(ctx context.Context, now func() time.Time) error {
	if err := c.runClock(ctx, clockScript, now, ClockRun{}); err != nil {
		return fmt.Errorf("set the guest's clock: %w", err)
	}
	return nil
}

// ClockRun is what RunClock sends and expects besides the time.
type ClockRun struct {
	// Head is the standard input before the time; Tail what follows it
	// (the input then ends).
	Head, Tail []byte
	// Stdout, if set, gets what the command prints.
	Stdout io.Writer
	// Marker, if set, is a line after which the command takes away the
	// connection it runs over (RunDetaching): once it is printed, the
	// session's end is waited for a second at most, and a session cut
	// off after it is no error.
	Marker string
}

// RunClock runs cmd, a command that sets the guest's clock, in one
// session: its standard input is r.Head, then, once cmd says "ready",
// the time now() gives at that moment (as SetClock sends it), then
// r.Tail. One session does what would otherwise take several, each
// costing a session's start-up in the guest.
func (c *Conn) RunClock(ctx context.Context, cmd string, now func() time.Time, r ClockRun) error {
	return c.runClock(ctx, cmd, now, r)
}

// runClock is RunClock.
func (c *Conn) runClock(ctx context.Context, cmd string, now func() time.Time, r ClockRun) error {
	pr, pw := io.Pipe()
	defer pw.Close()
	out := &lineWriter{want: "ready", on: func() {
		t := now()
		// The pipe is read by the session's stdin copier; write from a
		// goroutine so the guest's output is never held up by it.
		go func() {
			fmt.Fprintf(pw, "%d.%09d\n", t.Unix(), t.Nanosecond())
			if len(r.Tail) > 0 {
				pw.Write(r.Tail)
			}
			pw.Close()
		}()
	}}
	var in io.Reader = pr
	if len(r.Head) > 0 {
		in = io.MultiReader(bytes.NewReader(r.Head), pr)
	}
	writers := []io.Writer{out}
	if r.Stdout != nil {
		writers = append(writers, r.Stdout)
	}
	var err error
	if r.Marker == "" {
		err = c.Run(ctx, cmd, in, io.MultiWriter(writers...), nil)
	} else {
		err = c.runDetaching(ctx, cmd, in, writers, r.Marker)
	}
	if err != nil {
		// A session that ended before "ready" with no status of its own
		// (its input cut off as it closed) failed for that reason.
		var ee *ExitError
		if out.seen() || errors.As(err, &ee) || ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("the guest never said it was ready for the time: %w", err)
	}
	if !out.seen() {
		return fmt.Errorf("the guest never said it was ready for the time")
	}
	return nil
}

// lineWriter calls on once, when the line want has been written to it
// (a guest's "ready", or a marker).
type lineWriter struct {
	mu    sync.Mutex
	want  string
	buf   []byte
	fired bool
	on    func()
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired {
		return len(p), nil
	}
	// Only whole short lines matter; a guest cannot make this buffer
	// grow past a short line.
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(w.buf[:i])
		w.buf = w.buf[i+1:]
		if string(line) == w.want {
			w.fired = true
			w.buf = nil
			w.on()
			return len(p), nil
		}
	}
	if len(w.buf) > 64+len(w.want) {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

func (w *lineWriter) seen() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// ClockHold is a session left waiting in a guest to set its clock, for a
// guest about to be suspended: at the resume, with the connection still
// open, setting the clock costs no new SSH connection, only the time's
// trip to the guest. It works only while the connection lives (the same
// daemon, no keepalives: DialQuiet).
type ClockHold struct {
	conn *Conn
	in   *io.PipeWriter
	done chan error
	once sync.Once
}

// HoldClock runs pre (a shell command; "" for none) in the guest, then
// leaves a shell waiting to read the time, and returns once pre is done
// and the shell waits. The hold owns c from then on: Close closes it.
func (c *Conn) HoldClock(ctx context.Context, pre string) (*ClockHold, error) {
	pr, pw := io.Pipe()
	ready := make(chan struct{})
	out := &lineWriter{want: "ready", on: func() { close(ready) }}
	h := &ClockHold{conn: c, in: pw, done: make(chan error, 1)}
	script := clockScript
	if pre != "" {
		script = pre + "; " + clockScript
	}
	// The session lives until the time is sent or the connection is
	// closed (Close); its goroutine ends with it.
	go func() { h.done <- c.Run(context.Background(), script, pr, out, nil) }()
	select {
	case <-ready:
		return h, nil
	case err := <-h.done:
		h.Close()
		if err == nil {
			err = fmt.Errorf("the guest's shell ended before it was ready")
		}
		return nil, fmt.Errorf("hold the guest's clock: %w", err)
	case <-ctx.Done():
		h.Close()
		return nil, fmt.Errorf("hold the guest's clock: %w", ctx.Err())
	}
}

// Set sends now() to the waiting shell, which sets the guest's clock, and
// waits for the session's end. The hold is spent either way.
func (h *ClockHold) Set(ctx context.Context, now func() time.Time) error {
	defer h.Close()
	t := now()
	// A write error shows as the session's end.
	go func() {
		fmt.Fprintf(h.in, "%d.%09d\n", t.Unix(), t.Nanosecond())
		h.in.Close() // the session ends once its input has
	}()
	select {
	case err := <-h.done:
		if err != nil {
			return fmt.Errorf("set the guest's clock over the held session: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("set the guest's clock over the held session: %w", ctx.Err())
	}
}

// Close abandons the hold: the guest's shell reads nothing and ends
// without touching the clock. It is safe to call more than once.
func (h *ClockHold) Close() {
	h.once.Do(func() {
		h.in.Close()
		h.conn.Close()
	})
}
