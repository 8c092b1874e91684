package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"banger/internal/model"
)

// An upload is a request whose payload (a tar stream) is too large and
// too long-lived for a request body: the client asks for an upgraded
// connection; the daemon decides, after checking the request, whether it
// wants the payload (OpenFunc) and switches protocols. The client then
// writes the payload in frames while the daemon sends NDJSON events
// (progress, then a result or an error) on the same connection.

// OpenFunc switches the request to an upgraded stream and returns the
// client's payload. Its reader ends with io.EOF only when the client
// marked the end; a client that went away gives io.ErrUnexpectedEOF.
type OpenFunc func() (io.Reader, error)

// maxFrame bounds one frame of an upload.
const maxFrame = 4 << 20

// uploadChunk is how much payload the client gathers into one frame.
const uploadChunk = 1 << 20

// frameWriter frames an upload: each write is a 4-byte big-endian length
// and the bytes; a zero-length frame marks the end, so the daemon can tell
// a finished upload from a client that went away.
type frameWriter struct {
	w io.Writer
}

func (f *frameWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := len(p)
		if n > maxFrame {
			n = maxFrame
		}
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(n))
		if _, err := f.w.Write(hdr[:]); err != nil {
			return written, err
		}
		m, err := f.w.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// end writes the end-of-upload frame.
func (f *frameWriter) end() error {
	_, err := f.w.Write([]byte{0, 0, 0, 0})
	return err
}

// frameReader reads frameWriter's stream.
type frameReader struct {
	r    io.Reader
	left uint32
	done bool
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.done {
		return 0, io.EOF
	}
	for f.left == 0 {
		var hdr [4]byte
		if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("upload ended early (did the client go away?): %w", err)
		}
		f.left = binary.BigEndian.Uint32(hdr[:])
		if f.left == 0 {
			f.done = true
			return 0, io.EOF
		}
		if f.left > maxFrame {
			return 0, fmt.Errorf("upload: frame of %d bytes is over the %d limit", f.left, maxFrame)
		}
	}
	if uint32(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= uint32(n)
	if errors.Is(err, io.EOF) {
		if f.left > 0 {
			return n, fmt.Errorf("upload ended early (did the client go away?): %w", io.ErrUnexpectedEOF)
		}
		err = nil
	}
	return n, err
}

// errWriter remembers the first write error, so an upload can tell its
// own failure from a broken connection.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// serveUpload runs op, which may call open to take over the connection
// (101 Switching Protocols) and read the client's framed payload. Until
// open, the reply is plain HTTP (an error, or a result that needed no
// payload); after it, progress and then the result or error go back as
// NDJSON events on the same connection while the payload arrives.
func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request, op func(context.Context, OpenFunc, ProgressFunc) (any, error)) {
	start := time.Now()
	var (
		mu      sync.Mutex
		bw      *bufio.Writer
		release func()
	)
	send := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		if bw == nil {
			return
		}
		ev.ElapsedMS = time.Since(start).Milliseconds()
		json.NewEncoder(bw).Encode(ev)
		bw.Flush()
	}
	open := func() (io.Reader, error) {
		mu.Lock()
		defer mu.Unlock()
		if release != nil {
			return nil, errors.New("upload: stream opened twice")
		}
		c, rw, rel, err := s.upgrade(w, r)
		if err != nil {
			return nil, err
		}
		release, bw = rel, rw.Writer
		// A client that stops sending is cut off after the read timeout.
		return &frameReader{r: &idleReader{conn: c, r: rw.Reader, timeout: s.access.ReadTimeout}}, nil
	}
	result, err := op(r.Context(), open, func(p Progress) {
		send(Event{Type: EventProgress, Progress: &p})
	})
	mu.Lock()
	upgraded := release != nil
	mu.Unlock()
	if !upgraded {
		reply(w, result, err)
		return
	}
	defer release()
	if err == nil {
		raw, merr := json.Marshal(result)
		if merr == nil {
			send(Event{Type: EventResult, Result: raw})
			return
		}
		err = merr
	}
	d := detailFor(err)
	send(Event{Type: EventError, Error: &d})
}

// upload does a request whose payload is streamed on an upgraded
// connection: body writes the payload while the daemon's progress events
// arrive; the final result is decoded into out. A daemon that answers
// without upgrading (an error, or a result that needs no payload) is read
// like a plain reply, and body is not called.
func (c *Client) upload(ctx context.Context, path string, body func(io.Writer) error, out any, progress func(Event)) error {
	up, status, data, err := c.dialUpgrade(ctx, "POST", Prefix+path)
	if err != nil {
		return err
	}
	if status != http.StatusSwitchingProtocols {
		if status >= 300 {
			return errorFromBody(status, data)
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("decode reply to POST %s: %w", path, err)
			}
		}
		return nil
	}
	conn := up.conn
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	done := make(chan error, 1)
	go func() { done <- readEvents(up.r, "POST", path, out, progress) }()

	ew := &errWriter{w: conn}
	fw := &frameWriter{w: ew}
	bw := bufio.NewWriterSize(fw, uploadChunk)
	werr := body(bw)
	if werr == nil {
		werr = bw.Flush()
	}
	if werr == nil {
		werr = fw.end()
	}
	if werr == nil {
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		return <-done
	}
	if ew.err == nil && ctx.Err() == nil {
		// The payload failed on this side: ending the stream without the
		// end frame makes the daemon abandon the upload; wait a little for
		// it to finish doing so.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		return werr
	}
	// The connection broke: the daemon has likely said why.
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-time.After(5 * time.Second):
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("POST %s: %w", path, werr)
}

// readEvents reads NDJSON events until a result or error.
func readEvents(r io.Reader, method, path string, out any, progress func(Event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decode stream from %s %s: %w", method, path, err)
		}
		switch ev.Type {
		case EventProgress:
			if progress != nil {
				progress(ev)
			}
		case EventError:
			if ev.Error == nil {
				return errors.New("daemon reported an error without details")
			}
			return &model.Error{Code: ev.Error.Code, Message: ev.Error.Message}
		case EventResult:
			if out != nil {
				if err := json.Unmarshal(ev.Result, out); err != nil {
					return fmt.Errorf("decode result of %s %s: %w", method, path, err)
				}
			}
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s %s: stream broken: %w", method, path, err)
	}
	return fmt.Errorf("%s %s: the daemon closed the stream without a result (did it crash? see its log)", method, path)
}
