package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/termsafe"
	"banger/internal/workspace"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func (a *App) workspaceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "workspace",
		Aliases: []string{"ws"},
		Short:   "Carry a git repository into a VM, and the work done there back",
		Long: `Carry the git repository you are in, with its uncommitted work, into a VM on a
work branch; work there; bring the commits back for review. The VM never
writes your files: banger reads the repository with your rights and streams
it in, and ` + "`workspace fetch`" + ` imports the guest's work as remote-tracking refs
(refs/remotes/banger-VM/BRANCH), never touching your branches, index or
working tree.`,
		Example: `  banger workspace prepare dev            # the repo in ., shallow, on banger/dev
  banger exec dev -- git -C /root/myrepo commit -am 'fix'
  banger workspace fetch dev
  git log main..banger-dev/banger/dev`,
	}
	cmd.AddCommand(a.wsPrepareCommand(), a.wsFetchCommand(), a.wsGitCommand("diff"), a.wsGitCommand("log"), a.wsLsCommand(), a.wsInspectCommand())
	return cmd
}

// lockedWriter serialises writes from the progress ticker and the
// daemon's progress events.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// uploadProgress prints files, bytes and rate every second until stopped,
// then a final line.
func uploadProgress(w io.Writer, c *workspace.Counter, quiet bool) (stop func()) {
	start := time.Now()
	line := func(final bool) {
		el := time.Since(start)
		rate := float64(c.Bytes()) / el.Seconds()
		verb := "sending"
		if final {
			verb = "sent"
		}
		fmt.Fprintf(w, "[%6.1fs] upload: %s %d files, %s (%s/s)\n", el.Seconds(), verb, c.Files(), humanBytes(c.Bytes()), humanBytes(int64(rate)))
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if !quiet {
					line(false)
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if !quiet {
			line(true)
		}
	}
}

func (a *App) wsPrepareCommand() *cobra.Command {
	var (
		mode, branch, guestPath string
		force, asJSON, quiet    bool
	)
	cmd := &cobra.Command{
		Use:   "prepare VM [PATH]",
		Short: "Put a git repository (default: the one in .) into a running VM on a work branch",
		Long: `Put a git repository into a running VM, on a work branch created at your HEAD.

Modes:
  shallow_overlay  HEAD at depth 1 plus your working tree as it is on disk
                   (modified, staged and untracked files; deleted files stay
                   deleted); every change shows as unstaged in the guest
  full_copy        the whole repository: all history, your index (staged
                   stays staged), the working tree; checked-out submodules too
  metadata_only    nothing is copied; only the record (head, branch, base)

Ignored files are never copied; symlinks are copied as links, never followed.
Repositories using Git LFS are refused (except metadata_only); submodules need
full_copy. Your repository's user.name and user.email are set in the guest
copy. The guest path defaults to /root/<repository name>; preparing the same
path again replaces it (refused while it holds unfetched work, unless --force).`,
		Example: `  banger workspace prepare dev
  banger workspace prepare dev ~/src/app --mode full_copy --branch try-fix
  banger workspace prepare dev . --guest-path /srv/app`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("workspace prepare needs a VM and optionally a PATH (usage: %s)", cmd.UseLine())
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			dir := "."
			if len(args) == 2 {
				dir = args[1]
			}
			m := model.WorkspacePrepareMode(mode)
			switch m {
			case model.WorkspacePrepareModeShallowOverlay, model.WorkspacePrepareModeFullCopy, model.WorkspacePrepareModeMetadataOnly:
			default:
				return usagef("--mode %q: use shallow_overlay, full_copy or metadata_only", mode)
			}
			r := hostexec.Real{}
			if branch != "" {
				if err := workspace.CheckBranchWithGit(ctx, r, branch); err != nil {
					return err
				}
			}
			if guestPath != "" {
				if _, err := workspace.GuestPath(guestPath, "x"); err != nil {
					return err
				}
			}
			vm, err := a.api().GetVM(ctx, args[0])
			if err != nil {
				return err
			}
			// A suspended VM is resumed by the daemon first.
			if vm.State != model.VMStateRunning && vm.State != model.VMStateSuspended {
				return model.Errorf(model.ECONFLICT, "vm %s is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
			}
			if branch == "" {
				branch = workspace.DefaultBranch(vm.Name)
			}
			repo, err := workspace.Inspect(ctx, r, dir)
			if err != nil {
				return err
			}
			if err := workspace.CheckMode(repo, m); err != nil {
				return err
			}
			gp, err := workspace.GuestPath(guestPath, repo.Name)
			if err != nil {
				return err
			}
			out := &lockedWriter{w: a.Stderr}
			pp := &progressPrinter{w: out, quiet: quiet || asJSON}
			// Events come from the daemon's stream while this goroutine
			// uploads.
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
				Mode: m, Branch: branch, GuestPath: gp, SourcePath: repo.Source, RepoRoot: repo.Root, RepoName: repo.Name,
				HeadCommit: repo.Head, CurrentBranch: repo.Branch, UserName: repo.UserName, UserEmail: repo.UserEmail, Force: force,
			}
			var body func(io.Writer) error
			if m != model.WorkspacePrepareModeMetadataOnly {
				st, err := workspace.WorkTreeStatus(ctx, r, repo.Root)
				if err != nil {
					return err
				}
				wt, err := workspace.ListWorkTree(ctx, r, repo.Root, m == model.WorkspacePrepareModeFullCopy)
				if err != nil {
					return err
				}
				for _, n := range wt.Nested {
					note(fmt.Sprintf("%s is a repository of its own inside this one; not copied", n), true)
				}
				stream := workspace.RepoStream{Root: repo.Root, Paths: wt.Paths, GitDir: repo.GitDir}
				if m == model.WorkspacePrepareModeShallowOverlay {
					tmp, err := os.MkdirTemp("", "banger-shallow-")
					if err != nil {
						return err
					}
					defer os.RemoveAll(tmp)
					clone := filepath.Join(tmp, "repo")
					note(fmt.Sprintf("cloning %s at depth 1", shortCommit(repo.Head)), false)
					if err := workspace.ShallowClone(ctx, r, repo.Root, repo.Head, clone); err != nil {
						return err
					}
					stream.GitDir = filepath.Join(clone, ".git")
				}
				note(fmt.Sprintf("%s at %s (%s): %d working tree paths, %s", repo.Root, shortCommit(repo.Head), orDetached(repo.Branch), len(wt.Paths), st), false)
				body = func(w io.Writer) error {
					var c workspace.Counter
					stop := uploadProgress(out, &c, quiet || asJSON)
					err := workspace.WriteRepo(ctx, w, stream, &c, func(s string) { note(s, true) })
					stop()
					return err
				}
			}
			ws, err := a.api().PrepareWorkspace(ctx, vm.Name, req, body, event)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, ws)
			}
			fmt.Fprintf(a.Stdout, "workspace %s in vm %s (%s) on branch %s at %s\n", ws.GuestPath, ws.VMName, ws.Mode, ws.BranchName, shortCommit(ws.BaseCommit))
			if ws.Mode != model.WorkspacePrepareModeMetadataOnly {
				fmt.Fprintf(a.Stdout, "work there with: banger ssh %s   (cd %s)\nbring it back with: banger workspace fetch %s\n", ws.VMName, ws.GuestPath, ws.VMName)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&mode, "mode", string(model.WorkspacePrepareModeShallowOverlay), "shallow_overlay, full_copy or metadata_only")
	f.StringVar(&branch, "branch", "", "work branch in the guest (default banger/VM)")
	f.StringVar(&guestPath, "guest-path", "", "where the repository goes in the guest (default /root/<repo name>; relative is under /root)")
	f.BoolVar(&force, "force", false, "replace what is at the guest path, even a workspace with unfetched work")
	f.BoolVar(&asJSON, "json", false, "print the workspace as JSON")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

func shortCommit(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func orDetached(branch string) string {
	if branch == "" {
		return "detached HEAD"
	}
	return branch
}

// fetchResult is `workspace fetch --json`.
type fetchResult struct {
	Workspace api.Workspace         `json:"workspace"`
	Refs      []workspace.RefUpdate `json:"refs"`
	// Commits is how many commits the work branch has on top of the base.
	Commits int `json:"commits"`
}

func (a *App) wsFetchCommand() *cobra.Command {
	var (
		guestPath     string
		asJSON, quiet bool
	)
	cmd := &cobra.Command{
		Use:   "fetch VM",
		Short: "Bring a VM's work branch and uncommitted work into the host repository as remote-tracking refs",
		Long: `Bring a VM's work into the repository it was prepared from:

  refs/remotes/banger-VM/BRANCH      the guest's work branch
  refs/remotes/banger-VM/BRANCH-wip  the guest's uncommitted work (tracked and
                                     untracked, not ignored), as a commit on top
                                     of the guest's HEAD; removed when there is none

Your HEAD, branches, index and working tree are never touched. A running VM's
work is captured now; a stopped VM's was captured before it stopped.`,
		Example: `  banger workspace fetch dev
  git log --oneline main..banger-dev/banger/dev
  git diff banger-dev/banger/dev banger-dev/banger/dev-wip`,
		Args:              exactArgs(1, "a VM"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r := hostexec.Real{}
			pp := &progressPrinter{w: a.Stderr, quiet: quiet || asJSON}
			ws, err := a.api().GetWorkspace(ctx, args[0], guestPath)
			if err != nil {
				return err
			}
			if ws.Mode == model.WorkspacePrepareModeMetadataOnly {
				return model.Errorf(model.EINVALID, "the workspace at %s was prepared metadata_only: there is nothing in the guest to fetch", ws.GuestPath)
			}
			if err := workspace.CheckReadableDir(ws.RepoRoot); err != nil {
				return fmt.Errorf("the repository this workspace came from: %w", err)
			}
			if !workspace.HasCommit(ctx, r, ws.RepoRoot, ws.BaseCommit) {
				return model.Errorf(model.ECONFLICT, "%s does not have the commit the workspace was prepared from (%s); was it moved, rewritten or garbage-collected?", ws.RepoRoot, shortCommit(ws.BaseCommit))
			}
			ws, err = a.api().CaptureWorkspace(ctx, ws.VMName, ws.GuestPath, pp.event)
			if err != nil {
				return err
			}
			c := ws.Capture
			if c.Error != "" {
				fmt.Fprintf(a.Stderr, "warning: the last capture of %s failed (%s); fetching the one from %s\n", ws.GuestPath, c.Error, c.At.Local().Format("15:04:05"))
			}
			bundle := ""
			if c.BundleBytes > 0 {
				f, err := os.CreateTemp("", "banger-fetch-*.bundle")
				if err != nil {
					return err
				}
				defer os.Remove(f.Name())
				_, err = a.api().DownloadWorkspaceBundle(ctx, ws.VMName, ws.GuestPath, f)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				bundle = f.Name()
			}
			if err := workspace.ValidateBranch(ws.BranchName); err != nil {
				return fmt.Errorf("the daemon's record of %s: %w", ws.GuestPath, err)
			}
			updates := workspace.FetchRefs(ws.VMName, ws.BranchName, c.Head, c.WIP)
			if err := workspace.ImportBundle(ctx, r, ws.RepoRoot, bundle, updates); err != nil {
				return err
			}
			n, err := workspace.CountCommits(ctx, r, ws.RepoRoot, ws.BaseCommit, c.Head)
			if err != nil {
				return err
			}
			ws, err = a.api().MarkWorkspaceFetched(ctx, ws.VMName, api.WorkspaceFetchedRequest{GuestPath: ws.GuestPath, Head: c.Head, WIP: c.WIP})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, fetchResult{Workspace: ws, Refs: updates, Commits: n})
			}
			remote := strings.TrimPrefix(ws.RemoteRef, "refs/remotes/")
			fmt.Fprintf(a.Stdout, "fetched vm %s's %s into %s:\n", ws.VMName, ws.GuestPath, ws.RepoRoot)
			fmt.Fprintf(a.Stdout, "  %s  %s  (%d commit%s on top of %s)\n", remote, shortCommit(c.Head), n, plural(n), shortCommit(ws.BaseCommit))
			if c.WIP != "" {
				fmt.Fprintf(a.Stdout, "  %s  %s  (uncommitted work in the guest)\n", strings.TrimPrefix(ws.WIPRef, "refs/remotes/"), shortCommit(c.WIP))
			}
			fmt.Fprintf(a.Stdout, "see it with: git log --oneline %s..%s\n", shortCommit(ws.BaseCommit), remote)
			return nil
		},
	}
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "which workspace, when the VM has several")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func (a *App) wsGitCommand(kind string) *cobra.Command {
	var (
		guestPath          string
		stat, oneline, raw bool
	)
	short := "Show everything the guest changed since the base: commits and uncommitted work (untracked files too)"
	if kind == "log" {
		short = "Show the work branch's commits in the guest since the base"
	}
	cmd := &cobra.Command{
		Use:   kind + " VM",
		Short: short,
		Long: short + `.

The output comes from git in the guest: terminal escape sequences and control
characters in it (in file contents, names or commit messages) are shown as
visible escapes (\x1b, \r), git's own colours excepted; --raw prints the bytes
as they are (for a patch to apply, say).`,
		Args:              exactArgs(1, "a VM"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			color := false
			if f, ok := a.Stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				color = true
			}
			req := api.WorkspaceGitRequest{Kind: kind, GuestPath: guestPath, Stat: stat, Oneline: oneline, Color: color}
			return guestText(a.Stdout, raw, termsafe.Options{AllowSGR: color}, func(w io.Writer) error {
				return a.api().WorkspaceGit(cmd.Context(), args[0], req, w)
			})
		},
	}
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "which workspace, when the VM has several")
	cmd.Flags().BoolVar(&raw, "raw", false, "print git's bytes as they are, escape sequences included")
	cmd.Flags().BoolVar(&stat, "stat", false, "a diffstat")
	if kind == "log" {
		cmd.Flags().BoolVar(&oneline, "oneline", false, "one line per commit")
	}
	return cmd
}

