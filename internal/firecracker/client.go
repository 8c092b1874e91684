// Package firecracker drives a Firecracker-API VMM: it launches the VMM
// process detached from the daemon, configures and starts the VM over the
// HTTP API on the VMM's unix socket, finds the process again after a
// daemon restart, and stops it. The same code drives real Firecracker and
// banger-vmm-qemu, which serves the same API on top of QEMU.
package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"golang.org/x/sys/unix"
)

// Client talks to one VMM's API socket. Requests are HTTP/1.1 with a
// Content-Length (Firecracker reads a body only by Content-Length), one
// connection per request.
type Client struct {
	sock string
	http *http.Client
	// Check, when set, is called with every request before it is sent; a
	// non-nil error stops the request. Tests set it to a validator of the
	// official API spec so that no body the spec refuses leaves the client.
	Check func(method, path string, body []byte) error
	// CheckReply, when set, is called with every 2xx reply that has a
	// body; a non-nil error fails the call. Tests set it to a validator
	// of the spec's response schemas.
	CheckReply func(method, path string, status int, body []byte) error
}

// NewClient returns a client for the API socket at apiSock.
func NewClient(apiSock string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", apiSock)
		},
		DisableKeepAlives: true,
	}
	return &Client{sock: apiSock, http: &http.Client{Transport: tr}}
}

// NewClientAs returns a client for the API socket at apiSock that talks
// only to a VMM running as uid: after connecting, it checks the peer's
// credentials (SO_PEERCRED). The socket lives in a directory the VMM's
// uid owns, so the VMM could replace it with a link to another VM's
// socket; the check makes such a link a refused connection, not a
// command sent to the wrong VM.
func NewClientAs(apiSock string, uid int) *Client {
	c := NewClient(apiSock)
	if uid <= 0 {
		// A VMM from before per-VM uids runs as root.
		uid = 0
	}
	c.http.Transport.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", apiSock)
		if err != nil {
			return nil, err
		}
		if err := checkPeerUID(conn, uid); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	return c
}

// checkPeerUID fails unless the process at the other end of a unix
// connection runs as uid.
func checkPeerUID(conn net.Conn, uid int) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("vmm api: not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("vmm api: peer credentials: %w", cerr)
	}
	if int(cred.Uid) != uid {
		return fmt.Errorf("vmm api: the socket is served by uid %d, not the VM's uid %d: refusing to talk to it", cred.Uid, uid)
	}
	return nil
}

// Socket returns the API socket path the client talks to.
func (c *Client) Socket() string { return c.sock }

// APIError is a non-2xx reply of the VMM.
type APIError struct {
	Method string
	Path   string
	Status int
	// FaultMessage is the reply's fault_message, or its raw body when it
	// was not the usual JSON error object.
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("vmm api %s %s: status %d: %s", e.Method, e.Path, e.Status, e.FaultMessage)
}

// PutLogger configures the VMM's own log. Pre-boot only.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics configures the VMM's metrics file. Pre-boot only.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// PutMachineConfig sets vCPUs and memory. Pre-boot only.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource sets the kernel, initrd and command line. Pre-boot only.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive adds or replaces the drive d.DriveID. Pre-boot only.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if err := checkResourceID("drive", d.DriveID); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutNetworkInterface adds the network interface n.IfaceID, whose tap
// device must already exist. Pre-boot only.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	if err := checkResourceID("network interface", n.IfaceID); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutVsock adds the vsock device. Pre-boot only.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// InstanceStart boots the VM. It returns once the vCPUs run, not once the
// guest has booted.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceAction{ActionType: ActionInstanceStart}, nil)
}

// SendCtrlAltDel presses Ctrl-Alt-Del on the guest's keyboard. Post-boot
// only.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceAction{ActionType: ActionSendCtrlAltDel}, nil)
}

// FlushMetrics writes one metrics line now. Post-boot only.
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceAction{ActionType: ActionFlushMetrics}, nil)
}

// Pause stops the vCPUs. Post-boot only.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", VMState{State: "Paused"}, nil)
}

// Resume restarts paused vCPUs. Post-boot only.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", VMState{State: "Resumed"}, nil)
}

// Describe returns the instance information (GET /); it is also the
// health check that the API answers.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// do sends one request. A nil body sends none (GET); reply, if not nil,
// receives the JSON reply of a 200.
func (c *Client) do(ctx context.Context, method, path string, body, reply any) error {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return fmt.Errorf("vmm api %s %s: encode body: %w", method, path, err)
		}
	}
	if c.Check != nil {
		if err := c.Check(method, path, raw); err != nil {
			return fmt.Errorf("vmm api %s %s: refused before sending: %w", method, path, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	// bytes.NewReader gives the request a Content-Length; a GET carries
	// none, since Firecracker refuses a GET with a body.
	if body == nil {
		req.Body, req.ContentLength = nil, 0
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("vmm api %s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: faultMessage(data)}
	}
	if c.CheckReply != nil && len(data) > 0 {
		if err := c.CheckReply(method, path, resp.StatusCode, data); err != nil {
			return fmt.Errorf("vmm api %s %s: reply refused: %w", method, path, err)
		}
	}
	if reply != nil {
		if err := json.Unmarshal(data, reply); err != nil {
			return fmt.Errorf("vmm api %s %s: decode reply: %w", method, path, err)
		}
	}
	return nil
}

// faultMessage extracts fault_message from an error reply, falling back
// to the raw body.
func faultMessage(data []byte) string {
	var e struct {
		FaultMessage string `json:"fault_message"`
	}
	if err := json.Unmarshal(data, &e); err == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "(empty reply)"
	}
	return s
}
