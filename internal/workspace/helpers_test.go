package workspace

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testutil"
)

// isolateGit gives the test its own HOME and no system git config, so the
// machine's git settings cannot change what the tests see.
func isolateGit(t *testing.T) {
	t.Helper()
	testutil.RequireTools(t, "git", "tar", "sh")
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	t.Setenv("GIT_AUTHOR_NAME", "Test Author")
	t.Setenv("GIT_AUTHOR_EMAIL", "author@example.com")
	t.Setenv("GIT_COMMITTER_NAME", "Test Author")
	t.Setenv("GIT_COMMITTER_EMAIL", "author@example.com")
}

// sh runs a shell command line in dir and returns its output; failure
// fails the test.
func sh(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sh -c %q in %s: %v\n%s", script, dir, err, out)
	}
	return string(out)
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// testRepo makes a repository with three commits on main and then, in
// the working tree: a staged change (a.txt), an unstaged change (b.txt),
// a deleted file (c.txt), untracked files (new.txt, dir/new2.txt),
// ignored files (secret.log, build/out.bin), an executable (run.sh, 0755),
// a private file (private.txt, 0600) and a symlink to a file outside the
// repository (outside -> outsideTarget). It returns the repository root
// and the outside file.
func testRepo(t *testing.T) (root, outsideTarget string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "proj")
	outsideTarget = filepath.Join(base, "outside-secret.txt")
	write(t, outsideTarget, "OUTSIDE-SECRET\n", 0o644)
	sh(t, base, "git init -q -b main proj")
	sh(t, root, "git config user.name 'Repo User' && git config user.email repo@example.com")
	write(t, filepath.Join(root, ".gitignore"), "*.log\nbuild/\n", 0o644)
	write(t, filepath.Join(root, "a.txt"), "a1\n", 0o644)
	write(t, filepath.Join(root, "b.txt"), "b1\n", 0o644)
	write(t, filepath.Join(root, "c.txt"), "c1\n", 0o644)
	write(t, filepath.Join(root, "run.sh"), "#!/bin/sh\necho run\n", 0o755)
	write(t, filepath.Join(root, "private.txt"), "private\n", 0o600)
	if err := os.Symlink(outsideTarget, filepath.Join(root, "outside")); err != nil {
		t.Fatal(err)
	}
	sh(t, root, "git add -A && git commit -qm one")
	write(t, filepath.Join(root, "a.txt"), "a2\n", 0o644)
	sh(t, root, "git commit -qam two")
	write(t, filepath.Join(root, "b.txt"), "b2\n", 0o644)
	sh(t, root, "git commit -qam three")
	// The working tree's state.
	write(t, filepath.Join(root, "a.txt"), "a3 staged\n", 0o644)
	sh(t, root, "git add a.txt")
	write(t, filepath.Join(root, "b.txt"), "b3 unstaged\n", 0o644)
	os.Remove(filepath.Join(root, "c.txt"))
	write(t, filepath.Join(root, "new.txt"), "new\n", 0o644)
	write(t, filepath.Join(root, "dir", "new2.txt"), "new2\n", 0o644)
	write(t, filepath.Join(root, "secret.log"), "ignored\n", 0o644)
	write(t, filepath.Join(root, "build", "out.bin"), "ignored too\n", 0o644)
	return root, outsideTarget
}

func revParse(t *testing.T, dir, rev string) string {
	t.Helper()
	return strings.TrimSpace(sh(t, dir, "git rev-parse "+rev))
}
