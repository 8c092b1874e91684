// Package workspace carries a host git repository into a VM and its work
// back. The host side (used by the CLI, running as the user) inspects the
// repository with git, refuses what it cannot carry, lists what to ship
// and writes it as a tar stream; the guest side (used by the daemon) is a
// set of pure builders for the shell scripts the daemon runs in the guest
// over SSH. File sync's host side lives here too: it is the same kind of
// stream, built from the user's files with the user's rights.
package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// Repo is what Inspect learned about a repository.
type Repo struct {
	// Source is the directory the user named, absolute.
	Source string `json:"source"`
	// Root is the top of the working tree.
	Root string `json:"root"`
	// Name is the base name of Root.
	Name string `json:"name"`
	// GitDir is the absolute git directory.
	GitDir string `json:"git_dir"`
	// Head is the commit HEAD points at.
	Head string `json:"head"`
	// Branch is the checked-out branch; empty when HEAD is detached.
	Branch string `json:"branch,omitempty"`
	// Shallow says the host repository is itself shallow.
	Shallow bool `json:"shallow,omitempty"`
	// LinkedWorktree says Root/.git is a file (a linked worktree or a
	// submodule checkout), not the repository itself.
	LinkedWorktree bool `json:"linked_worktree,omitempty"`
	// Submodules are the gitlink paths in the index.
	Submodules []string `json:"submodules,omitempty"`
	// LFS names the attribute lines that route files through Git LFS
	// ("path/.gitattributes: *.bin filter=lfs ...").
	LFS []string `json:"lfs,omitempty"`
	// UserName and UserEmail are the repository's commit identity, carried
	// into the guest so commits made there are the user's.
	UserName  string `json:"user_name,omitempty"`
	UserEmail string `json:"user_email,omitempty"`
}

// git runs git in dir with the given runner.
func git(ctx context.Context, r hostexec.Runner, dir string, args ...string) (string, error) {
	out, err := r.Run(ctx, "git", append([]string{"-C", dir}, args...)...)
	if err != nil && errors.Is(err, hostexec.ErrNotFound) {
		return "", model.Errorf(model.EUNAVAILABLE, "git is not installed on this host; install it (apt-get install git)")
	}
	return string(out), err
}

// exitCode returns a failed command's exit status, or -1.
func exitCode(err error) int {
	var ee *hostexec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// gitStderr returns the trimmed stderr of a failed git command.
func gitStderr(err error) string {
	var ee *hostexec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(ee.Stderr)
	}
	return err.Error()
}

// CheckReadableDir checks that the current process can list dir, with a
// message that says what to do when it cannot.
func CheckReadableDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return model.Errorf(model.EINVALID, "%s: no such directory", dir)
	case errors.Is(err, fs.ErrPermission):
		return model.Errorf(model.EFORBIDDEN, "%s: permission denied; banger reads your repository with your own rights", dir)
	case err != nil:
		return model.Errorf(model.EINVALID, "%s: %v", dir, err)
	case !fi.IsDir():
		return model.Errorf(model.EINVALID, "%s is a file; pass the repository's directory", dir)
	}
	f, err := os.Open(dir)
	if err == nil {
		_, err = f.Readdirnames(1)
		f.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		if errors.Is(err, fs.ErrPermission) {
			return model.Errorf(model.EFORBIDDEN, "%s: permission denied; banger reads your repository with your own rights", dir)
		}
		return model.Errorf(model.EINVALID, "%s: %v", dir, err)
	}
	return nil
}

