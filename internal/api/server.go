package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"banger/internal/model"
)

// maxBody bounds request bodies; the API takes small JSON documents only.
const maxBody = 1 << 20

// Server serves a Backend over HTTP on a unix socket.
type Server struct {
	backend Backend
	logger  *slog.Logger
	http    *http.Server
	ln      net.Listener
	wg      sync.WaitGroup

	// access says who is an admin and what one uid may hold; groups
	// answers the admin check (the host's group database).
	access Access
	groups groupDB
	admins *adminCache
	// peer reads a connection's credentials (SO_PEERCRED); tests
	// replace it to be another user.
	peer func(net.Conn) (Caller, error)
	// conns and ops count each uid's open connections and operations
	// in flight.
	conns *counter
	ops   *counter
}

// NewServer returns a server for backend, with the default timeouts, no
// admin group and no per-uid limits until Configure says otherwise.
func NewServer(backend Backend, logger *slog.Logger) *Server {
	s := &Server{backend: backend, logger: logger, groups: hostGroups, admins: newAdminCache(), peer: peerCaller, conns: newCounter(), ops: newCounter()}
	s.http = &http.Server{
		Handler:     s.Handler(),
		ConnContext: s.connContext,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	s.Configure(Access{ReadTimeout: defaultReadTimeout, IdleTimeout: defaultIdleTimeout})
	return s
}

// Configure sets the admin group, the timeouts and the per-uid limits.
// Call it before Serve.
func (s *Server) Configure(a Access) {
	if a.ReadTimeout <= 0 {
		a.ReadTimeout = defaultReadTimeout
	}
	if a.IdleTimeout <= 0 {
		a.IdleTimeout = defaultIdleTimeout
	}
	s.access = a
	// A request's headers and body must arrive within ReadTimeout. The
	// deadline ends with the body (net/http clears it when it starts
	// watching for the client going away), so a long operation is not
	// cut short; upgraded streams set their own (idleReader).
	s.http.ReadHeaderTimeout = a.ReadTimeout
	s.http.ReadTimeout = a.ReadTimeout
	s.http.IdleTimeout = a.IdleTimeout
}

// Listen creates the socket at path: any stale socket file is removed, the
// directory is created, and the socket gets mode 0660, owned by root and
// by group (when that group exists).
func (s *Server) Listen(path, group string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	gid := -1
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	if err := os.Chown(path, os.Geteuid(), gid); err != nil {
		ln.Close()
		return fmt.Errorf("listen: chown socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("listen: chmod socket: %w", err)
	}
	s.ln = &listener{Listener: ln, s: s}
	return nil
}

// removeStaleSocket removes a socket file that nothing listens on, and
// refuses if a daemon still answers there.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen: %s exists and is not a socket; remove it or choose another socket_path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return model.Errorf(model.ECONFLICT, "another bangerd is already serving %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("listen: remove stale socket: %w", err)
	}
	return nil
}

