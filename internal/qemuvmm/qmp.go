package qemuvmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// qmpConn is a QMP (QEMU Machine Protocol) connection: one command at a
// time, asynchronous events skipped.
type qmpConn struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
	seq  int
}

// qmpReply is any line QEMU sends on QMP.
type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// QMPError is an error reply to a QMP command.
type QMPError struct {
	Command, Class, Desc string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpPollInterval is the pause between two connection attempts while
// QEMU starts: an attempt is a failed connect, microseconds, so the poll
// is tight and the socket is used within a millisecond of its listen.
const qmpPollInterval = time.Millisecond

// dialQMP connects to the QMP socket at path, retrying until it appears,
// and negotiates capabilities. It gives up when ctx ends or gone closes
// (QEMU exited).
func dialQMP(ctx context.Context, path string, gone <-chan struct{}) (*qmpConn, error) {
	var conn net.Conn
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp %s: %w (last: %v)", path, ctx.Err(), err)
		case <-gone:
			return nil, errors.New("connect qmp: qemu exited")
		case <-time.After(qmpPollInterval):
		}
	}
	q := &qmpConn{conn: conn, r: bufio.NewReader(conn)}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	conn.SetDeadline(dl)
	var greeting qmpReply
	if err := q.read(&greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %v", err)
	}
	conn.SetDeadline(time.Time{})
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) read(v *qmpReply) error {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	*v = qmpReply{}
	return json.Unmarshal(line, v)
}

// Execute runs cmd with args (nil for none) and decodes its return value
// into out (nil to ignore it). It waits at most until ctx ends, and at
// most 10 s without a deadline.
func (q *qmpConn) Execute(ctx context.Context, cmd string, args, out any) error {
	return q.execute(ctx, cmd, args, out, nil)
}

// ExecuteFD is Execute with f passed along as SCM_RIGHTS, for the
// commands that take a descriptor (getfd, add-fd).
func (q *qmpConn) ExecuteFD(ctx context.Context, cmd string, args, out any, f *os.File) error {
	return q.execute(ctx, cmd, args, out, f)
}

func (q *qmpConn) execute(ctx context.Context, cmd string, args, out any, f *os.File) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	q.conn.SetDeadline(dl)
	defer q.conn.SetDeadline(time.Time{})
	q.seq++
	req := map[string]any{"execute": cmd, "id": q.seq}
	if args != nil {
		req["arguments"] = args
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if f == nil {
		_, err = q.conn.Write(append(raw, '\n'))
	} else {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return fmt.Errorf("qmp %s: cannot pass a descriptor over %T", cmd, q.conn)
		}
		_, _, err = uc.WriteMsgUnix(append(raw, '\n'), unix.UnixRights(int(f.Fd())), nil)
	}
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var rep qmpReply
		if err := q.read(&rep); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case rep.Event != "":
			continue // events are not replies
		case rep.Error != nil:
			return &QMPError{Command: cmd, Class: rep.Error.Class, Desc: rep.Error.Desc}
		case rep.Return != nil:
			if out != nil {
				if err := json.Unmarshal(rep.Return, out); err != nil {
					return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
				}
			}
			return nil
		}
	}
}

// Close closes the connection.
func (q *qmpConn) Close() error { return q.conn.Close() }