// Inspect reads the repository that contains dir, with the current
// process's rights. A directory that is not in a git repository, a bare
// repository and a repository without commits are refused with what to do
// next; submodules and LFS are reported for the caller to decide.
func Inspect(ctx context.Context, r hostexec.Runner, dir string) (Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Repo{}, fmt.Errorf("inspect %s: %w", dir, err)
	}
	if err := CheckReadableDir(abs); err != nil {
		return Repo{}, err
	}
	repo := Repo{Source: abs}
	out, err := git(ctx, r, abs, "rev-parse", "--is-bare-repository", "--is-inside-work-tree")
	if err != nil {
		msg := gitStderr(err)
		if strings.Contains(msg, "not a git repository") {
			return Repo{}, model.Errorf(model.EINVALID, "%s is not in a git repository; run `git init` there and commit, or pass the repository's path", abs)
		}
		if model.ErrorCode(err) == model.EUNAVAILABLE {
			return Repo{}, err
		}
		return Repo{}, model.Errorf(model.EINVALID, "%s: git cannot read this repository: %s", abs, msg)
	}
	f := strings.Fields(out)
	if len(f) >= 1 && f[0] == "true" {
		return Repo{}, model.Errorf(model.EINVALID, "%s is a bare repository; prepare from a clone with a working tree", abs)
	}
	if len(f) >= 2 && f[1] != "true" {
		return Repo{}, model.Errorf(model.EINVALID, "%s is inside a git directory, not a working tree; pass the working tree's path", abs)
	}
	out, err = git(ctx, r, abs, "rev-parse", "--show-toplevel", "--absolute-git-dir", "--is-shallow-repository")
	if err != nil {
		return Repo{}, fmt.Errorf("inspect %s: %w", abs, err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		return Repo{}, fmt.Errorf("inspect %s: unexpected rev-parse output %q", abs, out)
	}
	repo.Root, repo.GitDir, repo.Shallow = lines[0], lines[1], lines[2] == "true"
	repo.Name = filepath.Base(repo.Root)
	if fi, err := os.Lstat(filepath.Join(repo.Root, ".git")); err == nil && !fi.IsDir() {
		repo.LinkedWorktree = true
	}

	out, err = git(ctx, r, repo.Root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
	if err != nil {
		if exitCode(err) == 1 {
			return Repo{}, model.Errorf(model.EINVALID, "%s has no commits yet; commit something first (`git add -A && git commit -m initial`), then prepare again", repo.Root)
		}
		return Repo{}, fmt.Errorf("inspect %s: %w", repo.Root, err)
	}
	repo.Head = strings.TrimSpace(out)
	out, err = git(ctx, r, repo.Root, "symbolic-ref", "-q", "--short", "HEAD")
	switch {
	case err == nil:
		repo.Branch = strings.TrimSpace(out)
	case exitCode(err) == 1:
		// Detached HEAD.
	default:
		return Repo{}, fmt.Errorf("inspect %s: %w", repo.Root, err)
	}

	idx, err := git(ctx, r, repo.Root, "ls-files", "-z", "-s")
	if err != nil {
		return Repo{}, fmt.Errorf("inspect %s: %w", repo.Root, err)
	}
	tracked, gitlinks := parseLsFilesStage(idx)
	repo.Submodules = gitlinks
	repo.LFS = findLFS(repo.Root, repo.GitDir, tracked)

	repo.UserName = gitConfig(ctx, r, repo.Root, "user.name")
	repo.UserEmail = gitConfig(ctx, r, repo.Root, "user.email")
	return repo, nil
}

// gitConfig returns a config value, or "" when it is unset.
func gitConfig(ctx context.Context, r hostexec.Runner, dir, key string) string {
	out, err := git(ctx, r, dir, "config", "--get", key)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// parseLsFilesStage parses `git ls-files -z -s`: "mode sha stage\tpath"
// records. It returns the tracked paths (each once) and, separately, the
// gitlinks (mode 160000, submodules).
func parseLsFilesStage(out string) (tracked, gitlinks []string) {
	seen := map[string]bool{}
	for _, rec := range strings.Split(out, "\x00") {
		if rec == "" {
			continue
		}
		tab := strings.IndexByte(rec, '\t')
		if tab < 0 {
			continue
		}
		meta, path := rec[:tab], rec[tab+1:]
		if seen[path] {
			continue
		}
		seen[path] = true
		if strings.HasPrefix(meta, "160000 ") {
			gitlinks = append(gitlinks, path)
			continue
		}
		tracked = append(tracked, path)
	}
	return tracked, gitlinks
}

// findLFS returns the attribute lines that send files through the LFS
// filter: in tracked .gitattributes files and in .git/info/attributes.
func findLFS(root, gitDir string, tracked []string) []string {
	var files []string
	for _, p := range tracked {
		if p == ".gitattributes" || strings.HasSuffix(p, "/.gitattributes") {
			files = append(files, filepath.Join(root, p))
		}
	}
	files = append(files, filepath.Join(gitDir, "info", "attributes"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if strings.HasPrefix(line, "#") {
				continue
			}
			for _, field := range strings.Fields(line) {
				if field == "filter=lfs" {
					rel, _ := filepath.Rel(root, f)
					if strings.HasPrefix(rel, "..") {
						rel = f
					}
					out = append(out, rel+": "+line)
					break
				}
			}
		}
	}
	return out
}

// CheckMode refuses what mode cannot carry from repo: a shallow_overlay
// of a repository with submodules, and Git LFS in any mode that ships
// files (the guest would get pointer files with no LFS objects, or large
// files git no longer recognises); a full_copy of a linked worktree, whose
// .git is a pointer to a directory outside it.
func CheckMode(repo Repo, mode model.WorkspacePrepareMode) error {
	switch mode {
	case model.WorkspacePrepareModeMetadataOnly:
		return nil
	case model.WorkspacePrepareModeShallowOverlay, model.WorkspacePrepareModeFullCopy:
	default:
		return model.Errorf(model.EINVALID, "mode %q: use shallow_overlay, full_copy or metadata_only", mode)
	}
	if len(repo.LFS) > 0 {
		return model.Errorf(model.EINVALID, "%s uses Git LFS (%s); banger workspaces do not carry LFS objects: use --mode metadata_only and copy what you need with `banger cp`", repo.Root, repo.LFS[0])
	}
	if mode == model.WorkspacePrepareModeShallowOverlay && len(repo.Submodules) > 0 {
		return model.Errorf(model.EINVALID, "%s has submodules (%s); shallow_overlay does not carry them: use --mode full_copy, which copies checked-out submodules with their history", repo.Root, strings.Join(repo.Submodules, ", "))
	}
	if mode == model.WorkspacePrepareModeFullCopy && repo.LinkedWorktree {
		return model.Errorf(model.EINVALID, "%s is a linked worktree (its .git is a file pointing elsewhere); full_copy needs the repository itself: use --mode shallow_overlay, or prepare from the main worktree", repo.Root)
	}
	return nil
}

// Status counts a working tree's changes, as `git status` sees them.
type Status struct {
	Staged    int `json:"staged"`
	Modified  int `json:"modified"`
	Deleted   int `json:"deleted"`
	Untracked int `json:"untracked"`
}

// String summarises s for a progress line.
func (s Status) String() string {
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(s.Staged, "staged")
	add(s.Modified, "modified")
	add(s.Deleted, "deleted")
	add(s.Untracked, "untracked")
	if len(parts) == 0 {
		return "clean"
	}
	return strings.Join(parts, ", ")
}

// WorkTreeStatus returns the working tree's status.
func WorkTreeStatus(ctx context.Context, r hostexec.Runner, root string) (Status, error) {
	out, err := git(ctx, r, root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
	if err != nil {
		return Status{}, fmt.Errorf("git status in %s: %w", root, err)
	}
	return parseStatus(out), nil
}

// parseStatus parses `git status --porcelain=v1 -z`. A rename or copy
// record is followed by its source path, which is skipped.
func parseStatus(out string) Status {
	var s Status
	recs := strings.Split(out, "\x00")
	for i := 0; i < len(recs); i++ {
		rec := recs[i]
		if len(rec) < 4 {
			continue
		}
		x, y := rec[0], rec[1]
		if x == 'R' || x == 'C' {
			i++
		}
		switch {
		case x == '?' && y == '?':
			s.Untracked++
			continue
		case x == '!':
			continue
		}
		if x != ' ' {
			s.Staged++
		}
		switch y {
		case 'D':
			s.Deleted++
		case 'M', 'T':
			s.Modified++
		}
	}
	return s
}

// WorkTree is what a workspace ships from the working tree.
type WorkTree struct {
	// Paths are relative to the root, sorted: tracked files that exist on
	// disk, untracked files git does not ignore, and (for full copies)
	// checked-out submodules' own files with their .git pointer files.
	Paths []string
	// Nested are untracked directories that are git repositories of
	// their own; they are not shipped.
	Nested []string
}

// ListWorkTree lists what a workspace ships from root's working tree.
// Ignored files are never listed; deleted tracked files are absent. With
// submodules set, checked-out submodules are listed recursively (an
// uninitialised one as its empty directory); otherwise gitlinks are left
// out.
func ListWorkTree(ctx context.Context, r hostexec.Runner, root string, submodules bool) (WorkTree, error) {
	var wt WorkTree
	if err := listWorkTree(ctx, r, root, "", submodules, &wt); err != nil {
		return WorkTree{}, err
	}
	sort.Strings(wt.Paths)
	return wt, nil
}

func listWorkTree(ctx context.Context, r hostexec.Runner, root, prefix string, submodules bool, wt *WorkTree) error {
	dir := filepath.Join(root, prefix)
	idx, err := git(ctx, r, dir, "ls-files", "-z", "-s")
	if err != nil {
		return fmt.Errorf("list files in %s: %w", dir, err)
	}
	tracked, gitlinks := parseLsFilesStage(idx)
	others, err := git(ctx, r, dir, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return fmt.Errorf("list untracked files in %s: %w", dir, err)
	}
	for _, p := range tracked {
		if _, err := os.Lstat(filepath.Join(dir, p)); err != nil {
			// Deleted in the working tree (or outside a sparse checkout).
			continue
		}
		wt.Paths = append(wt.Paths, prefix+p)
	}
	for _, p := range strings.Split(others, "\x00") {
		switch {
		case p == "":
		case strings.HasSuffix(p, "/"):
			wt.Nested = append(wt.Nested, prefix+strings.TrimSuffix(p, "/"))
		default:
			wt.Paths = append(wt.Paths, prefix+p)
		}
	}
	if !submodules {
		return nil
	}
	for _, g := range gitlinks {
		sub := filepath.Join(dir, g)
		fi, err := os.Lstat(sub)
		if err != nil || !fi.IsDir() {
			continue
		}
		if _, err := os.Lstat(filepath.Join(sub, ".git")); err != nil {
			wt.Paths = append(wt.Paths, prefix+g)
			continue
		}
		wt.Paths = append(wt.Paths, prefix+g+"/.git")
		if err := listWorkTree(ctx, r, root, prefix+g+"/", true, wt); err != nil {
			return err
		}
	}
	return nil
}

// ShallowClone makes a repository at dst (which must not exist) holding
// only head, at depth 1, fetched from root with the current process's
// rights. It checks that root's HEAD is still head, so a commit made
// while preparing cannot slip in unnoticed, and removes FETCH_HEAD: the
// guest names the commit by its work branch.
func ShallowClone(ctx context.Context, r hostexec.Runner, root, head, dst string) error {
	if _, err := r.Run(ctx, "git", "init", "-q", "--template=", dst); err != nil {
		return fmt.Errorf("shallow clone: %w", err)
	}
	if _, err := git(ctx, r, dst, "fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules", root, "HEAD"); err != nil {
		return fmt.Errorf("shallow clone of %s: %w", root, err)
	}
	out, err := git(ctx, r, dst, "rev-parse", "--verify", "FETCH_HEAD^{commit}")
	if err != nil {
		return fmt.Errorf("shallow clone of %s: %w", root, err)
	}
	if got := strings.TrimSpace(out); got != head {
		return model.Errorf(model.ECONFLICT, "HEAD of %s moved from %s to %s while preparing; prepare again", root, short(head), short(got))
	}
	os.Remove(filepath.Join(dst, ".git", "FETCH_HEAD"))
	return nil
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// CheckBranchWithGit asks git itself whether name is a valid branch name,
// after ValidateBranch's own checks.
func CheckBranchWithGit(ctx context.Context, r hostexec.Runner, name string) error {
	if err := ValidateBranch(name); err != nil {
		return err
	}
	if _, err := r.Run(ctx, "git", "check-ref-format", "--branch", name); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return model.Errorf(model.EUNAVAILABLE, "git is not installed on this host; install it (apt-get install git)")
		}
		return model.Errorf(model.EINVALID, "branch name %q: git refuses it (see `git check-ref-format --help`)", name)
	}
	return nil
}

// HasCommit reports whether the repository at root has commit sha.
func HasCommit(ctx context.Context, r hostexec.Runner, root, sha string) bool {
	_, err := git(ctx, r, root, "cat-file", "-e", sha+"^{commit}")
	return err == nil
}

// CountCommits counts the commits in head that are not in base.
func CountCommits(ctx context.Context, r hostexec.Runner, root, base, head string) (int, error) {
	out, err := git(ctx, r, root, "rev-list", "--count", head, "^"+base)
	if err != nil {
		return 0, fmt.Errorf("count commits: %w", err)
	}
	var n int
	_, err = fmt.Sscan(string(bytes.TrimSpace([]byte(out))), &n)
	return n, err
}

// RefUpdate sets one ref of the host repository to Commit, or deletes it
// when Commit is empty. Source is the ref in the guest's bundle that
// carries Commit.
type RefUpdate struct {
	Ref    string `json:"ref"`
	Commit string `json:"commit,omitempty"`
	Source string `json:"source,omitempty"`
}

// refPrefix is the only part of the host repository fetch may write.
const refPrefix = "refs/remotes/banger-"

// ImportBundle brings a VM's work into the repository at root, with the
// current process's rights: the objects of bundle (when not empty), then
// each ref update. Only refs under refs/remotes/banger-* are written: the
// user's HEAD, branches, index and working tree are never touched.
//
// The bundle comes from the guest and is trusted for nothing: its header
// is read here (ReadBundleHeader) and must name only the updates'
// sources, each at the commit the update asks for (CheckBundle);
// anything else refuses the whole import with ECONFLICT before git
// writes a thing. The fetch names each ref with an explicit
// "+source:ref" refspec after --end-of-options, built from the updates,
// never from the bundle.
func ImportBundle(ctx context.Context, r hostexec.Runner, root, bundle string, updates []RefUpdate) error {
	format, err := objectFormat(ctx, r, root)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	want := map[string]string{}
	for _, u := range updates {
		if !strings.HasPrefix(u.Ref, refPrefix) {
			return fmt.Errorf("import: refusing to write %s: only %s* refs are banger's", u.Ref, refPrefix)
		}
		if err := checkRefName(ctx, r, u.Ref); err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if u.Commit == "" {
			continue
		}
		if !isHex(u.Commit, hexLen(format)) {
			return fmt.Errorf("import: %q is not a %s object name", u.Commit, format)
		}
		if err := checkRefName(ctx, r, u.Source); err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if _, dup := want[u.Source]; dup {
			return fmt.Errorf("import: %s is the source of two updates", u.Source)
		}
		want[u.Source] = u.Commit
	}
	fetched := map[string]bool{}
	if bundle != "" {
		h, err := ReadBundleFile(bundle)
		if err != nil {
			return bundleRefused(root, err.Error())
		}
		if err := CheckBundle(h, format, want); err != nil {
			return bundleRefused(root, err.Error())
		}
		for _, ref := range h.Refs {
			fetched[ref.Name] = true
		}
		if len(h.Refs) > 0 {
			args := []string{"fetch", "-q", "--no-tags", "--no-prune", "--no-write-fetch-head", "--no-recurse-submodules", "--end-of-options", bundle}
			for _, u := range updates {
				if u.Commit != "" && fetched[u.Source] {
					args = append(args, "+"+u.Source+":"+u.Ref)
				}
			}
			if _, err := git(ctx, r, root, args...); err != nil {
				if strings.Contains(gitStderr(err), "prerequisite") {
					return model.Errorf(model.ECONFLICT, "%s lacks the commit the workspace was prepared from (was it rewritten and garbage-collected?): %s", root, gitStderr(err))
				}
				return fmt.Errorf("import: fetch from bundle: %w", err)
			}
		}
	}
	for _, u := range updates {
		switch {
		case u.Commit == "":
			if _, err := git(ctx, r, root, "rev-parse", "--verify", "-q", u.Ref); err == nil {
				if _, err := git(ctx, r, root, "update-ref", "-m", "banger: workspace fetch", "-d", u.Ref); err != nil {
					return fmt.Errorf("import: %w", err)
				}
			}
			continue
		case !fetched[u.Source]:
			if !HasCommit(ctx, r, root, u.Commit) {
				return model.Errorf(model.EINTERNAL, "import: commit %s for %s is neither in the bundle nor in %s", short(u.Commit), u.Ref, root)
			}
			if _, err := git(ctx, r, root, "update-ref", "-m", "banger: workspace fetch", u.Ref, u.Commit); err != nil {
				return fmt.Errorf("import: %w", err)
			}
		}
		out, err := git(ctx, r, root, "rev-parse", "--verify", "-q", u.Ref+"^{commit}")
		if err != nil || strings.TrimSpace(out) != u.Commit {
			return fmt.Errorf("import: %s is at %q after the fetch, want the commit %s", u.Ref, strings.TrimSpace(out), u.Commit)
		}
	}
	return nil
}