// workspaceStatus summarises a workspace's capture and fetch state.
func workspaceStatus(w api.Workspace) string {
	switch {
	case w.Mode == model.WorkspacePrepareModeMetadataOnly:
		return "-"
	case w.Capture == nil:
		return "not captured"
	case w.Capture.Error != "":
		return "capture failed"
	case w.Unfetched:
		return "unfetched"
	case w.Fetched != nil:
		return "fetched"
	}
	return "no new work"
}

func (a *App) wsLsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List your workspaces",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			wss, err := a.api().ListWorkspaces(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, wss)
			}
			t := newTable(a.Stdout, "VM", "GUEST PATH", "MODE", "REPOSITORY", "BRANCH", "BASE", "WORK", "PREPARED")
			for _, w := range wss {
				t.row(w.VMName, w.GuestPath, string(w.Mode), w.RepoRoot, w.BranchName, shortCommit(w.BaseCommit), workspaceStatus(w), ago(w.PreparedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) wsInspectCommand() *cobra.Command {
	var (
		guestPath string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:               "inspect VM",
		Short:             "Show everything about a VM's workspace",
		Args:              exactArgs(1, "a VM"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := a.api().GetWorkspace(cmd.Context(), args[0], guestPath)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, w)
			}
			kv := func(k, v string) { fmt.Fprintf(a.Stdout, "%-16s %s\n", k+":", v) }
			kv("vm", fmt.Sprintf("%s (%s)", w.VMName, w.VMState))
			kv("guest path", w.GuestPath)
			kv("mode", string(w.Mode))
			kv("repository", w.RepoRoot)
			kv("prepared from", w.SourcePath)
			kv("host branch", orDetached(w.CurrentBranch))
			kv("base", w.BaseCommit)
			kv("work branch", w.BranchName)
			kv("prepared", w.PreparedAt.Local().Format("2006-01-02 15:04:05"))
			if w.RemoteRef != "" {
				kv("fetch into", w.RemoteRef)
				kv("wip into", w.WIPRef)
			}
			if c := w.Capture; c != nil {
				s := fmt.Sprintf("%s at %s", shortCommit(c.Head), c.At.Local().Format("2006-01-02 15:04:05"))
				if c.WIP != "" {
					s += ", uncommitted work " + shortCommit(c.WIP)
				}
				if c.BundleBytes > 0 {
					s += ", bundle " + humanBytes(c.BundleBytes)
				}
				kv("captured", s)
				if c.Error != "" {
					kv("capture error", c.Error)
				}
			}
			if f := w.Fetched; f != nil {
				kv("fetched", fmt.Sprintf("%s at %s", shortCommit(f.Head), f.At.Local().Format("2006-01-02 15:04:05")))
			}
			kv("work", workspaceStatus(w))
			return nil
		},
	}
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "which workspace, when the VM has several")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