// Serve serves until Shutdown. It returns nil after a clean shutdown.
func (s *Server) Serve() error {
	if s.ln == nil {
		return errors.New("serve: Listen first")
	}
	err := s.http.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests and waits for those in flight (and
// hijacked streams) until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return err
}

// Handler returns the HTTP handler with every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	p := Prefix
	mux.HandleFunc("GET "+p+"/version", s.handleVersion)
	mux.HandleFunc("GET "+p+"/doctor", s.handleDoctor)

	mux.HandleFunc("GET "+p+"/images", s.handleListImages)
	mux.HandleFunc("POST "+p+"/images", s.handleRegisterImage)
	mux.HandleFunc("POST "+p+"/images/build", s.handleBuildImage)
	mux.HandleFunc("GET "+p+"/images/{ref}", s.handleGetImage)
	mux.HandleFunc("DELETE "+p+"/images/{ref}", s.handleDeleteImage)
	mux.HandleFunc("POST "+p+"/images/{ref}/warm", s.handleWarmImage)
	mux.HandleFunc("DELETE "+p+"/images/{ref}/warm", s.handleDropWarm)

	mux.HandleFunc("GET "+p+"/kernels", s.handleListKernels)
	mux.HandleFunc("POST "+p+"/kernels/build", s.handleBuildKernel)

	mux.HandleFunc("GET "+p+"/vms", s.handleListVMs)
	mux.HandleFunc("POST "+p+"/vms", s.handleCreateVM)
	mux.HandleFunc("GET "+p+"/vms/{ref}", s.handleGetVM)
	mux.HandleFunc("PATCH "+p+"/vms/{ref}", s.handleSetVM)
	mux.HandleFunc("DELETE "+p+"/vms/{ref}", s.handleDeleteVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/start", s.handleStartVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/stop", s.handleStopVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/kill", s.handleKillVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/suspend", s.handleSuspendVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/fork", s.handleForkVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/restart", s.handleRestartVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/reset-system", s.handleResetSystem)
	mux.HandleFunc("GET "+p+"/vms/{ref}/logs", s.handleLogs)
	mux.HandleFunc("GET "+p+"/vms/{ref}/stats", s.handleStats)
	mux.HandleFunc("POST "+p+"/vms/{ref}/connect", s.handleConnect)
	s.workspaceRoutes(mux)
	s.imageUploadRoutes(mux)
	s.imageImportRoutes(mux)
	s.holdRoutes(mux)
	s.openAPIRoutes(mux)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, model.Errorf(model.ENOTFOUND, "no route %s %s; this daemon serves %s", r.Method, r.URL.Path, Prefix))
	})
	return s.recoverer(s.guard(mux))
}

// recoverer turns a handler panic into a 500 so one bad request never takes
// the daemon down.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.logger.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, fmt.Errorf("internal error: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// decode reads a strict JSON body into v: unknown fields, trailing data
// and oversized bodies are refused.
func decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return model.Errorf(model.EINVALID, "request body: empty; send a JSON object")
		}
		return model.Errorf(model.EINVALID, "request body: %v", err)
	}
	if dec.More() {
		return model.Errorf(model.EINVALID, "request body: trailing data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Version(r.Context()))
}

func (s *Server) handleDoctor(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Doctor(r.Context()))
}

func (s *Server) handleListImages(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.ListImages(r.Context())
	if v == nil {
		v = []model.Image{}
	}
	reply(w, v, err)
}

func (s *Server) handleGetImage(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.GetImage(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (s *Server) handleRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req ImageRegisterRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.backend.RegisterImage(r.Context(), req)
	reply(w, v, err)
}

func (s *Server) handleBuildImage(w http.ResponseWriter, r *http.Request) {
	var req ImageBuildRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.BuildImage(ctx, req, p)
	})
}

func (s *Server) handleDeleteImage(w http.ResponseWriter, r *http.Request) {
	err := s.backend.DeleteImage(r.Context(), r.PathValue("ref"))
	reply(w, struct{}{}, err)
}

func (s *Server) handleListKernels(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.ListKernels(r.Context())
	if v == nil {
		v = []Kernel{}
	}
	reply(w, v, err)
}

func (s *Server) handleBuildKernel(w http.ResponseWriter, r *http.Request) {
	var req KernelBuildRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.BuildKernel(ctx, req, p)
	})
}

// handleListVMs lists the caller's VMs: full views, or with view=brief
// the brief rows a table needs (VMRow).
func (s *Server) handleListVMs(w http.ResponseWriter, r *http.Request) {
	view := r.URL.Query().Get("view")
	if view != "" && view != "brief" {
		writeError(w, model.Errorf(model.EINVALID, "view %q: must be brief, or left out for full views", view))
		return
	}
	v, err := s.backend.ListVMs(r.Context())
	if err != nil || view == "" {
		if v == nil {
			v = []VMView{}
		}
		reply(w, v, err)
		return
	}
	rows := make([]VMRow, len(v))
	for i := range v {
		rows[i] = v[i].Row()
	}
	reply(w, rows, nil)
}

