package workspace

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func TestReadBundleHeader(t *testing.T) {
	a, b, c := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 64)
	pack := "PACK\x00\x00\x00\x02"
	tests := []struct {
		name string
		in   string
		want BundleHeader
		err  string
	}{
		{name: "v2", in: "# v2 git bundle\n-" + a + " base subject\n" + b + " refs/heads/banger/vm\n\n" + pack,
			want: BundleHeader{Version: 2, ObjectFormat: "sha1", Prerequisites: []string{a}, Refs: []BundleRef{{Object: b, Name: "refs/heads/banger/vm"}}}},
		{name: "v3 sha256", in: "# v3 git bundle\n@object-format=sha256\n" + c + " refs/banger/wip\n\n" + pack,
			want: BundleHeader{Version: 3, ObjectFormat: "sha256", Refs: []BundleRef{{Object: c, Name: "refs/banger/wip"}}}},
		{name: "prerequisite without subject", in: "# v2 git bundle\n-" + a + "\n\n", want: BundleHeader{Version: 2, ObjectFormat: "sha1", Prerequisites: []string{a}}},
		// Hostile names parse (CheckBundle refuses them); what cannot be
		// a header line is refused here.
		{name: "option as a name", in: "# v2 git bundle\n" + b + " --prune\n\n", want: BundleHeader{Version: 2, ObjectFormat: "sha1", Refs: []BundleRef{{Object: b, Name: "--prune"}}}},
		{name: "not a bundle", in: "PACK", err: "not a git bundle"},
		{name: "v4", in: "# v4 git bundle\n\n", err: "not a git bundle"},
		{name: "no end", in: "# v2 git bundle\n" + b + " refs/heads/x\n", err: "ends before"},
		{name: "no newline at all", in: "# v2 git bundle", err: "not a git bundle"},
		{name: "carriage return", in: "# v2 git bundle\n" + b + " refs/heads/x\r\n\n", err: "carriage return"},
		{name: "nul", in: "# v2 git bundle\n" + b + " refs/heads/x\x00\n\n", err: "NUL"},
		{name: "filter capability", in: "# v3 git bundle\n@filter=blob:none\n\n", err: "not supported"},
		{name: "capability in v2", in: "# v2 git bundle\n@object-format=sha1\n\n", err: "out of place"},
		{name: "capability after a ref", in: "# v3 git bundle\n" + b + " refs/heads/x\n@object-format=sha1\n\n", err: "out of place"},
		{name: "prerequisite after a ref", in: "# v2 git bundle\n" + b + " refs/heads/x\n-" + a + "\n\n", err: "after the refs"},
		{name: "short object name", in: "# v2 git bundle\n" + b[:39] + " refs/heads/x\n\n", err: "not \"<sha1"},
		{name: "sha256 name in sha1 bundle", in: "# v2 git bundle\n" + c + " refs/heads/x\n\n", err: "not \"<sha1"},
		{name: "uppercase object name", in: "# v2 git bundle\n" + strings.ToUpper(b) + " refs/heads/x\n\n", err: "not \"<sha1"},
		{name: "no name", in: "# v2 git bundle\n" + b + "\n\n", err: "not \"<sha1"},
		{name: "empty name", in: "# v2 git bundle\n" + b + " \n\n", err: "not \"<sha1"},
		{name: "bad prerequisite", in: "# v2 git bundle\n-HEAD\n\n", err: "prerequisite"},
		{name: "too many lines", in: "# v2 git bundle\n" + strings.Repeat(b+" refs/heads/x\n", 2000) + "\n", err: "more than 1024 lines"},
		{name: "too long", in: "# v2 git bundle\n" + b + " refs/heads/" + strings.Repeat("x", 300<<10) + "\n\n", err: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadBundleHeader(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("ReadBundleHeader: %v, want an error saying %q", err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ReadBundleHeader = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestCheckBundle(t *testing.T) {
	head, wip, other := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 40)
	want := map[string]string{"refs/heads/banger/vm": head, "refs/banger/wip": wip}
	hdr := func(refs ...BundleRef) BundleHeader {
		return BundleHeader{Version: 2, ObjectFormat: "sha1", Refs: refs}
	}
	tests := []struct {
		name string
		h    BundleHeader
		err  string
	}{
		{name: "both", h: hdr(BundleRef{head, "refs/heads/banger/vm"}, BundleRef{wip, "refs/banger/wip"})},
		{name: "wip only (branch at the base)", h: hdr(BundleRef{wip, "refs/banger/wip"})},
		{name: "no refs", h: hdr()},
		{name: "--prune", h: hdr(BundleRef{head, "refs/heads/banger/vm"}, BundleRef{head, "--prune"}), err: `ref "--prune", which fetch did not ask for`},
		{name: "--update-head-ok", h: hdr(BundleRef{head, "--update-head-ok"}), err: `"--update-head-ok"`},
		{name: "refspec", h: hdr(BundleRef{head, "+refs/heads/*:refs/heads/*"}), err: `"+refs/heads/*:refs/heads/*"`},
		{name: "the user's branch", h: hdr(BundleRef{head, "refs/heads/main"}), err: `"refs/heads/main"`},
		{name: "HEAD", h: hdr(BundleRef{head, "HEAD"}), err: `"HEAD"`},
		{name: "escape sequence in a name", h: hdr(BundleRef{head, "refs/heads/\x1b]0;pwned\x07"}), err: `"refs/heads/\x1b]0;pwned\a"`},
		{name: "twice", h: hdr(BundleRef{head, "refs/heads/banger/vm"}, BundleRef{head, "refs/heads/banger/vm"}), err: "twice"},
		{name: "another commit", h: hdr(BundleRef{other, "refs/heads/banger/vm"}), err: "where the capture saw"},
		{name: "sha256 bundle", h: BundleHeader{Version: 3, ObjectFormat: "sha256"}, err: "sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckBundle(tt.h, "sha1", want)
			if tt.err == "" {
				if err != nil {
					t.Errorf("CheckBundle: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("CheckBundle: %v, want an error saying %q", err, tt.err)
			}
		})
	}
}

// hostSnapshot is everything of a repository a fetch must not change:
// every ref, HEAD, the index, the working tree's status, FETCH_HEAD.
func hostSnapshot(t *testing.T, root string) string {
	t.Helper()
	idx, err := os.ReadFile(filepath.Join(root, ".git", "index"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(idx)
	_, fhErr := os.Stat(filepath.Join(root, ".git", "FETCH_HEAD"))
	return sh(t, root, "git for-each-ref --format='%(refname) %(objectname)' && git symbolic-ref HEAD && git rev-parse HEAD && git status --porcelain") +
		"index " + hex.EncodeToString(sum[:]) + "\nFETCH_HEAD absent " + map[bool]string{true: "yes", false: "no"}[os.IsNotExist(fhErr)] + "\n"
}

// injectHeader returns the bundle at path with lines added at the end of
// its header, as a tampered guest git would write it.
func injectHeader(t *testing.T, path string, lines ...string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.Index(b, []byte("\n\n"))
	if end < 0 {
		t.Fatal("no end of header in the bundle")
	}
	var out bytes.Buffer
	out.Write(b[:end+1])
	for _, l := range lines {
		out.WriteString(l + "\n")
	}
	out.Write(b[end+1:])
	p := filepath.Join(t.TempDir(), "hostile.bundle")
	if err := os.WriteFile(p, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestImportBundleHostile is the attack of the 2026-12-01 review: a
// guest whose git adds header lines that the old import passed to `git
// fetch` as arguments (deleting the user's branches with --prune,
// overwriting them with a refspec). Every such bundle is refused, with
// nothing of the host repository changed, and the guest's objects not
// even imported.
func TestImportBundleHostile(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root, _ := testRepo(t)
	sh(t, root, "git branch feature-x && git branch release HEAD~1")
	gp := filepath.Join(t.TempDir(), "proj")
	repo := prepareLocally(t, root, gp, model.WorkspacePrepareModeFullCopy, "banger/vm")
	sh(t, gp, "git add -A && git commit -qm 'guest commit' && echo wip > wip.txt")
	c, err := ParseCapture(guestRun(t, CaptureScript(gp, "banger/vm", repo.Head), nil), repo.Head)
	if err != nil {
		t.Fatal(err)
	}
	legit := filepath.Join(t.TempDir(), "ws.bundle")
	f, _ := os.Create(legit)
	cmd := exec.Command("sh", "-c", BundleScript(gp, "banger/vm", repo.Head, true))
	cmd.Stdout = f
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := hostSnapshot(t, root)
	updates := FetchRefs("vm", "banger/vm", c.Head, c.WIP)

	for _, tt := range []struct {
		name  string
		lines []string
		want  string
	}{
		{name: "--prune", lines: []string{c.Head + " --prune"}, want: `"--prune"`},
		{name: "--update-head-ok", lines: []string{c.Head + " --update-head-ok"}, want: `"--update-head-ok"`},
		{name: "refspec over the user's branches", lines: []string{c.Head + " +refs/heads/*:refs/heads/*"}, want: `"+refs/heads/*:refs/heads/*"`},
		{name: "all three", lines: []string{c.Head + " --prune", c.Head + " --update-head-ok", c.Head + " +refs/heads/*:refs/heads/*"}, want: "--prune"},
		{name: "the user's branch", lines: []string{c.Head + " refs/heads/main"}, want: `"refs/heads/main"`},
		{name: "a remote-tracking ref", lines: []string{c.Head + " refs/remotes/banger-vm/banger/vm"}, want: "did not ask for"},
		{name: "the work branch twice", lines: []string{repo.Head + " refs/heads/banger/vm"}, want: "twice"},
		{name: "terminal escapes", lines: []string{c.Head + " refs/heads/\x1b[2J\x1b]0;owned\x07"}, want: `\x1b[2J`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bundle := injectHeader(t, legit, tt.lines...)
			err := ImportBundle(ctx, hostexec.Real{}, root, bundle, updates)
			if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "nothing was written") {
				t.Fatalf("ImportBundle: %v; want ECONFLICT saying %q", err, tt.want)
			}
			if strings.ContainsAny(err.Error(), "\x1b\x07") {
				t.Errorf("error carries raw control characters: %q", err.Error())
			}
			if got := hostSnapshot(t, root); got != before {
				t.Errorf("host repository changed:\n%s\nwas:\n%s", got, before)
			}
			if HasCommit(ctx, hostexec.Real{}, root, c.Head) {
				t.Errorf("the refused bundle's commit %s is in the host repository", c.Head)
			}
		})
	}

	// The capture says one commit, the bundle carries the branch at
	// another (the guest moved it between the two, or lies).
	t.Run("branch at another commit than captured", func(t *testing.T) {
		lying := FetchRefs("vm", "banger/vm", repo.Head, c.WIP)
		err := ImportBundle(ctx, hostexec.Real{}, root, legit, lying)
		if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "where the capture saw") {
			t.Fatalf("ImportBundle: %v", err)
		}
		if got := hostSnapshot(t, root); got != before {
			t.Errorf("host repository changed:\n%s\nwas:\n%s", got, before)
		}
	})

	// The untampered bundle goes in, into banger's refs only.
	if err := ImportBundle(ctx, hostexec.Real{}, root, legit, updates); err != nil {
		t.Fatalf("ImportBundle of the real bundle: %v", err)
	}
	after := hostSnapshot(t, root)
	for _, line := range strings.Split(before, "\n") {
		if !strings.Contains(after, line) {
			t.Errorf("the fetch changed %q", line)
		}
	}
	if got := revParse(t, root, RemoteRef("vm", "banger/vm")); got != c.Head {
		t.Errorf("work branch ref %s, want %s", got, c.Head)
	}
}

// TestImportBundleChecksUpdates refuses updates that are not banger's to
// make, whatever the bundle says.
func TestImportBundleChecksUpdates(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root, _ := testRepo(t)
	head := revParse(t, root, "HEAD")
	before := hostSnapshot(t, root)
	for _, u := range []RefUpdate{
		{Ref: "refs/heads/main", Commit: head, Source: "refs/heads/banger/vm"},
		{Ref: "refs/remotes/banger-vm/x", Commit: head, Source: "--prune"},
		{Ref: "refs/remotes/banger-vm/x", Commit: head, Source: "refs/heads/a..b"},
		{Ref: "refs/remotes/banger-vm/x", Commit: head},
		{Ref: "refs/remotes/banger-vm/x y", Commit: head, Source: "refs/heads/x"},
		{Ref: "refs/remotes/banger-vm/x", Commit: "HEAD", Source: "refs/heads/x"},
		{Ref: "refs/remotes/banger-vm/x", Commit: head + "00", Source: "refs/heads/x"},
	} {
		if err := ImportBundle(ctx, hostexec.Real{}, root, "", []RefUpdate{u}); err == nil {
			t.Errorf("ImportBundle took %+v", u)
		}
	}
	if got := hostSnapshot(t, root); got != before {
		t.Errorf("host repository changed:\n%s\nwas:\n%s", got, before)
	}
}
