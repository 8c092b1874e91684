package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"banger/internal/model"
)

// Client talks to bangerd over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon at socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

// unreachable wraps a dial failure with what to do about it.
func (c *Client) unreachable(err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.ENOENT):
		hint = "is bangerd running? start it with `systemctl start bangerd` (or `sudo bangerd`), or point BANGER_SOCKET at its socket"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		hint = "permission denied: add yourself to the banger group (`sudo usermod -aG banger $USER`, then log in again)"
	case errors.Is(err, syscall.ECONNREFUSED):
		hint = "nothing is listening; start bangerd"
	default:
		hint = "is bangerd running?"
	}
	return &model.Error{Code: model.EUNAVAILABLE, Message: fmt.Sprintf("cannot reach bangerd at %s: %s", c.socket, hint), Err: err}
}

func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://bangerd"+Prefix+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, c.unreachable(err)
		}
		return nil, err
	}
	return resp, nil
}

// call does a request and decodes a JSON reply into out.
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return errorFromBody(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode reply to %s %s: %w", method, path, err)
	}
	return nil
}

// callStream does a streamed request: progress goes to progress, and the
// final result is decoded into out.
func (c *Client) callStream(ctx context.Context, method, path string, body, out any, progress func(Event)) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(resp.Body)
		return errorFromBody(resp.StatusCode, data)
	}
	return readEvents(resp.Body, method, path, out, progress)
}

// Version returns the daemon's version.
func (c *Client) Version(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	return v, c.call(ctx, "GET", "/version", nil, &v)
}

// Doctor returns the daemon's host checks.
func (c *Client) Doctor(ctx context.Context) ([]DoctorCheck, error) {
	var v []DoctorCheck
	return v, c.call(ctx, "GET", "/doctor", nil, &v)
}

// ListImages lists the images the caller can see.
func (c *Client) ListImages(ctx context.Context) ([]model.Image, error) {
	var v []model.Image
	return v, c.call(ctx, "GET", "/images", nil, &v)
}

// GetImage returns one image with its details.
func (c *Client) GetImage(ctx context.Context, ref string) (ImageDetail, error) {
	var v ImageDetail
	return v, c.call(ctx, "GET", "/images/"+url.PathEscape(ref), nil, &v)
}

// RegisterImage registers existing artifacts.
func (c *Client) RegisterImage(ctx context.Context, req ImageRegisterRequest) (ImageRegisterResponse, error) {
	var v ImageRegisterResponse
	return v, c.call(ctx, "POST", "/images", req, &v)
}

// BuildImage builds an image, reporting progress.
func (c *Client) BuildImage(ctx context.Context, req ImageBuildRequest, progress func(Event)) (model.Image, error) {
	var v model.Image
	return v, c.callStream(ctx, "POST", "/images/build", req, &v, progress)
}

// DeleteImage removes an image.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/images/"+url.PathEscape(ref), nil, nil)
}

// WarmImage boots an image once and keeps its snapshot as its warm
// state, from which `vm create` restores VMs that fit.
func (c *Client) WarmImage(ctx context.Context, ref string, req ImageWarmRequest, progress func(Event)) (WarmState, error) {
	var v WarmState
	return v, c.callStream(ctx, "POST", "/images/"+url.PathEscape(ref)+"/warm", req, &v, progress)
}

// DropWarm removes an image's warm state.
func (c *Client) DropWarm(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/images/"+url.PathEscape(ref)+"/warm", nil, nil)
}

// ListKernels lists built kernels.
func (c *Client) ListKernels(ctx context.Context) ([]Kernel, error) {
	var v []Kernel
	return v, c.call(ctx, "GET", "/kernels", nil, &v)
}

// BuildKernel builds (or reuses) a kernel, reporting progress.
func (c *Client) BuildKernel(ctx context.Context, req KernelBuildRequest, progress func(Event)) (Kernel, error) {
	var v Kernel
	return v, c.callStream(ctx, "POST", "/kernels/build", req, &v, progress)
}

// ListVMs lists the VMs the caller can see.
func (c *Client) ListVMs(ctx context.Context) ([]VMView, error) {
	var v []VMView
	return v, c.call(ctx, "GET", "/vms", nil, &v)
}

// ListVMRows lists the VMs the caller can see, in brief (VMRow): what a
// table of them shows, quick to send and decode when there are many.
func (c *Client) ListVMRows(ctx context.Context) ([]VMRow, error) {
	var v []VMRow
	return v, c.call(ctx, "GET", "/vms?view=brief", nil, &v)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, ref string) (VMView, error) {
	var v VMView
	return v, c.call(ctx, "GET", "/vms/"+url.PathEscape(ref), nil, &v)
}

