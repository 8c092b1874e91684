package workspace

import (
	"banger/internal/testutil"

	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func TestInspect(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root, _ := testRepo(t)
	got, err := Inspect(ctx, hostexec.Real{}, filepath.Join(root, "dir"))
	if err != nil {
		t.Fatal(err)
	}
	want := Repo{
		Source: filepath.Join(root, "dir"), Root: root, Name: "proj", GitDir: filepath.Join(root, ".git"),
		Head: revParse(t, root, "HEAD"), Branch: "main", UserName: "Repo User", UserEmail: "repo@example.com",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Inspect = %+v\nwant %+v", got, want)
	}

	sh(t, root, "git stash -q && git checkout -q --detach HEAD~1")
	got, err = Inspect(ctx, hostexec.Real{}, root)
	if err != nil {
		t.Fatal(err)
	}
	if got.Branch != "" || got.Head != revParse(t, root, "HEAD") {
		t.Errorf("detached: branch %q head %s", got.Branch, got.Head)
	}
}

func TestInspectRefuses(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	base := t.TempDir()
	plain := filepath.Join(base, "plain")
	os.Mkdir(plain, 0o755)
	sh(t, base, "git init -q -b main empty && git init -q --bare bare.git")
	file := filepath.Join(base, "file.txt")
	write(t, file, "x", 0o644)
	root, _ := testRepo(t)

	tests := []struct {
		name, dir, code, want string
	}{
		{"not a repository", plain, model.EINVALID, "not in a git repository"},
		{"missing", filepath.Join(base, "nope"), model.EINVALID, "no such directory"},
		{"a file", file, model.EINVALID, "is a file"},
		{"no commits", filepath.Join(base, "empty"), model.EINVALID, "has no commits yet"},
		{"bare", filepath.Join(base, "bare.git"), model.EINVALID, "bare repository"},
		{"inside .git", filepath.Join(root, ".git"), model.EINVALID, "not a working tree"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Inspect(ctx, hostexec.Real{}, tt.dir)
			if got := model.ErrorCode(err); got != tt.code {
				t.Fatalf("code = %q (%v), want %s", got, err, tt.code)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

func TestInspectUnreadable(t *testing.T) {
	isolateGit(t)
	// Root reads everything: check it as an unprivileged user.
	if testutil.RerunAsNobody(t) {
		return
	}
	root, _ := testRepo(t)
	os.Chmod(root, 0o000)
	defer os.Chmod(root, 0o755)
	_, err := Inspect(context.Background(), hostexec.Real{}, root)
	if got := model.ErrorCode(err); got != model.EFORBIDDEN {
		t.Fatalf("code = %q (%v), want EFORBIDDEN", got, err)
	}
}

func TestWorkTreeStatus(t *testing.T) {
	isolateGit(t)
	root, _ := testRepo(t)
	// A file whose stat data changed but not its content: git status
	// would refresh the index's stat cache and rewrite it.
	sh(t, root, "touch -d '2030-01-01 00:00:00' run.sh")
	before, err := os.ReadFile(filepath.Join(root, ".git", "index"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := WorkTreeStatus(context.Background(), hostexec.Real{}, root)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(root, ".git", "index")); !bytes.Equal(after, before) {
		t.Error("WorkTreeStatus rewrote the user's index")
	}
	want := Status{Staged: 1, Modified: 1, Deleted: 1, Untracked: 2}
	if got != want {
		t.Errorf("status = %+v, want %+v", got, want)
	}
	if got.String() != "1 staged, 1 modified, 1 deleted, 2 untracked" {
		t.Errorf("String = %q", got.String())
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Status
	}{
		{"empty", "", Status{}},
		{"staged and modified", "MM a\x00", Status{Staged: 1, Modified: 1}},
		{"rename skips its source", "R  new\x00old\x00?? u\x00", Status{Staged: 1, Untracked: 1}},
		{"deleted unstaged", " D gone\x00", Status{Deleted: 1}},
		{"deleted staged", "D  gone\x00", Status{Staged: 1}},
		{"ignored", "!! x\x00", Status{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseStatus(tt.in); got != tt.want {
				t.Errorf("parseStatus(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestListWorkTree(t *testing.T) {
	isolateGit(t)
	root, _ := testRepo(t)
	// An untracked repository of its own is reported, not shipped.
	sh(t, root, "git init -q nested && touch nested/x")
	got, err := ListWorkTree(context.Background(), hostexec.Real{}, root, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".gitignore", "a.txt", "b.txt", "dir/new2.txt", "new.txt", "outside", "private.txt", "run.sh"}
	if !reflect.DeepEqual(got.Paths, want) {
		t.Errorf("paths = %q\nwant %q", got.Paths, want)
	}
	if !reflect.DeepEqual(got.Nested, []string{"nested"}) {
		t.Errorf("nested = %q", got.Nested)
	}
}

// submoduleRepo makes a repository with a checked-out submodule "sub".
func submoduleRepo(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	sh(t, base, "git init -q -b main lib && cd lib && echo lib > lib.txt && git add . && git commit -qm lib")
	sh(t, base, "git init -q -b main super && cd super && echo top > top.txt && git add . && git commit -qm top")
	root := filepath.Join(base, "super")
	sh(t, root, "git -c protocol.file.allow=always submodule -q add ../lib sub && git commit -qm sub")
	write(t, filepath.Join(root, "sub", "untracked-in-sub.txt"), "u\n", 0o644)
	return root
}

func TestSubmodules(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root := submoduleRepo(t)
	repo, err := Inspect(ctx, hostexec.Real{}, root)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(repo.Submodules, []string{"sub"}) {
		t.Fatalf("submodules = %q", repo.Submodules)
	}
	if err := CheckMode(repo, model.WorkspacePrepareModeShallowOverlay); model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "full_copy") {
		t.Errorf("shallow_overlay with submodules: %v", err)
	}
	if err := CheckMode(repo, model.WorkspacePrepareModeFullCopy); err != nil {
		t.Errorf("full_copy with submodules: %v", err)
	}
	wt, err := ListWorkTree(ctx, hostexec.Real{}, root, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".gitmodules", "sub/.git", "sub/lib.txt", "sub/untracked-in-sub.txt", "top.txt"}
	if !reflect.DeepEqual(wt.Paths, want) {
		t.Errorf("paths = %q\nwant %q", wt.Paths, want)
	}
	// The submodule's own repository is a gitfile pointing into the
	// superproject's .git, and from a linked checkout full_copy is
	// refused.
	sub, err := Inspect(ctx, hostexec.Real{}, filepath.Join(root, "sub"))
	if err != nil {
		t.Fatal(err)
	}
	if !sub.LinkedWorktree {
		t.Errorf("submodule checkout not seen as linked: %+v", sub)
	}
	if err := CheckMode(sub, model.WorkspacePrepareModeFullCopy); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("full_copy of a linked checkout: %v", err)
	}
}

func TestLFSIsRefused(t *testing.T) {
	isolateGit(t)
	root, _ := testRepo(t)
	write(t, filepath.Join(root, "assets", ".gitattributes"), "# big files\n*.bin filter=lfs diff=lfs merge=lfs -text\n", 0o644)
	sh(t, root, "git add assets/.gitattributes && git commit -qm lfs")
	repo, err := Inspect(context.Background(), hostexec.Real{}, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(repo.LFS) != 1 || !strings.HasPrefix(repo.LFS[0], "assets/.gitattributes: *.bin filter=lfs") {
		t.Fatalf("LFS = %q", repo.LFS)
	}
	for _, mode := range []model.WorkspacePrepareMode{model.WorkspacePrepareModeShallowOverlay, model.WorkspacePrepareModeFullCopy} {
		if err := CheckMode(repo, mode); model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "Git LFS") {
			t.Errorf("%s with LFS: %v", mode, err)
		}
	}
	if err := CheckMode(repo, model.WorkspacePrepareModeMetadataOnly); err != nil {
		t.Errorf("metadata_only with LFS: %v", err)
	}
	if err := CheckMode(repo, "everything"); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("unknown mode: %v", err)
	}
}

func TestShallowClone(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root, _ := testRepo(t)
	head := revParse(t, root, "HEAD")
	dst := filepath.Join(t.TempDir(), "clone")
	if err := ShallowClone(ctx, hostexec.Real{}, root, head, dst); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(sh(t, dst, "cat .git/shallow")); got != head {
		t.Errorf("shallow = %s, want %s", got, head)
	}
	if got := strings.TrimSpace(sh(t, dst, "git rev-list --count "+head)); got != "1" {
		t.Errorf("commits in the clone: %s, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(dst, ".git", "FETCH_HEAD")); !os.IsNotExist(err) {
		t.Errorf("FETCH_HEAD left behind: %v", err)
	}
	// A HEAD that moved since inspection is a conflict.
	err := ShallowClone(ctx, hostexec.Real{}, root, revParse(t, root, "HEAD~1"), filepath.Join(t.TempDir(), "c2"))
	if model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("moved HEAD: %v", err)
	}
}

func TestCheckBranchWithGit(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	if err := CheckBranchWithGit(ctx, hostexec.Real{}, "banger/dev"); err != nil {
		t.Errorf("banger/dev: %v", err)
	}
	if err := CheckBranchWithGit(ctx, hostexec.Real{}, "bad..name"); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("bad..name: %v", err)
	}
}
