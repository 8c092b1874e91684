package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"banger/internal/model"
)

// WorkspaceBackend is the part of the Backend that carries repositories
// and files into VMs and work back out.
type WorkspaceBackend interface {
	// PrepareWorkspace checks req, then calls open to receive the
	// repository's tar stream (not for metadata_only) and unpacks it in
	// the guest. Errors before open reach the client as a plain reply.
	PrepareWorkspace(ctx context.Context, ref string, req WorkspacePrepareRequest, open OpenFunc, progress ProgressFunc) (Workspace, error)
	ListWorkspaces(ctx context.Context) ([]Workspace, error)
	// GetWorkspace returns a VM's workspace at guestPath, or its only
	// one when guestPath is empty.
	GetWorkspace(ctx context.Context, ref, guestPath string) (Workspace, error)
	// CaptureWorkspace captures a running VM's work now (a stopped VM's
	// last capture is returned as is).
	CaptureWorkspace(ctx context.Context, ref, guestPath string, progress ProgressFunc) (Workspace, error)
	// OpenWorkspaceBundle opens the last capture's bundle and returns its
	// size.
	OpenWorkspaceBundle(ctx context.Context, ref, guestPath string) (io.ReadCloser, int64, error)
	// MarkWorkspaceFetched records what the user brought into the host
	// repository.
	MarkWorkspaceFetched(ctx context.Context, ref string, req WorkspaceFetchedRequest) (Workspace, error)
	// WorkspaceGit writes git's diff or log of the guest's work to w.
	WorkspaceGit(ctx context.Context, ref string, req WorkspaceGitRequest, w io.Writer) error

	// FileSyncEntries returns the configured file sync entries.
	FileSyncEntries(ctx context.Context) ([]model.FileSyncEntry, error)
	// UploadFileSync calls open to receive a VM's file sync tar, checks
	// and keeps it until the VM's first boot.
	UploadFileSync(ctx context.Context, ref string, open OpenFunc) (FileSyncUpload, error)
}

// OpenFunc switches the request to an upgraded stream and returns the
// client's payload. Its reader ends with io.EOF only when the client
// marked the end; a client that went away gives io.ErrUnexpectedEOF.
type OpenFunc func() (io.Reader, error)

// WorkspacePrepareRequest asks to prepare a repository in a VM. The CLI
// inspects the repository and fills in what it found; the daemon never
// reads it.
type WorkspacePrepareRequest struct {
	Mode          model.WorkspacePrepareMode `json:"mode"`
	Branch        string                     `json:"branch"`
	GuestPath     string                     `json:"guest_path"`
	SourcePath    string                     `json:"source_path"`
	RepoRoot      string                     `json:"repo_root"`
	RepoName      string                     `json:"repo_name"`
	HeadCommit    string                     `json:"head_commit"`
	CurrentBranch string                     `json:"current_branch,omitempty"`
	// UserName and UserEmail become the guest repository's identity.
	UserName  string `json:"user_name,omitempty"`
	UserEmail string `json:"user_email,omitempty"`
	// Force replaces what is at the guest path, including a workspace
	// with unfetched work.
	Force bool `json:"force,omitempty"`
}

// Query encodes r as URL query parameters: an upgraded request carries no
// body of its own.
func (r WorkspacePrepareRequest) Query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("mode", string(r.Mode))
	set("branch", r.Branch)
	set("guest_path", r.GuestPath)
	set("source_path", r.SourcePath)
	set("repo_root", r.RepoRoot)
	set("repo_name", r.RepoName)
	set("head_commit", r.HeadCommit)
	set("current_branch", r.CurrentBranch)
	set("user_name", r.UserName)
	set("user_email", r.UserEmail)
	if r.Force {
		q.Set("force", "1")
	}
	return q
}

// ParseWorkspacePrepareRequest decodes Query's output; unknown parameters
// are refused.
func ParseWorkspacePrepareRequest(q url.Values) (WorkspacePrepareRequest, error) {
	var r WorkspacePrepareRequest
	fields := map[string]*string{
		"branch": &r.Branch, "guest_path": &r.GuestPath, "source_path": &r.SourcePath, "repo_root": &r.RepoRoot,
		"repo_name": &r.RepoName, "head_commit": &r.HeadCommit, "current_branch": &r.CurrentBranch,
		"user_name": &r.UserName, "user_email": &r.UserEmail,
	}
	for k, vs := range q {
		if len(vs) != 1 {
			return r, model.Errorf(model.EINVALID, "parameter %q given %d times", k, len(vs))
		}
		switch k {
		case "mode":
			r.Mode = model.WorkspacePrepareMode(vs[0])
		case "force":
			r.Force = vs[0] == "1"
		default:
			p, ok := fields[k]
			if !ok {
				return r, model.Errorf(model.EINVALID, "unknown parameter %q", k)
			}
			*p = vs[0]
		}
	}
	return r, nil
}

