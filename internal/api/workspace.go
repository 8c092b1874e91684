package api

import (
	"context"
	"io"
	"net/url"

	"banger/internal/model"
)

// The workspace part of the API: its backend, request types (the
// workspace itself is model.Workspace), the server's handlers
// (workspace_server.go) and the client's calls (workspace_client.go).
// Preparing a workspace and file sync are uploads (upload.go).

// WorkspaceBackend is the part of the Backend that carries repositories
// and files into VMs and work back out.
type WorkspaceBackend interface {
	// PrepareWorkspace checks req, then calls open to receive the
	// repository's tar stream (not for metadata_only) and unpacks it in
	// the guest. Errors before open reach the client as a plain reply.
	// Returns ENOTFOUND for a VM the caller does not have, EINVALID for
	// a bad request or upload, ECONFLICT for a VM that is not running, a
	// work branch another workspace of the repository uses, or a guest
	// path that holds something else or unfetched work (without Force),
	// EUNAVAILABLE when the guest has no git or does not answer.
	PrepareWorkspace(ctx context.Context, ref string, req WorkspacePrepareRequest, open OpenFunc, progress ProgressFunc) (model.Workspace, error)
	// ListWorkspaces returns the workspaces of the caller's VMs.
	ListWorkspaces(ctx context.Context) ([]model.Workspace, error)
	// GetWorkspace returns a VM's workspace at guestPath, or its only
	// one when guestPath is empty. Returns ENOTFOUND for an unknown VM or
	// workspace, EINVALID for a bad guest path or, without one, a VM
	// with several workspaces.
	GetWorkspace(ctx context.Context, ref, guestPath string) (model.Workspace, error)
	// CaptureWorkspace captures a running VM's work now (a stopped VM's
	// last capture is returned as is). Returns GetWorkspace's codes,
	// EINVALID for a metadata_only workspace, ECONFLICT for a stopped VM
	// whose work was never captured, EUNAVAILABLE when the guest does not
	// answer.
	CaptureWorkspace(ctx context.Context, ref, guestPath string, progress ProgressFunc) (model.Workspace, error)
	// OpenWorkspaceBundle opens the last capture's bundle and returns its
	// size. Returns GetWorkspace's codes, and ENOTFOUND when the last
	// capture needed no bundle.
	OpenWorkspaceBundle(ctx context.Context, ref, guestPath string) (io.ReadCloser, int64, error)
	// MarkWorkspaceFetched records what the user brought into the host
	// repository. Returns GetWorkspace's codes, and EINVALID for a commit
	// that is not a full object name.
	MarkWorkspaceFetched(ctx context.Context, ref string, req WorkspaceFetchedRequest) (model.Workspace, error)
	// WorkspaceGit writes git's diff or log of the guest's work to w.
	// Returns GetWorkspace's codes, EINVALID for a metadata_only
	// workspace, ECONFLICT for a VM that is not running, EUNAVAILABLE
	// when the guest does not answer.
	WorkspaceGit(ctx context.Context, ref string, req WorkspaceGitRequest, w io.Writer) error

	// FileSyncEntries returns the configured file sync entries.
	FileSyncEntries(ctx context.Context) ([]model.FileSyncEntry, error)
	// UploadFileSync calls open to receive a VM's file sync tar, checks
	// and keeps it until the VM's first boot. Returns ENOTFOUND for a VM
	// the caller does not have, ECONFLICT for a running VM, EINVALID for
	// an archive with an escaping or unsupported entry or larger than
	// the VM's work disk.
	UploadFileSync(ctx context.Context, ref string, open OpenFunc) (FileSyncUpload, error)
}

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
