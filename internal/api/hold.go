package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"banger/internal/model"
)

// A hold is an upgraded stream that carries nothing: while it is open the
// daemon counts its VM as in use, so no idle policy acts on it. `banger
// port-forward` holds its VM for as long as it runs, connections or not.
// The client ends a hold by closing the stream; the daemon ends it when
// the VM is no longer running (or gone).

// holdCheck is how often the server looks at a held VM again.
var holdCheck = 5 * time.Second

func (s *Server) holdRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+Prefix+"/vms/{ref}/hold", s.handleHold)
}

func (s *Server) handleHold(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	release, err := s.backend.Hold(r.Context(), ref)
	if err != nil {
		writeError(w, err)
		return
	}
	defer release()
	conn, rw, done, err := s.upgrade(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer done()
	buf := make([]byte, 512)
	for {
		conn.SetReadDeadline(time.Now().Add(holdCheck))
		_, err := rw.Read(buf)
		if err == nil {
			// Bytes on a hold mean nothing; they are read and dropped.
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			// The client closed its end: the hold is over.
			return
		}
		vm, err := s.backend.GetVM(r.Context(), ref)
		if err != nil || vm.State != model.VMStateRunning {
			return
		}
	}
}

// Hold is a VM held in use through the daemon (see Client.Hold).
type Hold struct {
	conn net.Conn
	done chan struct{}
}

// Hold marks a VM in use until the returned Hold is closed, or until the
// daemon ends it because the VM stopped or went away (Done is closed
// then). ENOTFOUND, ECONFLICT (not running).
func (c *Client) Hold(ctx context.Context, ref string) (*Hold, error) {
	up, status, data, err := c.dialUpgrade(ctx, "POST", Prefix+vmPath(ref, "/hold"))
	if err != nil {
		return nil, err
	}
	if status != http.StatusSwitchingProtocols {
		if status < 300 {
			return nil, fmt.Errorf("hold: the daemon answered %d without a stream", status)
		}
		return nil, errorFromBody(status, data)
	}
	h := &Hold{conn: up.conn, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		buf := make([]byte, 512)
		for {
			if _, err := up.r.Read(buf); err != nil {
				return
			}
		}
	}()
	return h, nil
}

// Done is closed when the hold ends: Close was called, or the daemon
// ended it.
func (h *Hold) Done() <-chan struct{} { return h.done }

// Close ends the hold and waits until its reader is gone.
func (h *Hold) Close() error {
	err := h.conn.Close()
	<-h.done
	return err
}
