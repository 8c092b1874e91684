package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"banger/internal/model"
)

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
		v = []model.Workspace{}
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
