package workspace

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func TestValidateBranchAgreesWithGit(t *testing.T) {
	isolateGit(t)
	tests := []struct {
		name string
		ok   bool
	}{
		{"banger/dev", true}, {"feature-1", true}, {"a.b", true}, {"user/topic/x", true}, {"ü-branch", true},
		{"", false}, {"-x", false}, {"HEAD", false}, {"a..b", false}, {"a b", false}, {"a~1", false},
		{"a^", false}, {"a:b", false}, {"a?", false}, {"a*", false}, {"a[", false}, {"a\\b", false},
		{"a/", false}, {"/a", false}, {"a//b", false}, {".a", false}, {"a/.b", false}, {"a.lock", false},
		{"a/b.lock/c", false}, {"a.", false}, {"a@{1}", false}, {"@", false}, {"a\tb", false}, {"a\x7fb", false},
	}
	for _, tt := range tests {
		err := ValidateBranch(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateBranch(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && model.ErrorCode(err) != model.EINVALID {
			t.Errorf("ValidateBranch(%q) code %s", tt.name, model.ErrorCode(err))
		}
		// git agrees (for names git's command line can carry).
		if tt.name == "" || strings.HasPrefix(tt.name, "-") {
			continue
		}
		gitOK := exec.Command("git", "check-ref-format", "--branch", tt.name).Run() == nil
		// git's --branch expands "@" and "HEAD" to the current branch.
		if gitOK != tt.ok && tt.name != "HEAD" && tt.name != "@" {
			t.Errorf("git check-ref-format --branch %q ok=%v, table says %v", tt.name, gitOK, tt.ok)
		}
	}
}

func TestGuestPath(t *testing.T) {
	tests := []struct {
		in, repo, want string
		ok             bool
	}{
		{"", "proj", "/root/proj", true},
		{"work/proj", "x", "/root/work/proj", true},
		{"~/p", "x", "/root/p", true},
		{"/root/srv/app/", "x", "/root/srv/app", true},
		{"/srv/app/", "x", "", false},
		{"/etc/cron.d", "x", "", false},
		{"/rootkit", "x", "", false},
		{"//root/x", "x", "/root/x", true},
		{"/root/a/./b", "x", "/root/a/b", true},
		{"/root/../etc", "x", "", false},
		{"../x", "x", "", false},
		{"a/../../b", "x", "", false},
		{"/", "x", "", false},
		{"/root", "x", "", false},
		{"~", "x", "", false},
		{"a\nb", "x", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		got, err := GuestPath(tt.in, tt.repo)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("GuestPath(%q, %q) = %q, %v; want %q ok %v", tt.in, tt.repo, got, err, tt.want, tt.ok)
		}
	}
}

func TestRefs(t *testing.T) {
	if got := RemoteRef("dev", DefaultBranch("dev")); got != "refs/remotes/banger-dev/banger/dev" {
		t.Errorf("RemoteRef = %q", got)
	}
	if got := WIPRef("dev", "topic"); got != "refs/remotes/banger-dev/topic-wip" {
		t.Errorf("WIPRef = %q", got)
	}
}

func TestParseCapture(t *testing.T) {
	base := strings.Repeat("0", 40)
	h := strings.Repeat("a", 40)
	w := strings.Repeat("b", 40)
	tests := []struct {
		in   string
		base string
		want Capture
		ok   bool
	}{
		{h + " - 0\n", base, Capture{Head: h}, true},
		{h + " " + w + " 1\n", base, Capture{Head: h, WIP: w, Bundle: true}, true},
		{strings.Repeat("c", 64) + " - 1\n", strings.Repeat("0", 64), Capture{Head: strings.Repeat("c", 64), Bundle: true}, true},
		// A SHA-256 name in a SHA-1 repository, and the reverse.
		{strings.Repeat("c", 64) + " - 1\n", base, Capture{}, false},
		{h + " - 1\n", strings.Repeat("0", 64), Capture{}, false},
		{h + " - 0", base, Capture{}, false},
		{"", base, Capture{}, false},
		{h + " -\n", base, Capture{}, false},
		{"HEAD - 0\n", base, Capture{}, false},
		{strings.ToUpper(h) + " - 0\n", base, Capture{}, false},
		{h + " - 2\n", base, Capture{}, false},
		{h + " ; 0\n", base, Capture{}, false},
		{h + "  - 0\n", base, Capture{}, false},
		{" " + h + " - 0\n", base, Capture{}, false},
		{h + " - 0\r\n", base, Capture{}, false},
		{"noise\n" + h + " - 0\n", base, Capture{}, false},
		{h + " - 0\n" + h + " - 1\n", base, Capture{}, false},
		{h + " --prune 0\n", base, Capture{}, false},
		{h[:39] + "g - 0\n", base, Capture{}, false},
		{h + " - 0\n", "HEAD", Capture{}, false},
	}
	for _, tt := range tests {
		got, err := ParseCapture(tt.in, tt.base)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseCapture(%q) = %+v, %v; want %+v ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParsePrecheck(t *testing.T) {
	tests := []struct {
		in   string
		want Precheck
		ok   bool
	}{
		{"git=1\npath=absent\n", Precheck{Git: true, Path: "absent"}, true},
		{"git=0\npath=repo\n", Precheck{Path: "repo"}, true},
		{"git=1\npath=weird\n", Precheck{}, false},
		{"", Precheck{}, false},
		{"git=1\npath=absent", Precheck{}, false},
		{"path=absent\ngit=1\n", Precheck{}, false},
		{"git=1\ngit=0\npath=absent\n", Precheck{}, false},
		{"git=1\npath=absent\npath=repo\n", Precheck{}, false},
		{"git=yes\npath=absent\n", Precheck{}, false},
		{" git=1\npath=absent\n", Precheck{}, false},
		{"git=1\nabsent\n", Precheck{}, false},
	}
	for _, tt := range tests {
		got, err := ParsePrecheck(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParsePrecheck(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestScriptsQuote(t *testing.T) {
	gp := "/root/it's $(reboot)"
	for name, s := range map[string]string{
		"precheck":      PrecheckScript(gp),
		"extract":       ExtractScript(gp),
		"setup":         SetupScript(SetupParams{GuestPath: gp, Mode: model.WorkspacePrepareModeShallowOverlay, Branch: "b", Base: "c", UserName: "O'Brien"}),
		"setup+capture": SetupAndCaptureScript(SetupParams{GuestPath: gp, Mode: model.WorkspacePrepareModeFullCopy, Branch: "b", Base: "c"}),
		"capture":       CaptureScript(gp, "b", "c"),
		"bundle":        BundleScript(gp, "b", "c", true),
		"diff":          DiffScript(gp, "c", GitOutput{}),
		"log":           LogScript(gp, "b", "c", GitOutput{}),
	} {
		if strings.Contains(s, "$(reboot)") && !strings.Contains(s, `'/root/it'\''s $(reboot)`) {
			t.Errorf("%s: guest path not quoted:\n%s", name, s)
		}
		if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v %s\n%s", name, err, out, s)
		}
	}
}

// guestRun runs a guest script locally, as the daemon runs it over SSH.
func guestRun(t *testing.T, script string, stdin io.Reader) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("script failed: %v\n%s\nscript:\n%s", err, errb.String(), script)
	}
	return out.String()
}

// prepareLocally runs a prepare's host and guest halves on this machine,
// with gp standing in for the guest path.
func prepareLocally(t *testing.T, root, gp string, mode model.WorkspacePrepareMode, branch string) Repo {
	t.Helper()
	ctx := context.Background()
	repo, err := Inspect(ctx, hostexec.Real{}, root)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckMode(repo, mode); err != nil {
		t.Fatal(err)
	}
	wt, err := ListWorkTree(ctx, hostexec.Real{}, repo.Root, mode == model.WorkspacePrepareModeFullCopy)
	if err != nil {
		t.Fatal(err)
	}
	stream := RepoStream{Root: repo.Root, Paths: wt.Paths, GitDir: repo.GitDir}
	if mode == model.WorkspacePrepareModeShallowOverlay {
		clone := filepath.Join(t.TempDir(), "clone")
		if err := ShallowClone(ctx, hostexec.Real{}, repo.Root, repo.Head, clone); err != nil {
			t.Fatal(err)
		}
		stream.GitDir = filepath.Join(clone, ".git")
	}
	pre, err := ParsePrecheck(guestRun(t, PrecheckScript(gp), nil))
	if err != nil || !pre.Git || pre.Path != "absent" {
		t.Fatalf("precheck: %+v %v", pre, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteRepo(ctx, pw, stream, nil, nil)) }()
	guestRun(t, ExtractScript(gp), pr)
	// Setup and the capture of the tree as prepared, in one session:
	// its output is the capture line, the same as a capture run after.
	out := guestRun(t, SetupAndCaptureScript(SetupParams{GuestPath: gp, Mode: mode, Branch: branch, Base: repo.Head, UserName: repo.UserName, UserEmail: repo.UserEmail}), nil)
	if _, err := ParseCapture(out, repo.Head); err != nil {
		t.Fatalf("setup's capture: %v", err)
	}
	if again := guestRun(t, CaptureScript(gp, branch, repo.Head), nil); again != out {
		t.Errorf("setup's capture %q, a capture after it %q", out, again)
	}
	return repo
}

func TestPrepareFullCopyLocally(t *testing.T) {
	isolateGit(t)
	root, outside := testRepo(t)
	gp := filepath.Join(t.TempDir(), "guest", "proj")
	repo := prepareLocally(t, root, gp, model.WorkspacePrepareModeFullCopy, "banger/vm")

	// The guest sees exactly what the user sees: same status (staged
	// stays staged), same HEAD commit, full history, on the work branch.
	if got, want := sh(t, gp, "git status --porcelain"), sh(t, root, "git status --porcelain"); got != want {
		t.Errorf("guest status:\n%s\nhost status:\n%s", got, want)
	}
	if got := revParse(t, gp, "HEAD"); got != repo.Head {
		t.Errorf("guest HEAD %s, want %s", got, repo.Head)
	}
	if got := strings.TrimSpace(sh(t, gp, "git symbolic-ref HEAD")); got != "refs/heads/banger/vm" {
		t.Errorf("guest branch %s", got)
	}
	if got := strings.TrimSpace(sh(t, gp, "git rev-list --count HEAD")); got != "3" {
		t.Errorf("guest history %s commits, want 3", got)
	}
	if got := strings.TrimSpace(sh(t, gp, "git config banger.base; git config user.name")); got != repo.Head+"\nRepo User" {
		t.Errorf("guest config: %q", got)
	}
	checkWorkTree(t, gp, outside)
	if _, err := os.Stat(gp + ".banger-new"); !os.IsNotExist(err) {
		t.Errorf("staging dir left: %v", err)
	}
}

func TestPrepareShallowOverlayLocally(t *testing.T) {
	isolateGit(t)
	root, outside := testRepo(t)
	// A guest path that would run a command if a script lost its
	// quoting (the setup and capture scripts nest it twice).
	dir := t.TempDir()
	gp := filepath.Join(dir, "it's $(touch pwned) proj")
	repo := prepareLocally(t, root, gp, model.WorkspacePrepareModeShallowOverlay, "banger/vm")
	for _, p := range []string{filepath.Join(dir, "pwned"), "pwned", "/pwned", filepath.Join(gp, "pwned")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists: a script ran part of the guest path", p)
		}
	}

	// HEAD at depth 1, same commit; the working tree as on the host, every
	// change unstaged.
	if got := revParse(t, gp, "HEAD"); got != repo.Head {
		t.Errorf("guest HEAD %s, want %s", got, repo.Head)
	}
	if got := strings.TrimSpace(sh(t, gp, "git rev-list --count HEAD")); got != "1" {
		t.Errorf("guest history %s commits, want 1", got)
	}
	want := " M a.txt\n M b.txt\n D c.txt\n?? dir/\n?? new.txt\n"
	if got := sh(t, gp, "git status --porcelain"); got != want {
		t.Errorf("guest status:\n%s\nwant:\n%s", got, want)
	}
	checkWorkTree(t, gp, outside)
}

// checkWorkTree checks a prepared guest working tree against testRepo's.
func checkWorkTree(t *testing.T, gp, outside string) {
	t.Helper()
	for name, want := range map[string]string{"a.txt": "a3 staged\n", "b.txt": "b3 unstaged\n", "new.txt": "new\n", "dir/new2.txt": "new2\n"} {
		if b, err := os.ReadFile(filepath.Join(gp, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	for _, absent := range []string{"secret.log", "build", "c.txt"} {
		if _, err := os.Lstat(filepath.Join(gp, absent)); !os.IsNotExist(err) {
			t.Errorf("%s present in the guest (%v)", absent, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(gp, "outside")); err != nil || l != outside {
		t.Errorf("outside link = %q, %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(gp, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("run.sh mode: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(gp, "private.txt")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private.txt mode: %v %v", fi, err)
	}
}

// TestRoundTripLocally prepares, commits "in the guest", leaves
// uncommitted work, captures, bundles and imports into the host
// repository, and checks that the user's branch, index and working tree
// did not move.
func TestRoundTripLocally(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	for _, mode := range []model.WorkspacePrepareMode{model.WorkspacePrepareModeShallowOverlay, model.WorkspacePrepareModeFullCopy} {
		t.Run(string(mode), func(t *testing.T) {
			root, _ := testRepo(t)
			gp := filepath.Join(t.TempDir(), "proj")
			repo := prepareLocally(t, root, gp, mode, "banger/vm")
			hostHead, hostStatus := revParse(t, root, "HEAD"), sh(t, root, "git status --porcelain")
			hostBranch := sh(t, root, "git symbolic-ref HEAD")

			// Nothing done yet: the capture has only the base, no bundle;
			// the prepared working tree's changes are uncommitted work.
			c, err := ParseCapture(guestRun(t, CaptureScript(gp, "banger/vm", repo.Head), nil), repo.Head)
			if err != nil {
				t.Fatal(err)
			}
			if c.Head != repo.Head || c.WIP == "" || !c.Bundle {
				t.Errorf("first capture = %+v", c)
			}

			// Work in the guest: a commit, then uncommitted work.
			sh(t, gp, "git add -A && git commit -qm 'guest commit' && echo later > later.txt && echo more >> a.txt")
			guestHead := revParse(t, gp, "HEAD")
			c, err = ParseCapture(guestRun(t, CaptureScript(gp, "banger/vm", repo.Head), nil), repo.Head)
			if err != nil {
				t.Fatal(err)
			}
			if c.Head != guestHead || c.WIP == "" || !c.Bundle {
				t.Fatalf("capture = %+v, head %s", c, guestHead)
			}
			// Capturing again gives the same wip commit; the guest's own
			// index is untouched.
			again, _ := ParseCapture(guestRun(t, CaptureScript(gp, "banger/vm", repo.Head), nil), repo.Head)
			if again != c {
				t.Errorf("second capture %+v != %+v", again, c)
			}
			if got := sh(t, gp, "git status --porcelain"); got != " M a.txt\n?? later.txt\n" {
				t.Errorf("guest status after capture: %q", got)
			}
			if got := revParse(t, gp, c.WIP+"^"); got != guestHead {
				t.Errorf("wip parent %s, want %s", got, guestHead)
			}

			bundle := filepath.Join(t.TempDir(), "ws.bundle")
			f, _ := os.Create(bundle)
			cmd := exec.Command("sh", "-c", BundleScript(gp, "banger/vm", repo.Head, c.WIP != ""))
			cmd.Stdout = f
			if err := cmd.Run(); err != nil {
				t.Fatalf("bundle: %v", err)
			}
			f.Close()
			remote, wip := RemoteRef("vm", "banger/vm"), WIPRef("vm", "banger/vm")
			if err := ImportBundle(ctx, hostexec.Real{}, root, bundle, FetchRefs("vm", "banger/vm", c.Head, c.WIP)); err != nil {
				t.Fatal(err)
			}
			if got := revParse(t, root, remote); got != guestHead {
				t.Errorf("%s = %s, want %s", remote, got, guestHead)
			}
			if got := revParse(t, root, remote+"^"); got != repo.Head {
				t.Errorf("guest commit's parent %s, want the base %s", got, repo.Head)
			}
			if got := sh(t, root, "git show "+wip+":later.txt"); got != "later\n" {
				t.Errorf("wip later.txt = %q", got)
			}
			if got := sh(t, root, "git branch -r"); !strings.Contains(got, "banger-vm/banger/vm") {
				t.Errorf("git branch -r:\n%s", got)
			}
			n, err := CountCommits(ctx, hostexec.Real{}, root, repo.Head, guestHead)
			if err != nil || n != 1 {
				t.Errorf("CountCommits = %d, %v", n, err)
			}
			// The user's side did not move.
			if revParse(t, root, "HEAD") != hostHead || sh(t, root, "git status --porcelain") != hostStatus || sh(t, root, "git symbolic-ref HEAD") != hostBranch {
				t.Errorf("host repository changed")
			}

			// diff and log show the work against the base.
			diff := guestRun(t, DiffScript(gp, repo.Head, GitOutput{}), nil)
			for _, want := range []string{"later.txt", "+more", "new.txt"} {
				if !strings.Contains(diff, want) {
					t.Errorf("diff lacks %q:\n%s", want, diff)
				}
			}
			if log := guestRun(t, LogScript(gp, "banger/vm", repo.Head, GitOutput{Oneline: true}), nil); !strings.Contains(log, "guest commit") || strings.Count(log, "\n") != 1 {
				t.Errorf("log:\n%s", log)
			}

			// Once the work is committed and fetched, a wip ref goes away.
			sh(t, gp, "git add -A && git commit -qm second")
			c, _ = ParseCapture(guestRun(t, CaptureScript(gp, "banger/vm", repo.Head), nil), repo.Head)
			if c.WIP != "" {
				t.Errorf("wip after committing everything: %+v", c)
			}
			bundle2 := filepath.Join(t.TempDir(), "ws2.bundle")
			f, _ = os.Create(bundle2)
			cmd = exec.Command("sh", "-c", BundleScript(gp, "banger/vm", repo.Head, false))
			cmd.Stdout = f
			if err := cmd.Run(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := ImportBundle(ctx, hostexec.Real{}, root, bundle2, FetchRefs("vm", "banger/vm", c.Head, "")); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "-q", wip).Output(); err == nil {
				t.Errorf("wip ref still there: %s", out)
			}
		})
	}
}

func TestImportBundleRefusesOtherRefs(t *testing.T) {
	isolateGit(t)
	root, _ := testRepo(t)
	head := revParse(t, root, "HEAD")
	for _, ref := range []string{"refs/heads/main", "HEAD", "refs/remotes/origin/main"} {
		if err := ImportBundle(context.Background(), hostexec.Real{}, root, "", []RefUpdate{{Ref: ref, Commit: head, Source: "refs/heads/banger/vm"}}); err == nil {
			t.Errorf("ImportBundle wrote %s", ref)
		}
	}
}

// TestRenameBranchScript: a fork's child's work branch is renamed in
// place, still checked out, its commits kept; a second run passes; a
// hostile path stays one argument.
func TestRenameBranchScript(t *testing.T) {
	isolateGit(t)
	dir := filepath.Join(t.TempDir(), "it's $(reboot)")
	os.MkdirAll(dir, 0o755)
	sh(t, dir, `git init -q -b main . && git commit -q --allow-empty -m base && git checkout -q -b banger/dev && git commit -q --allow-empty -m work`)
	head := revParse(t, dir, "HEAD")
	for i := 0; i < 2; i++ {
		guestRun(t, RenameBranchScript(dir, "banger/dev", "banger/dev-1"), nil)
	}
	if got := strings.TrimSpace(sh(t, dir, "git symbolic-ref HEAD")); got != "refs/heads/banger/dev-1" {
		t.Errorf("HEAD is %s", got)
	}
	if got := revParse(t, dir, "banger/dev-1"); got != head {
		t.Errorf("the branch is at %s; was %s", got, head)
	}
	if out := sh(t, dir, "git branch --list banger/dev"); strings.TrimSpace(out) != "" {
		t.Errorf("the old branch is still there: %q", out)
	}
}