// CreateVM creates (and unless NoStart, starts) a VM.
func (c *Client) CreateVM(ctx context.Context, req model.VMCreateRequest, progress func(Event)) (VMView, error) {
	var v VMView
	return v, c.callStream(ctx, "POST", "/vms", req, &v, progress)
}

// SetVM changes a VM.
func (c *Client) SetVM(ctx context.Context, req model.VMSetRequest) (VMView, error) {
	var v VMView
	return v, c.call(ctx, "PATCH", "/vms/"+url.PathEscape(req.IDOrName), req, &v)
}

// DeleteVM removes a VM.
func (c *Client) DeleteVM(ctx context.Context, ref string, opts VMDeleteOptions, progress func(Event)) error {
	q := ""
	if opts.Force {
		q = "?force=1"
	}
	return c.callStream(ctx, "DELETE", "/vms/"+url.PathEscape(ref)+q, nil, nil, progress)
}

// StartVM starts a VM and waits until it answers SSH.
func (c *Client) StartVM(ctx context.Context, ref string, progress func(Event)) (VMView, error) {
	var v VMView
	return v, c.callStream(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/start", nil, &v, progress)
}

// StopVM stops a VM gracefully.
func (c *Client) StopVM(ctx context.Context, ref string, progress func(Event)) (VMView, error) {
	var v VMView
	return v, c.callStream(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/stop", nil, &v, progress)
}

// KillVM kills a VM's VMM.
func (c *Client) KillVM(ctx context.Context, ref string) (VMView, error) {
	var v VMView
	return v, c.call(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/kill", nil, &v)
}

// SuspendVM saves a running VM's state and frees its VMM; StartVM
// restores it.
func (c *Client) SuspendVM(ctx context.Context, ref string, progress func(Event)) (VMView, error) {
	var v VMView
	return v, c.callStream(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/suspend", nil, &v, progress)
}

// ForkVM makes running copies of a running VM.
func (c *Client) ForkVM(ctx context.Context, ref string, req model.VMForkRequest, progress func(Event)) ([]VMView, error) {
	var v []VMView
	return v, c.callStream(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/fork", req, &v, progress)
}

// RestartVM stops and starts a VM.
func (c *Client) RestartVM(ctx context.Context, ref string, progress func(Event)) (VMView, error) {
	var v VMView
	return v, c.callStream(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/restart", nil, &v, progress)
}

// ResetSystem gives a stopped VM a fresh system overlay.
func (c *Client) ResetSystem(ctx context.Context, ref string) (VMView, error) {
	var v VMView
	return v, c.call(ctx, "POST", "/vms/"+url.PathEscape(ref)+"/reset-system", nil, &v)
}

// VMStats returns the stats the daemon last collected for a VM.
func (c *Client) VMStats(ctx context.Context, ref string) (model.VMStats, error) {
	var v model.VMStats
	return v, c.call(ctx, "GET", "/vms/"+url.PathEscape(ref)+"/stats", nil, &v)
}

// Logs copies a VM's console to w.
func (c *Client) Logs(ctx context.Context, ref string, opts LogsOptions, w io.Writer) error {
	q := url.Values{}
	if opts.Follow {
		q.Set("follow", "1")
	}
	if opts.Tail > 0 {
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	path := "/vms/" + url.PathEscape(ref) + "/logs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := c.copyGET(ctx, path, w)
	if ctx.Err() != nil {
		// Following until interrupted is the normal end of `logs -f`.
		return nil
	}
	return err
}

// copyGET copies the body of a streamed GET to w.
func (c *Client) copyGET(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(resp.Body)
		return errorFromBody(resp.StatusCode, data)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// Connect opens a byte stream to a guest TCP port through the daemon.
func (c *Client) Connect(ctx context.Context, ref string, port int) (net.Conn, error) {
	up, status, data, err := c.dialUpgrade(ctx, "POST", Prefix+vmPath(ref, "/connect")+"?port="+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	if status != http.StatusSwitchingProtocols {
		if status < 300 {
			return nil, fmt.Errorf("connect: the daemon answered %d without a stream", status)
		}
		return nil, errorFromBody(status, data)
	}
	return &bufferedConn{Conn: up.conn, r: up.r}, nil
}

// bufferedConn reads through the bufio.Reader that parsed the response,
// so bytes the guest sent right after it are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the stream.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