func (s *Server) handleGetVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.GetVM(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (s *Server) handleCreateVM(w http.ResponseWriter, r *http.Request) {
	var req model.VMCreateRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.CreateVM(ctx, req, p)
	})
}

func (s *Server) handleSetVM(w http.ResponseWriter, r *http.Request) {
	var req model.VMSetRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	req.IDOrName = r.PathValue("ref")
	v, err := s.backend.SetVM(r.Context(), req)
	reply(w, v, err)
}

func (s *Server) handleDeleteVM(w http.ResponseWriter, r *http.Request) {
	opts := VMDeleteOptions{Force: r.URL.Query().Get("force") == "1"}
	ref := r.PathValue("ref")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return struct{}{}, s.backend.DeleteVM(ctx, ref, opts, p)
	})
}

func (s *Server) handleStartVM(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.StartVM(ctx, ref, p)
	})
}

func (s *Server) handleStopVM(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.StopVM(ctx, ref, p)
	})
}

func (s *Server) handleKillVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.KillVM(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (s *Server) handleSuspendVM(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.SuspendVM(ctx, ref, p)
	})
}

func (s *Server) handleWarmImage(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	var req ImageWarmRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.WarmImage(ctx, ref, req, p)
	})
}

func (s *Server) handleDropWarm(w http.ResponseWriter, r *http.Request) {
	err := s.backend.DropWarm(r.Context(), r.PathValue("ref"))
	reply(w, struct{}{}, err)
}

func (s *Server) handleForkVM(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	var req model.VMForkRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.ForkVM(ctx, ref, req, p)
	})
}

func (s *Server) handleRestartVM(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
		return s.backend.RestartVM(ctx, ref, p)
	})
}

func (s *Server) handleResetSystem(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.ResetSystem(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	v, err := s.backend.VMStats(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := LogsOptions{Follow: q.Get("follow") == "1"}
	if t := q.Get("tail"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			writeError(w, model.Errorf(model.EINVALID, "tail %q: must be a non-negative number of lines", t))
			return
		}
		opts.Tail = n
	}
	// Check the VM exists and is the caller's before committing to a
	// 200 with a streamed body.
	if _, err := s.backend.GetVM(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fw := &flushWriter{w: w}
	if f, ok := w.(http.Flusher); ok {
		fw.f = f
	}
	if err := s.backend.VMLogs(r.Context(), r.PathValue("ref"), opts, fw); err != nil && r.Context().Err() == nil {
		s.logger.Debug("logs ended", "err", err)
	}
}

// handleConnect turns the HTTP connection into a raw byte stream to a guest
// port: the ssh ProxyCommand of `banger ssh`.
func (s *Server) handleConnect(w http.ResponseWriter, r *http.Request) {
	port := 22
	if p := r.URL.Query().Get("port"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			writeError(w, model.Errorf(model.EINVALID, "port %q: must be 1-65535", p))
			return
		}
		port = n
	}
	guest, err := s.backend.Connect(r.Context(), r.PathValue("ref"), port)
	if err != nil {
		writeError(w, err)
		return
	}
	defer guest.Close()
	conn, rw, release, err := s.upgrade(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer release()
	splice(conn, rw.Reader, guest)
}

// splice copies both ways until either side ends, half-closing where it
// can so ssh sees EOF properly.
func splice(client net.Conn, clientReader *bufio.Reader, guest net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(guest, clientReader)
		if cw, ok := guest.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		io.Copy(client, guest)
		if cw, ok := client.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

type flushWriter struct {
	w io.Writer
	f http.Flusher
}

func (fw *flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if fw.f != nil {
		fw.f.Flush()
	}
	return n, err
}
