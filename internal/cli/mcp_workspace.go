package cli

import (
	"context"
	"fmt"
	"strings"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The workspace tools run the CLI's own flows (prepareWorkspace,
// fetchWorkspaces): the repository is read and written by this process,
// with the user's rights; the daemon never touches it.

const gitOutputCapDefault = 256 << 10

type wsPrepareIn struct {
	VM        string `json:"vm" jsonschema:"the VM's name (or ID); it must be running"`
	Path      string `json:"path,omitempty" jsonschema:"the git repository on the host (any directory in it); relative to the directory banger mcp runs in (default: that directory)"`
	Mode      string `json:"mode,omitempty" jsonschema:"shallow_overlay: HEAD at depth 1 plus the working tree as it is (uncommitted and untracked files, no history); full_copy: the whole repository with its history and index; metadata_only: nothing copied"`
	Branch    string `json:"branch,omitempty" jsonschema:"the work branch created in the guest at the host's HEAD (default banger/<vm>)"`
	GuestPath string `json:"guest_path,omitempty" jsonschema:"where the repository goes in the guest, under /root (default /root/<repository name>)"`
	Force     bool   `json:"force,omitempty" jsonschema:"replace what is at the guest path, even a workspace with work not fetched yet"`
}

type wsOut struct {
	Workspace model.Workspace `json:"workspace"`
	Hint      string          `json:"hint,omitempty" jsonschema:"what to do next"`
}

type wsGitIn struct {
	VM        string `json:"vm" jsonschema:"the VM's name (or ID); it must be running"`
	GuestPath string `json:"guest_path,omitempty" jsonschema:"the workspace's path in the guest (needed only when the VM has several)"`
	Stat      bool   `json:"stat,omitempty" jsonschema:"a diffstat instead of the patch (diff), or added to each commit (log)"`
	MaxBytes  int    `json:"max_bytes,omitempty" jsonschema:"return at most this many bytes of git's output"`
}

type wsLogIn struct {
	VM        string `json:"vm" jsonschema:"the VM's name (or ID); it must be running"`
	GuestPath string `json:"guest_path,omitempty" jsonschema:"the workspace's path in the guest (needed only when the VM has several)"`
	Stat      bool   `json:"stat,omitempty" jsonschema:"add a diffstat to each commit"`
	Oneline   bool   `json:"oneline,omitempty" jsonschema:"one line per commit"`
	MaxBytes  int    `json:"max_bytes,omitempty" jsonschema:"return at most this many bytes of git's output"`
}

type wsGitOut struct {
	Text      string `json:"text" jsonschema:"git's output (from the guest)"`
	Bytes     int64  `json:"bytes" jsonschema:"the size of git's whole output"`
	Truncated bool   `json:"truncated" jsonschema:"the output was longer than max_bytes: its start and end are kept"`
}

type wsFetchIn struct {
	VM        string `json:"vm" jsonschema:"the VM's name (or ID); a stopped VM's work as captured at its stop is fetched"`
	GuestPath string `json:"guest_path,omitempty" jsonschema:"fetch only the workspace at this guest path (default: every workspace of the VM)"`
}

type wsFetchOut struct {
	Fetched  []fetchResult `json:"fetched" jsonschema:"each workspace fetched: its record, the refs written in the host repository and the number of commits on the work branch"`
	Warnings []string      `json:"warnings,omitempty"`
	Hint     string        `json:"hint,omitempty" jsonschema:"how to look at what came back"`
}

// warnings collects the lines a flow warns with.
type warnings struct{ lines []string }

func (w *warnings) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			w.lines = append(w.lines, strings.TrimPrefix(l, "warning: "))
		}
	}
	return len(b), nil
}

