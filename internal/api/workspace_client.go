package api

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"banger/internal/model"
)

func vmPath(ref, suffix string) string { return "/vms/" + url.PathEscape(ref) + suffix }

func guestPathQuery(gp string) string {
	if gp == "" {
		return ""
	}
	return "?" + url.Values{"guest_path": {gp}}.Encode()
}

// PrepareWorkspace prepares a repository in a VM: body writes its tar
// stream (not called for metadata_only, or when the daemon refuses).
func (c *Client) PrepareWorkspace(ctx context.Context, ref string, req WorkspacePrepareRequest, body func(io.Writer) error, progress func(Event)) (model.Workspace, error) {
	var v model.Workspace
	return v, c.upload(ctx, vmPath(ref, "/workspace")+"?"+req.Query().Encode(), body, &v, progress)
}

// ListWorkspaces lists the caller's workspaces.
func (c *Client) ListWorkspaces(ctx context.Context) ([]model.Workspace, error) {
	var v []model.Workspace
	return v, c.call(ctx, "GET", "/workspaces", nil, &v)
}

// GetWorkspace returns a VM's workspace at guestPath (its only one when
// empty).
func (c *Client) GetWorkspace(ctx context.Context, ref, guestPath string) (model.Workspace, error) {
	var v model.Workspace
	return v, c.call(ctx, "GET", vmPath(ref, "/workspace")+guestPathQuery(guestPath), nil, &v)
}

// CaptureWorkspace has the daemon capture a running VM's work (a stopped
// VM's last capture comes back as is).
func (c *Client) CaptureWorkspace(ctx context.Context, ref, guestPath string, progress func(Event)) (model.Workspace, error) {
	var v model.Workspace
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
func (c *Client) MarkWorkspaceFetched(ctx context.Context, ref string, req WorkspaceFetchedRequest) (model.Workspace, error) {
	var v model.Workspace
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
