package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"banger/internal/model"
)

// upgradeProto names banger's upgraded streams: `connect`'s byte stream
// to a guest port, and uploads (framed payload up, events down).
const upgradeProto = "banger-stream"

// upgradeRequest is the request line and headers of an upgraded request:
// it carries no body of its own, its parameters are in the path's query.
func upgradeRequest(method, path string) string {
	return method + " " + path + " HTTP/1.1\r\nHost: bangerd\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\nContent-Length: 0\r\n\r\n"
}

// upgrade answers a request with 101 Switching Protocols and takes its
// connection over: what follows on it is the caller's. A request that
// did not ask for the upgrade is refused with EINVALID, and nothing is
// written. release closes the connection; Shutdown waits for it.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) (conn net.Conn, rw *bufio.ReadWriter, release func(), err error) {
	if r.Header.Get("Upgrade") != upgradeProto {
		return nil, nil, nil, model.Errorf(model.EINVALID, "%s %s carries a stream: send it with `Connection: Upgrade` and `Upgrade: %s` (the banger CLI does)", r.Method, r.URL.Path, upgradeProto)
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, nil, errors.New("upgrade: connection cannot be hijacked")
	}
	conn, rw, err = hj.Hijack()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("upgrade: %w", err)
	}
	s.wg.Add(1)
	release = func() {
		conn.Close()
		s.wg.Done()
	}
	if _, err := rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgradeProto + "\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		release()
		return nil, nil, nil, fmt.Errorf("upgrade: %w", err)
	}
	if err := rw.Flush(); err != nil {
		release()
		return nil, nil, nil, fmt.Errorf("upgrade: %w", err)
	}
	return conn, rw, release, nil
}

// upgraded is the client's side of an upgraded request: the connection,
// and the reader that parsed the daemon's answer (it may already hold
// bytes sent after it).
type upgraded struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialUpgrade sends an upgraded request. On 101 Switching Protocols it
// returns the stream; otherwise it reads the daemon's plain answer,
// closes the connection and returns the answer's status and body (an
// error, or a result that needed no stream). ctx bounds the exchange.
func (c *Client) dialUpgrade(ctx context.Context, method, path string) (up upgraded, status int, body []byte, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return upgraded{}, 0, nil, c.unreachable(err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		if !stop() && err == nil {
			// ctx ended as the answer came: the connection is closed.
			err = ctx.Err()
		}
		if err != nil || status != http.StatusSwitchingProtocols {
			conn.Close()
		}
	}()
	if _, err := io.WriteString(conn, upgradeRequest(method, path)); err != nil {
		return upgraded{}, 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return upgraded{}, 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return upgraded{conn: conn, r: br}, resp.StatusCode, nil, nil
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return upgraded{}, 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return upgraded{}, resp.StatusCode, body, nil
}