// Workspace is a prepared workspace as the API shows it.
type Workspace struct {
	model.WorkspacePrepareResult
	VMName  string        `json:"vm_name"`
	VMState model.VMState `json:"vm_state"`
	// RemoteRef and WIPRef are where `banger workspace fetch` puts the
	// work branch and the uncommitted work in the host repository.
	RemoteRef string `json:"remote_ref,omitempty"`
	WIPRef    string `json:"wip_ref,omitempty"`
	// Capture is the daemon's last look at the guest's work.
	Capture *WorkspaceCapture `json:"capture,omitempty"`
	// Fetched is what the user last brought into the host repository.
	Fetched *WorkspaceFetched `json:"fetched,omitempty"`
	// Unfetched says the last capture holds work not fetched yet.
	Unfetched bool `json:"unfetched"`
}

// WorkspaceCapture is a capture of the guest's work.
type WorkspaceCapture struct {
	At          time.Time `json:"at"`
	Head        string    `json:"head,omitempty"`
	WIP         string    `json:"wip,omitempty"`
	BundleBytes int64     `json:"bundle_bytes,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// WorkspaceFetched is what a fetch brought into the host repository.
type WorkspaceFetched struct {
	At   time.Time `json:"at"`
	Head string    `json:"head,omitempty"`
	WIP  string    `json:"wip,omitempty"`
}

// WorkspaceFetchedRequest tells the daemon what a fetch brought in.
type WorkspaceFetchedRequest struct {
	GuestPath string `json:"guest_path"`
	Head      string `json:"head"`
	WIP       string `json:"wip,omitempty"`
}

// WorkspaceGitRequest asks for git's view of the guest's work.
type WorkspaceGitRequest struct {
	// Kind is "diff" or "log".
	Kind      string
	GuestPath string
	Stat      bool
	Oneline   bool
	Color     bool
}

// FileSyncUpload is what the daemon kept of a file sync upload.
type FileSyncUpload struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

// upgradeProto names banger's upgraded streams.
const upgradeProto = "banger-stream"

func (s *Server) workspaceRoutes(mux *http.ServeMux) {
	p := Prefix
	mux.HandleFunc("GET "+p+"/workspaces", s.handleListWorkspaces)
	mux.HandleFunc("POST "+p+"/vms/{ref}/workspace", s.handlePrepareWorkspace)
	mux.HandleFunc("GET "+p+"/vms/{ref}/workspace", s.handleGetWorkspace)
	mux.HandleFunc("POST "+p+"/vms/{ref}/workspace/capture", s.handleCaptureWorkspace)
	mux.HandleFunc("GET "+p+"/vms/{ref}/workspace/bundle", s.handleWorkspaceBundle)
	mux.HandleFunc("POST "+p+"/vms/{ref}/workspace/fetched", s.handleWorkspaceFetched)
	mux.HandleFunc("GET "+p+"/vms/{ref}/workspace/diff", s.handleWorkspaceGit("diff"))
	mux.HandleFunc("GET "+p+"/vms/{ref}/workspace/log", s.handleWorkspaceGit("log"))
	mux.HandleFunc("GET "+p+"/file-sync", s.handleFileSyncEntries)
	mux.HandleFunc("POST "+p+"/vms/{ref}/file-sync", s.handleUploadFileSync)
}

func (s *Server) handleListWorkspaces(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.ListWorkspaces(r.Context())
	if v == nil {
		v = []Workspace{}
	}
	reply(w, v, err)
}

func (s *Server) handleGetWorkspace(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.GetWorkspace(r.Context(), r.PathValue("ref"), r.URL.Query().Get("guest_path"))
	reply(w, v, err)
}

func (s *Server) handlePrepareWorkspace(w http.ResponseWriter, r *http.Request) {
	req, err := ParseWorkspacePrepareRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	ref := r.PathValue("ref")
	s.serveUpload(w, r, func(ctx context.Context, open OpenFunc, p ProgressFunc) (any, error) {
		return s.backend.PrepareWorkspace(ctx, ref, req, open, p)
	})
}

func (s *Server) handleCaptureWorkspace(w http.ResponseWriter, r *http.Request) {
	ref, gp := r.PathValue("ref"), r.URL.Query().Get("guest_path")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.CaptureWorkspace(ctx, ref, gp, p)
	})
}

func (s *Server) handleWorkspaceBundle(w http.ResponseWriter, r *http.Request) {
	rc, size, err := s.backend.OpenWorkspaceBundle(r.Context(), r.PathValue("ref"), r.URL.Query().Get("guest_path"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil && r.Context().Err() == nil {
		s.logger.Debug("bundle download ended", "err", err)
	}
}

func (s *Server) handleWorkspaceFetched(w http.ResponseWriter, r *http.Request) {
	var req WorkspaceFetchedRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.backend.MarkWorkspaceFetched(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (s *Server) handleWorkspaceGit(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		req := WorkspaceGitRequest{Kind: kind, GuestPath: q.Get("guest_path"), Stat: q.Get("stat") == "1", Oneline: q.Get("oneline") == "1", Color: q.Get("color") == "1"}
		lw := &lazyWriter{w: w}
		err := s.backend.WorkspaceGit(r.Context(), r.PathValue("ref"), req, lw)
		switch {
		case err == nil:
			if !lw.started {
				w.WriteHeader(http.StatusOK)
			}
		case !lw.started:
			writeError(w, err)
		default:
			// The status is gone; say so at the end of the text.
			fmt.Fprintf(lw, "\nbanger: %s failed: %v\n", kind, err)
		}
	}
}

// lazyWriter commits a 200 text response on the first write, so an error
// before any output can still be a proper error response.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		l.w.WriteHeader(http.StatusOK)
		l.started = true
	}
	n, err := l.w.Write(p)
	if f, ok := l.w.(http.Flusher); ok {
		f.Flush()
	}
	return n, err
}

func (s *Server) handleFileSyncEntries(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.FileSyncEntries(r.Context())
	if v == nil {
		v = []model.FileSyncEntry{}
	}
	reply(w, v, err)
}

func (s *Server) handleUploadFileSync(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	s.serveUpload(w, r, func(ctx context.Context, open OpenFunc, _ ProgressFunc) (any, error) {
		return s.backend.UploadFileSync(ctx, ref, open)
	})
}

// serveUpload runs op, which may call open to take over the connection
// (101 Switching Protocols) and read the client's framed payload. Until
// open, the reply is plain HTTP (an error, or a result that needed no
// payload); after it, progress and then the result or error go back as
// NDJSON events on the same connection while the payload arrives.
func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request, op func(context.Context, OpenFunc, ProgressFunc) (any, error)) {
	start := time.Now()
	var (
		mu   sync.Mutex
		conn net.Conn
		bw   *bufio.Writer
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
		if conn != nil {
			return nil, errors.New("upload: stream opened twice")
		}
		if r.Header.Get("Upgrade") != upgradeProto {
			return nil, model.Errorf(model.EINVALID, "%s %s carries a stream: send it with `Connection: Upgrade` and `Upgrade: %s` (the banger CLI does)", r.Method, r.URL.Path, upgradeProto)
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			return nil, errors.New("upload: connection cannot be hijacked")
		}
		c, rw, err := hj.Hijack()
		if err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		s.wg.Add(1)
		conn, bw = c, rw.Writer
		if _, err := bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgradeProto + "\r\nConnection: Upgrade\r\n\r\n"); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		return &frameReader{r: &idleReader{conn: c, r: rw.Reader, timeout: s.access.ReadTimeout}}, nil
	}
	result, err := op(r.Context(), open, func(p Progress) {
		send(Event{Type: EventProgress, Progress: &p})
	})
	mu.Lock()
	upgraded := conn != nil
	mu.Unlock()
	if !upgraded {
		reply(w, result, err)
		return
	}
	defer s.wg.Done()
	defer conn.Close()
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

// maxFrame bounds one frame of an upload.
const maxFrame = 4 << 20

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

// upload does a request whose payload is streamed on an upgraded
// connection: body writes the payload while the daemon's progress events
// arrive; the final result is decoded into out. A daemon that answers
// without upgrading (an error, or a result that needs no payload) is read
// like a plain reply, and body is not called.
func (c *Client) upload(ctx context.Context, path string, body func(io.Writer) error, out any, progress func(Event)) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return c.unreachable(err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req := "POST " + Prefix + path + " HTTP/1.1\r\nHost: bangerd\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode >= 300 {
			return errorFromBody(resp.StatusCode, data)
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("decode reply to POST %s: %w", path, err)
			}
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- readEvents(br, "POST", path, out, progress) }()

	ew := &errWriter{w: conn}
	fw := &frameWriter{w: ew}
	bw := bufio.NewWriterSize(fw, 1<<20)
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

func vmPath(ref, suffix string) string { return "/vms/" + url.PathEscape(ref) + suffix }

func guestPathQuery(gp string) string {
	if gp == "" {
		return ""
	}
	return "?" + url.Values{"guest_path": {gp}}.Encode()
}

// PrepareWorkspace prepares a repository in a VM: body writes its tar
// stream (not called for metadata_only, or when the daemon refuses).
func (c *Client) PrepareWorkspace(ctx context.Context, ref string, req WorkspacePrepareRequest, body func(io.Writer) error, progress func(Event)) (Workspace, error) {
	var v Workspace
	return v, c.upload(ctx, vmPath(ref, "/workspace")+"?"+req.Query().Encode(), body, &v, progress)
}

// ListWorkspaces lists the caller's workspaces.
func (c *Client) ListWorkspaces(ctx context.Context) ([]Workspace, error) {
	var v []Workspace
	return v, c.call(ctx, "GET", "/workspaces", nil, &v)
}

// GetWorkspace returns a VM's workspace at guestPath (its only one when
// empty).
func (c *Client) GetWorkspace(ctx context.Context, ref, guestPath string) (Workspace, error) {
	var v Workspace
	return v, c.call(ctx, "GET", vmPath(ref, "/workspace")+guestPathQuery(guestPath), nil, &v)
}

// CaptureWorkspace has the daemon capture a running VM's work (a stopped
// VM's last capture comes back as is).
func (c *Client) CaptureWorkspace(ctx context.Context, ref, guestPath string, progress func(Event)) (Workspace, error) {
	var v Workspace
	return v, c.callStream(ctx, "POST", vmPath(ref, "/workspace/capture")+guestPathQuery(guestPath), nil, &v, progress)
}

// DownloadWorkspaceBundle copies the last capture's bundle to w.
func (c *Client) DownloadWorkspaceBundle(ctx context.Context, ref, guestPath string, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, "GET", vmPath(ref, "/workspace/bundle")+guestPathQuery(guestPath), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(resp.Body)
		return 0, errorFromBody(resp.StatusCode, data)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("download bundle: %w", err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("download bundle: got %d of %d bytes", n, resp.ContentLength)
	}
	return n, nil
}

// MarkWorkspaceFetched tells the daemon what a fetch brought in.
func (c *Client) MarkWorkspaceFetched(ctx context.Context, ref string, req WorkspaceFetchedRequest) (Workspace, error) {
	var v Workspace
	return v, c.call(ctx, "POST", vmPath(ref, "/workspace/fetched"), req, &v)
}

// WorkspaceGit copies git's diff or log of the guest's work to w.
func (c *Client) WorkspaceGit(ctx context.Context, ref string, req WorkspaceGitRequest, w io.Writer) error {
	q := url.Values{}
	if req.GuestPath != "" {
		q.Set("guest_path", req.GuestPath)
	}
	for k, on := range map[string]bool{"stat": req.Stat, "oneline": req.Oneline, "color": req.Color} {
		if on {
			q.Set(k, "1")
		}
	}
	path := vmPath(ref, "/workspace/"+req.Kind)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return c.copyGET(ctx, path, w)
}

// FileSyncEntries returns the daemon's file sync entries.
func (c *Client) FileSyncEntries(ctx context.Context) ([]model.FileSyncEntry, error) {
	var v []model.FileSyncEntry
	return v, c.call(ctx, "GET", "/file-sync", nil, &v)
}

// UploadFileSync sends a VM's file sync tar, which body writes.
func (c *Client) UploadFileSync(ctx context.Context, ref string, body func(io.Writer) error) (FileSyncUpload, error) {
	var v FileSyncUpload
	return v, c.upload(ctx, vmPath(ref, "/file-sync"), body, &v, nil)
}