func (s *mcpServer) addWorkspaceTools(srv *mcp.Server) {
	no := false
	addTool(srv, &mcp.Tool{
		Name:  "workspace_prepare",
		Title: "Copy a git repository into a VM",
		Description: "Copy a git repository of the host into a running VM, on a work branch created at the host's HEAD (reports progress). " +
			"Work there with exec (cwd: the workspace's guest_path) and commit on the work branch; bring the commits back with workspace_fetch. " +
			"The host repository is read with the user's rights and never changed.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		enum(sc, "mode", string(model.WorkspacePrepareModeShallowOverlay), string(model.WorkspacePrepareModeShallowOverlay), string(model.WorkspacePrepareModeFullCopy), string(model.WorkspacePrepareModeMetadataOnly))
	}, s.workspacePrepare)
	addTool(srv, &mcp.Tool{
		Name:        "workspace_diff",
		Title:       "Show a workspace's changes",
		Description: "Show everything the guest changed in a workspace since it was prepared: commits and uncommitted work, untracked files included, as one patch (or a diffstat).",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "max_bytes", 1024, outputCapMax, gitOutputCapDefault)
	}, func(ctx context.Context, _ *mcp.CallToolRequest, in wsGitIn) (wsGitOut, error) {
		return s.workspaceGit(ctx, in.VM, api.WorkspaceGitRequest{Kind: "diff", GuestPath: in.GuestPath, Stat: in.Stat}, in.MaxBytes)
	})
	addTool(srv, &mcp.Tool{
		Name:        "workspace_log",
		Title:       "Show a workspace's commits",
		Description: "Show the commits made on a workspace's work branch in the guest since it was prepared.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "max_bytes", 1024, outputCapMax, gitOutputCapDefault)
	}, func(ctx context.Context, _ *mcp.CallToolRequest, in wsLogIn) (wsGitOut, error) {
		return s.workspaceGit(ctx, in.VM, api.WorkspaceGitRequest{Kind: "log", GuestPath: in.GuestPath, Stat: in.Stat, Oneline: in.Oneline}, in.MaxBytes)
	})
	addTool(srv, &mcp.Tool{
		Name:  "workspace_fetch",
		Title: "Bring a workspace's work back to the host",
		Description: "Bring a VM's work into the host repository it was prepared from: the work branch as refs/remotes/banger-<vm>/<branch>, " +
			"and uncommitted work as a commit on <branch>-wip. The user's branches, index and working tree are never touched (reports progress).",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, IdempotentHint: true, OpenWorldHint: &no},
	}, nil, s.workspaceFetch)
}

func (s *mcpServer) workspacePrepare(ctx context.Context, req *mcp.CallToolRequest, in wsPrepareIn) (wsOut, error) {
	o := prepareOptions{VM: in.VM, Dir: in.Path, Mode: model.WorkspacePrepareMode(in.Mode), Branch: in.Branch, GuestPath: in.GuestPath, Force: in.Force}
	if o.Dir == "" {
		o.Dir = "."
	}
	if o.Mode == "" {
		o.Mode = model.WorkspacePrepareModeShallowOverlay
	}
	ws, err := prepareWorkspace(ctx, s.client, s.run, o, newProgress(ctx, req))
	if err != nil {
		return wsOut{}, err
	}
	out := wsOut{Workspace: ws}
	if ws.Mode.Ships() {
		out.Hint = fmt.Sprintf("the repository is at %s in vm %s on branch %s; work there with exec (cwd %q), commit with git, then bring the commits back with workspace_fetch", ws.GuestPath, ws.VMName, ws.BranchName, ws.GuestPath)
	}
	return out, nil
}

func (s *mcpServer) workspaceGit(ctx context.Context, vm string, req api.WorkspaceGitRequest, max int) (wsGitOut, error) {
	if max == 0 {
		max = gitOutputCapDefault
	}
	w := &capWriter{max: max}
	if err := s.client.WorkspaceGit(ctx, vm, req, w); err != nil {
		return wsGitOut{}, err
	}
	return wsGitOut{Text: w.text(), Bytes: w.n, Truncated: w.truncated()}, nil
}

func (s *mcpServer) workspaceFetch(ctx context.Context, req *mcp.CallToolRequest, in wsFetchIn) (wsFetchOut, error) {
	var warn warnings
	results, err := fetchWorkspaces(ctx, s.client, s.run, in.VM, in.GuestPath, newProgress(ctx, req).event, &warn)
	if err != nil {
		return wsFetchOut{}, err
	}
	out := wsFetchOut{Fetched: results, Warnings: warn.lines}
	if out.Fetched == nil {
		out.Fetched = []fetchResult{}
	}
	var refs []string
	for _, r := range results {
		if ref := r.Workspace.RemoteRef; ref != "" {
			refs = append(refs, fmt.Sprintf("git -C %s log %s..%s", r.Workspace.RepoRoot, shortCommit(r.Workspace.BaseCommit), strings.TrimPrefix(ref, "refs/remotes/")))
		}
	}
	if len(refs) > 0 {
		out.Hint = "on the host: " + strings.Join(refs, "; ")
	}
	return out, nil
}
