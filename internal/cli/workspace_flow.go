package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/workspace"
)

// The workspace flows, out of the cobra handlers: each takes the small
// part of the API client it uses, the runner for host commands (git, as
// the user), and writers for its progress, so tests run them against a
// fake daemon and real git.

// prepareClient is what the prepare flow asks of the daemon.
type prepareClient interface {
	GetVM(ctx context.Context, ref string) (api.VMView, error)
	PrepareWorkspace(ctx context.Context, ref string, req api.WorkspacePrepareRequest, body func(io.Writer) error, progress func(api.Event)) (model.Workspace, error)
}

// prepareOptions are `workspace prepare`'s arguments and flags.
type prepareOptions struct {
	VM string
	// Dir is the repository (any directory in it).
	Dir       string
	Mode      model.WorkspacePrepareMode
	Branch    string
	GuestPath string
	Force     bool
	// Quiet prints warnings only.
	Quiet bool
}

// prepareWorkspace is `banger workspace prepare`: the flags are checked,
// the repository is inspected and read with the caller's rights, and its
// tar stream is sent to the daemon, which unpacks it in the guest.
// Progress and warnings go to progress.
func prepareWorkspace(ctx context.Context, c prepareClient, r hostexec.Runner, o prepareOptions, progress io.Writer) (model.Workspace, error) {
	if err := o.Mode.Validate(); err != nil {
		return model.Workspace{}, &usageError{err: fmt.Errorf("--%w", err)}
	}
	if o.Branch != "" {
		if err := workspace.CheckBranchWithGit(ctx, r, o.Branch); err != nil {
			return model.Workspace{}, err
		}
	}
	if o.GuestPath != "" {
		if _, err := workspace.GuestPath(o.GuestPath, "x"); err != nil {
			return model.Workspace{}, err
		}
	}
	vm, err := c.GetVM(ctx, o.VM)
	if err != nil {
		return model.Workspace{}, err
	}
	// A suspended VM is resumed by the daemon first.
	if vm.State != model.VMStateRunning && vm.State != model.VMStateSuspended {
		return model.Workspace{}, model.Errorf(model.ECONFLICT, "vm %s is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	branch := o.Branch
	if branch == "" {
		branch = workspace.DefaultBranch(vm.Name)
	}
	repo, err := workspace.Inspect(ctx, r, o.Dir)
	if err != nil {
		return model.Workspace{}, err
	}
	if err := workspace.CheckMode(repo, o.Mode); err != nil {
		return model.Workspace{}, err
	}
	gp, err := workspace.GuestPath(o.GuestPath, repo.Name)
	if err != nil {
		return model.Workspace{}, err
	}
	out := &lockedWriter{w: progress}
	pp := &progressPrinter{w: out, quiet: o.Quiet}
	// Events come from the daemon's stream while this goroutine uploads.
	var ppMu sync.Mutex
	event := func(ev api.Event) {
		ppMu.Lock()
		defer ppMu.Unlock()
		pp.event(ev)
	}
	note := func(msg string, warning bool) {
		event(api.Event{Type: api.EventProgress, Progress: &api.Progress{Step: "prepare", Message: msg, Warning: warning}})
	}
	req := api.WorkspacePrepareRequest{
		Mode: o.Mode, Branch: branch, GuestPath: gp, SourcePath: repo.Source, RepoRoot: repo.Root, RepoName: repo.Name,
		HeadCommit: repo.Head, CurrentBranch: repo.Branch, UserName: repo.UserName, UserEmail: repo.UserEmail, Force: o.Force,
	}
	var body func(io.Writer) error
	if o.Mode.Ships() {
		st, err := workspace.WorkTreeStatus(ctx, r, repo.Root)
		if err != nil {
			return model.Workspace{}, err
		}
		wt, err := workspace.ListWorkTree(ctx, r, repo.Root, o.Mode == model.WorkspacePrepareModeFullCopy)
		if err != nil {
			return model.Workspace{}, err
		}
		for _, n := range wt.Nested {
			note(fmt.Sprintf("%s is a repository of its own inside this one; not copied", n), true)
		}
		stream := workspace.RepoStream{Root: repo.Root, Paths: wt.Paths, GitDir: repo.GitDir}
		if o.Mode == model.WorkspacePrepareModeShallowOverlay {
			tmp, err := os.MkdirTemp("", "banger-shallow-")
			if err != nil {
				return model.Workspace{}, err
			}
			defer os.RemoveAll(tmp)
			clone := filepath.Join(tmp, "repo")
			note(fmt.Sprintf("cloning %s at depth 1", shortCommit(repo.Head)), false)
			if err := workspace.ShallowClone(ctx, r, repo.Root, repo.Head, clone); err != nil {
				return model.Workspace{}, err
			}
			stream.GitDir = filepath.Join(clone, ".git")
		}
		note(fmt.Sprintf("%s at %s (%s): %d working tree paths, %s", repo.Root, shortCommit(repo.Head), orDetached(repo.Branch), len(wt.Paths), st), false)
		body = func(w io.Writer) error {
			var c workspace.Counter
			stop := uploadProgress(out, &c, o.Quiet)
			err := workspace.WriteRepo(ctx, w, stream, &c, func(s string) { note(s, true) })
			stop()
			return err
		}
	}
	return c.PrepareWorkspace(ctx, vm.Name, req, body, event)
}

// fetchClient is what the fetch flow asks of the daemon.
type fetchClient interface {
	GetVM(ctx context.Context, ref string) (api.VMView, error)
	ListWorkspaces(ctx context.Context) ([]model.Workspace, error)
	GetWorkspace(ctx context.Context, ref, guestPath string) (model.Workspace, error)
	CaptureWorkspace(ctx context.Context, ref, guestPath string, progress func(api.Event)) (model.Workspace, error)
	DownloadWorkspaceBundle(ctx context.Context, ref, guestPath string, w io.Writer) (int64, error)
	MarkWorkspaceFetched(ctx context.Context, ref string, req api.WorkspaceFetchedRequest) (model.Workspace, error)
}

// fetchResult is what one workspace's fetch brought in (and
// `workspace fetch --json`'s output, one object per workspace).
type fetchResult struct {
	Workspace model.Workspace       `json:"workspace"`
	Refs      []workspace.RefUpdate `json:"refs"`
	// Commits is how many commits the work branch has on top of the base.
	Commits int `json:"commits"`
}

// fetchWorkspaces is `banger workspace fetch`: the VM's workspace at
// guestPath, or (guestPath empty) every workspace of the VM that put a
// repository in the guest, each brought into the repository it came
// from. A workspace that fails does not stop the others; the results of
// those fetched come back with the errors of the others, joined.
// Progress events go to progress, warnings to warn.
func fetchWorkspaces(ctx context.Context, c fetchClient, r hostexec.Runner, vmRef, guestPath string, progress func(api.Event), warn io.Writer) ([]fetchResult, error) {
	var todo []model.Workspace
	if guestPath != "" {
		ws, err := c.GetWorkspace(ctx, vmRef, guestPath)
		if err != nil {
			return nil, err
		}
		if !ws.Mode.Ships() {
			return nil, model.Errorf(model.EINVALID, "the workspace at %s was prepared metadata_only: there is nothing in the guest to fetch", ws.GuestPath)
		}
		todo = append(todo, ws)
	} else {
		vm, err := c.GetVM(ctx, vmRef)
		if err != nil {
			return nil, err
		}
		all, err := c.ListWorkspaces(ctx)
		if err != nil {
			return nil, err
		}
		found := 0
		for _, ws := range all {
			if ws.VMID != vm.ID {
				continue
			}
			found++
			if ws.Mode.Ships() {
				todo = append(todo, ws)
			}
		}
		switch {
		case found == 0:
			return nil, model.Errorf(model.ENOTFOUND, "vm %s has no workspace; prepare one with `banger workspace prepare %s`", vm.Name, vm.Name)
		case len(todo) == 0:
			return nil, model.Errorf(model.EINVALID, "vm %s's workspaces were prepared metadata_only: there is nothing in the guest to fetch", vm.Name)
		}
	}
	var (
		results []fetchResult
		errs    []error
	)
	for _, ws := range todo {
		res, err := fetchWorkspace(ctx, c, r, ws, progress, warn)
		if err != nil {
			if len(todo) > 1 {
				err = fmt.Errorf("fetch %s: %w", ws.GuestPath, err)
			}
			errs = append(errs, err)
			continue
		}
		results = append(results, res)
	}
	return results, errors.Join(errs...)
}

// fetchWorkspace fetches one workspace: the daemon captures the guest's
// work (a stopped VM's last capture is used as is), the bundle comes
// down, and workspace.ImportBundle checks it and writes the work into
// banger's remote-tracking refs only.
func fetchWorkspace(ctx context.Context, c fetchClient, r hostexec.Runner, ws model.Workspace, progress func(api.Event), warn io.Writer) (fetchResult, error) {
	if err := workspace.CheckReadableDir(ws.RepoRoot); err != nil {
		return fetchResult{}, fmt.Errorf("the repository this workspace came from: %w", err)
	}
	if !workspace.HasCommit(ctx, r, ws.RepoRoot, ws.BaseCommit) {
		return fetchResult{}, model.Errorf(model.ECONFLICT, "%s does not have the commit the workspace was prepared from (%s); was it moved, rewritten or garbage-collected?", ws.RepoRoot, shortCommit(ws.BaseCommit))
	}
	if err := workspace.ValidateBranch(ws.BranchName); err != nil {
		return fetchResult{}, fmt.Errorf("the daemon's record of %s: %w", ws.GuestPath, err)
	}
	ws, err := c.CaptureWorkspace(ctx, ws.VMName, ws.GuestPath, progress)
	if err != nil {
		return fetchResult{}, err
	}
	cp := ws.Capture
	if cp.Error != "" {
		fmt.Fprintf(warn, "warning: the last capture of %s failed (%s); fetching the one from %s\n", ws.GuestPath, cp.Error, cp.At.Local().Format("15:04:05"))
	}
	bundle := ""
	if cp.BundleBytes > 0 {
		f, err := os.CreateTemp("", "banger-fetch-*.bundle")
		if err != nil {
			return fetchResult{}, err
		}
		defer os.Remove(f.Name())
		_, err = c.DownloadWorkspaceBundle(ctx, ws.VMName, ws.GuestPath, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fetchResult{}, err
		}
		bundle = f.Name()
	}
	updates := workspace.FetchRefs(ws.VMName, ws.BranchName, cp.Head, cp.WIP)
	if err := workspace.ImportBundle(ctx, r, ws.RepoRoot, bundle, updates); err != nil {
		return fetchResult{}, err
	}
	n, err := workspace.CountCommits(ctx, r, ws.RepoRoot, ws.BaseCommit, cp.Head)
	if err != nil {
		return fetchResult{}, err
	}
	ws, err = c.MarkWorkspaceFetched(ctx, ws.VMName, api.WorkspaceFetchedRequest{GuestPath: ws.GuestPath, Head: cp.Head, WIP: cp.WIP})
	if err != nil {
		return fetchResult{}, err
	}
	return fetchResult{Workspace: ws, Refs: updates, Commits: n}, nil
}
