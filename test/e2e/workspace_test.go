package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/testutil"
	"banger/test/harness"
)

// nobody is the unprivileged user the workspace test runs the CLI as.
const nobody = 65534

// wsEnv is the workspace test's world: a daemon, an unprivileged user
// with a home, and their repository.
type wsEnv struct {
	t    *testing.T
	d    *harness.Daemon
	user *harness.User
	home string
	repo string
}

// with returns e reporting to t (a subtest's).
func (e *wsEnv) with(t *testing.T) *wsEnv {
	c := *e
	c.t = t
	return &c
}

// root runs the CLI as root and fails the test on a non-zero exit.
func (e *wsEnv) root(args ...string) harness.Result {
	e.t.Helper()
	r := e.d.CLI(args...)
	if r.Code != 0 {
		e.t.Fatalf("banger %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// vm returns a VM as root sees it.
func (e *wsEnv) vm(name string) api.VMView {
	e.t.Helper()
	var v api.VMView
	if err := json.Unmarshal([]byte(e.root("vm", "inspect", name, "--json").Stdout), &v); err != nil {
		e.t.Fatalf("vm inspect --json: %v", err)
	}
	return v
}

// as runs the CLI as the unprivileged user.
func (e *wsEnv) as(args ...string) harness.Result {
	return e.d.CLIAs(e.user, "", args...)
}

// mustAs runs the CLI as the user and fails the test on a non-zero exit.
func (e *wsEnv) mustAs(args ...string) harness.Result {
	e.t.Helper()
	r := e.as(args...)
	if r.Code != 0 {
		e.t.Fatalf("banger %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// refuses runs the CLI as the user and checks it fails saying want.
func (e *wsEnv) refuses(want string, args ...string) {
	e.t.Helper()
	r := e.as(args...)
	if r.Code == 0 || !strings.Contains(r.Stderr, want) {
		e.t.Errorf("banger %s: want a failure saying %q, got %s", strings.Join(args, " "), want, r)
	}
}

// guest runs a shell command in the VM as the user and returns stdout.
func (e *wsEnv) guest(vm, script string) string {
	e.t.Helper()
	return e.mustAs("exec", vm, "--", "sh", "-c", script).Stdout
}

// git runs git in dir on the host (as root, which the repository's
// owner check would otherwise refuse).
func (e *wsEnv) git(dir string, args ...string) string {
	e.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "safe.directory=*", "-C", dir}, args...)...)
	// Never refresh (rewrite) the user's index as root.
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

func (e *wsEnv) write(path, content string, mode os.FileMode) {
	e.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		e.t.Fatal(err)
	}
	os.Chmod(path, mode)
}

// sh runs a shell script on the host (as root) in dir.
func (e *wsEnv) sh(dir, script string) {
	e.t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+e.home, "GIT_AUTHOR_NAME=Host User", "GIT_AUTHOR_EMAIL=host@example.com", "GIT_COMMITTER_NAME=Host User", "GIT_COMMITTER_EMAIL=host@example.com")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("sh -c %q: %v\n%s", script, err, out)
	}
}

// makeRepo builds the user's repository: three commits, then a staged
// change (a.txt), an unstaged change (b.txt), a deleted file (c.txt),
// untracked files (new.txt, dir/new2.txt), ignored files (secret.log,
// build/out.bin), an executable and a symlink to a file outside the
// repository. Everything is the user's.
func (e *wsEnv) makeRepo() {
	r := e.repo
	e.write(filepath.Join(e.home, "outside.txt"), "outside the repository\n", 0o644)
	e.sh(e.home, "git init -q -b main proj")
	e.sh(r, "git config user.name 'Repo User' && git config user.email repo@example.com")
	e.write(filepath.Join(r, ".gitignore"), "*.log\nbuild/\n", 0o644)
	e.write(filepath.Join(r, "a.txt"), "a1\n", 0o644)
	e.write(filepath.Join(r, "b.txt"), "b1\n", 0o644)
	e.write(filepath.Join(r, "c.txt"), "c1\n", 0o644)
	e.write(filepath.Join(r, "run.sh"), "#!/bin/sh\necho run\n", 0o755)
	os.Symlink(filepath.Join(e.home, "outside.txt"), filepath.Join(r, "outside"))
	e.sh(r, "git add -A && git commit -qm one && echo a2 > a.txt && git commit -qam two && echo b2 > b.txt && git commit -qam three")
	e.sh(r, "git branch feature-x && git branch release HEAD~1")
	e.write(filepath.Join(r, "a.txt"), "a3 staged\n", 0o644)
	e.sh(r, "git add a.txt")
	e.write(filepath.Join(r, "b.txt"), "b3 unstaged\n", 0o644)
	os.Remove(filepath.Join(r, "c.txt"))
	e.write(filepath.Join(r, "new.txt"), "new\n", 0o644)
	e.write(filepath.Join(r, "dir", "new2.txt"), "new2\n", 0o644)
	e.write(filepath.Join(r, "secret.log"), "ignored\n", 0o644)
	e.write(filepath.Join(r, "build", "out.bin"), "ignored too\n", 0o644)
}

// hostState is what fetch must never change: HEAD, the branch, the
// user's branches and tags, the index, status.
func (e *wsEnv) hostState() string {
	e.t.Helper()
	idx, err := os.ReadFile(filepath.Join(e.repo, ".git", "index"))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.git(e.repo, "rev-parse", "HEAD") + e.git(e.repo, "symbolic-ref", "HEAD") + e.git(e.repo, "for-each-ref", "refs/heads", "refs/tags") +
		fmt.Sprintf("index %x\n", sha256.Sum256(idx)) + e.git(e.repo, "status", "--porcelain")
}

func (e *wsEnv) workspaces(u *harness.User) []model.Workspace {
	e.t.Helper()
	r := e.d.CLIAs(u, "", "workspace", "ls", "--json")
	if r.Code != 0 {
		e.t.Fatalf("workspace ls: %s", r)
	}
	var out []model.Workspace
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		e.t.Fatalf("workspace ls --json: %v\n%s", err, r.Stdout)
	}
	return out
}

// hostileGit installs, as /usr/local/bin/git in the guest (ahead of
// /usr/bin on root's PATH), a git that writes every `git bundle create -`
// with extra header lines: `<oid> --prune`, `<oid> --update-head-ok`,
// `<oid> +refs/heads/*:refs/heads/*` and `<oid> refs/heads/main`.
const hostileGit = `cat > /usr/local/bin/git <<'EOF'
#!/bin/sh
if [ "$1" = bundle ] && [ "$2" = create ] && [ "$3" = - ]; then
	shift 3
	tmp=$(mktemp)
	/usr/bin/git bundle create "$tmp" "$@" || exit $?
	oid=$(/usr/bin/git rev-parse HEAD)
	hlen=$(sed '/^$/q' "$tmp" | wc -c)
	sed '/^$/q' "$tmp" | sed '$d'
	printf '%s --prune\n%s --update-head-ok\n%s +refs/heads/*:refs/heads/*\n%s refs/heads/main\n\n' "$oid" "$oid" "$oid" "$oid"
	tail -c +$((hlen + 1)) "$tmp"
	rm -f "$tmp"
	exit 0
fi
exec /usr/bin/git "$@"
EOF
chmod 755 /usr/local/bin/git
`

// TestWorkspace is issue F's end-to-end test, on one guest: file sync at
// create (a file, a directory, a missing path, a file the user cannot
// read, guest paths with ".."), then workspaces in every mode from a
// repository with history and every kind of working tree change, bad
// input refused without changing anything, a commit made in the guest
// fetched into the host repository (which the fetch leaves alone
// otherwise), work captured before a stop and fetched from the stopped
// VM, and `vm rm` refusing unfetched work until --force. The CLI runs as
// an unprivileged user throughout.
func TestWorkspace(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "git", "tar")
	base, err := os.MkdirTemp("/tmp", "bgws-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	home := filepath.Join(base, "home")
	e := &wsEnv{t: t, home: home, repo: filepath.Join(home, "proj"), user: &harness.User{UID: nobody, GID: nobody, Home: home}}

	// The user's file sync sources: a file, a directory, an executable,
	// and a file only root can read.
	e.write(filepath.Join(home, "sync", "gitconfig"), "[alias]\n\tst = status\n", 0o644)
	e.write(filepath.Join(home, "sync", "tool", "conf"), "level = 3\n", 0o644)
	e.write(filepath.Join(home, "sync", "tool", "sub", "deep"), "deep\n", 0o644)
	os.Symlink("conf", filepath.Join(home, "sync", "tool", "link"))
	e.write(filepath.Join(home, "sync", "run.sh"), "#!/bin/sh\necho synced\n", 0o644)
	secret := filepath.Join(home, "sync", "secret.txt")
	e.write(secret, "for the user only\n", 0o600)
	e.makeRepo()
	e.sh(base, fmt.Sprintf("chown -R %d:%d home", nobody, nobody))
	if err := os.Chown(secret, 0, 0); err != nil {
		t.Fatal(err)
	}

	e.d = harness.NewE2EDaemon(t, a, `socket_group = "nogroup"

[[file_sync]]
host = "~/sync/gitconfig"
guest = ".gitconfig"

[[file_sync]]
host = "sync/tool"
guest = "/root/.config/tool"

[[file_sync]]
host = "~/no-such-file"
guest = "missing"

[[file_sync]]
host = "~/sync/run.sh"
guest = "bin/run.sh"
mode = "0755"

[[file_sync]]
host = "~/sync/secret.txt"
guest = "secret.txt"
`)
	d := e.d

	t.Run("file sync refuses an unreadable file and creates nothing", func(t *testing.T) {
		e := e.with(t)
		r := e.as("vm", "create", "ws")
		if r.Code == 0 || !strings.Contains(r.Stderr, "secret.txt") || !strings.Contains(r.Stderr, "permission denied") {
			t.Fatalf("create with an unreadable file: %s", r)
		}
		if r := e.root("vm", "ls", "-q"); strings.TrimSpace(r.Stdout) != "" {
			t.Errorf("vm ls after the refused create: %q", r.Stdout)
		}
	})
	if t.Failed() {
		return
	}

	// Now the user can read it: the create goes through (one boot for
	// the whole test), warning about the missing path.
	os.Chown(secret, nobody, nobody)
	r := e.mustAs("vm", "create", "ws", "--vcpus", "2", "--memory", "1G", "--disk-size", "2G", "--overlay-size", "2G")
	if !strings.Contains(r.Stderr, "warning:") || !strings.Contains(r.Stderr, "no-such-file") || !strings.Contains(r.Stderr, "file-sync") {
		t.Errorf("create progress lacks the missing-path warning or the file sync step:\n%s", r.Stderr)
	}

	t.Run("file sync landed under /root, owned by root, with modes", func(t *testing.T) {
		e := e.with(t)
		got := e.guest("ws", `cd /root && stat -c '%a %U %n' .gitconfig .config/tool .config/tool/conf .config/tool/sub .config/tool/sub/deep bin/run.sh secret.txt && readlink .config/tool/link && cat .gitconfig .config/tool/sub/deep secret.txt && test ! -e missing && echo no-missing && test -s .ssh/authorized_keys && echo keys`)
		want := `600 root .gitconfig
755 root .config/tool
600 root .config/tool/conf
755 root .config/tool/sub
600 root .config/tool/sub/deep
755 root bin/run.sh
600 root secret.txt
conf
[alias]
	st = status
deep
for the user only
no-missing
keys
`
		if got != want {
			t.Errorf("guest files:\n%s\nwant:\n%s", got, want)
		}
		if out := e.guest("ws", "/root/bin/run.sh"); out != "synced\n" {
			t.Errorf("run.sh: %q", out)
		}
		// The tar was applied and removed.
		v := e.vm("ws")
		if _, err := os.Stat(filepath.Join(v.Runtime.VMDir, "file-sync.tar")); !os.IsNotExist(err) {
			t.Errorf("file-sync.tar left: %v", err)
		}
	})

	t.Run("file sync guest paths with .. are refused", func(t *testing.T) {
		e := e.with(t)
		// At runtime: an archive with an escaping entry sent straight to
		// the API for a VM that has not booted.
		e.root("vm", "create", "other", "--no-start")
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "../etc/cron.d/evil", Size: 2, Mode: 0o644})
		tw.Write([]byte("x\n"))
		tw.Close()
		_, err := api.NewClient(d.Socket).UploadFileSync(context.Background(), "other", func(w io.Writer) error {
			_, err := w.Write(buf.Bytes())
			return err
		})
		if model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "..") {
			t.Errorf("escaping archive: %v", err)
		}
		v := e.vm("other")
		if _, err := os.Stat(filepath.Join(v.Runtime.VMDir, "file-sync.tar")); !os.IsNotExist(err) {
			t.Errorf("escaping archive stored: %v", err)
		}
		e.root("vm", "rm", "other")
		// In the configuration: the daemon refuses to start.
		bad := harness.NewDaemon(t, harness.Options{Config: "[[file_sync]]\nhost = \"~/x\"\nguest = \"../etc/x\"\n"})
		err = bad.TryStart()
		if err == nil || !strings.Contains(err.Error(), "file_sync") {
			t.Errorf("daemon with a .. guest path: %v", err)
		}
	})

	hostBefore := e.hostState()

	t.Run("bad input is refused and changes nothing", func(t *testing.T) {
		e := e.with(t)
		e.sh(home, "mkdir -p notrepo && git init -q -b main empty && mkdir -p lfs sub")
		e.sh(filepath.Join(home, "lfs"), "git init -q -b main . && echo '*.bin filter=lfs diff=lfs merge=lfs -text' > .gitattributes && git add . && git commit -qm lfs")
		e.sh(filepath.Join(home, "sub"), "git init -q -b main lib && cd lib && echo l > l && git add . && git commit -qm l && cd .. && git init -q -b main top && cd top && echo t > t && git add . && git commit -qm t && git -c protocol.file.allow=always submodule -q add ../lib lib && git commit -qm sub")
		e.sh(base, fmt.Sprintf("chown -R %d:%d home && mkdir -p private && chmod 700 private", nobody, nobody))

		e.refuses("not in a git repository", "workspace", "prepare", "ws", filepath.Join(home, "notrepo"))
		e.refuses("no commits yet", "workspace", "prepare", "ws", filepath.Join(home, "empty"))
		e.refuses("Git LFS", "workspace", "prepare", "ws", filepath.Join(home, "lfs"))
		e.refuses("submodules", "workspace", "prepare", "ws", filepath.Join(home, "sub", "top"))
		e.refuses("permission denied", "workspace", "prepare", "ws", filepath.Join(base, "private"))
		e.refuses("branch name", "workspace", "prepare", "ws", e.repo, "--branch", "bad..name")
		e.refuses("..", "workspace", "prepare", "ws", e.repo, "--guest-path", "../etc")
		e.refuses("workspaces go under /root", "workspace", "prepare", "ws", e.repo, "--guest-path", "/etc/cron.d")
		e.refuses("--mode", "workspace", "prepare", "ws", e.repo, "--mode", "everything")
		e.refuses("not found", "workspace", "prepare", "nosuchvm", e.repo)
		// A VM that is not running (root's, created for this).
		e.root("vm", "create", "stopped", "--no-start")
		if r := d.CLI("workspace", "prepare", "stopped", e.repo); r.Code == 0 || !strings.Contains(r.Stderr, "banger vm start stopped") {
			t.Errorf("prepare into a stopped vm: %s", r)
		}
		e.root("vm", "rm", "stopped")

		if got := e.hostState(); got != hostBefore {
			t.Errorf("host repository changed:\n%s\nwas:\n%s", got, hostBefore)
		}
		if ws := e.workspaces(nil); len(ws) != 0 {
			t.Errorf("workspaces after refusals: %+v", ws)
		}
		if out := e.guest("ws", "ls /root"); strings.Contains(out, "notrepo") || strings.Contains(out, "proj") || strings.Contains(out, "top") {
			t.Errorf("guest /root after refusals: %q", out)
		}
	})

	head := strings.TrimSpace(e.git(e.repo, "rev-parse", "HEAD"))

	t.Run("full_copy", func(t *testing.T) {
		e := e.with(t)
		r := e.mustAs("workspace", "prepare", "ws", e.repo, "--mode", "full_copy", "--guest-path", "/root/full", "--branch", "full-work")
		if !strings.Contains(r.Stderr, "upload: sent") || !strings.Contains(r.Stdout, "workspace /root/full in vm ws (full_copy) on branch full-work") {
			t.Errorf("prepare output: %s", r)
		}
		// The guest sees what the user sees: same status (staged stays
		// staged), same HEAD, all history, on the work branch, with the
		// user's identity; ignored files absent; the symlink a link.
		got := e.guest("ws", "cd /root/full && git status --porcelain && git rev-parse HEAD && git symbolic-ref HEAD && git rev-list --count HEAD && git config user.name && stat -c %a run.sh && readlink outside && for f in secret.log build c.txt; do test -e $f && echo present: $f; done; true")
		want := e.git(e.repo, "status", "--porcelain") + head + "\nrefs/heads/full-work\n3\nRepo User\n755\n" + filepath.Join(home, "outside.txt") + "\n"
		if got != want {
			t.Errorf("guest full copy:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("shallow_overlay", func(t *testing.T) {
		e := e.with(t)
		e.mustAs("workspace", "prepare", "ws", e.repo)
		got := e.guest("ws", "cd /root/proj && git status --porcelain && git rev-parse HEAD && git rev-list --count HEAD && cat a.txt b.txt && test ! -e secret.log && test ! -e build && echo no-ignored")
		want := " M a.txt\n M b.txt\n D c.txt\n?? dir/\n?? new.txt\n" + head + "\n1\na3 staged\nb3 unstaged\nno-ignored\n"
		if got != want {
			t.Errorf("guest shallow overlay:\n%s\nwant:\n%s", got, want)
		}
		// The same repository on the same branch twice would share the
		// host ref: refused.
		e.refuses("--branch", "workspace", "prepare", "ws", e.repo, "--guest-path", "/root/again")
	})

	t.Run("metadata_only", func(t *testing.T) {
		e := e.with(t)
		e.mustAs("workspace", "prepare", "ws", e.repo, "--mode", "metadata_only", "--guest-path", "meta")
		if out := e.guest("ws", "test -e /root/meta && echo there || echo absent"); out != "absent\n" {
			t.Errorf("metadata_only wrote to the guest: %q", out)
		}
		ws := e.workspaces(e.user)
		if len(ws) != 3 {
			t.Fatalf("workspace ls: %+v", ws)
		}
		for _, w := range ws {
			if w.HeadCommit != head || w.RepoRoot != e.repo || w.CurrentBranch != "main" || w.VMName != "ws" {
				t.Errorf("workspace record: %+v", w)
			}
		}
		if r := e.mustAs("workspace", "inspect", "ws", "--guest-path", "/root/meta"); !strings.Contains(r.Stdout, "metadata_only") {
			t.Errorf("inspect: %s", r.Stdout)
		}
		// Another user sees none of them.
		other := &harness.User{UID: 65533, GID: nobody, Home: home}
		if r := d.CLIAs(other, "", "workspace", "ls", "--json"); r.Code != 0 || strings.TrimSpace(r.Stdout) != "[]" {
			t.Errorf("another user's workspace ls: %s", r)
		}
	})

	t.Run("commit in the guest, fetch, the user's side untouched", func(t *testing.T) {
		e := e.with(t)
		e.guest("ws", "cd /root/proj && git commit -qam 'guest change' && echo wip > wip.txt")
		guestHead := strings.TrimSpace(e.guest("ws", "git -C /root/proj rev-parse HEAD"))

		if out := e.mustAs("workspace", "log", "ws", "--guest-path", "/root/proj", "--oneline").Stdout; !strings.Contains(out, "guest change") || strings.Count(out, "\n") != 1 {
			t.Errorf("workspace log: %q", out)
		}
		if out := e.mustAs("workspace", "diff", "ws", "--guest-path", "/root/proj").Stdout; !strings.Contains(out, "+wip") || !strings.Contains(out, "+a3 staged") {
			t.Errorf("workspace diff: %q", out)
		}

		r := e.mustAs("workspace", "fetch", "ws", "--guest-path", "/root/proj")
		if !strings.Contains(r.Stdout, "banger-ws/banger/ws") || !strings.Contains(r.Stdout, "1 commit on top") {
			t.Errorf("fetch output: %s", r)
		}
		if got := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/banger/ws")); got != guestHead {
			t.Errorf("host ref %s, want the guest's %s", got, guestHead)
		}
		if got := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/banger/ws^")); got != head {
			t.Errorf("guest commit's parent %s, want %s", got, head)
		}
		if got := e.git(e.repo, "show", "refs/remotes/banger-ws/banger/ws-wip:wip.txt"); got != "wip\n" {
			t.Errorf("wip ref's wip.txt: %q", got)
		}
		if got := e.git(e.repo, "log", "-1", "--format=%an %s", "refs/remotes/banger-ws/banger/ws"); got != "Repo User guest change\n" {
			t.Errorf("guest commit: %q", got)
		}
		if got := e.hostState(); got != hostBefore {
			t.Errorf("fetch changed the user's repository:\n%s\nwas:\n%s", got, hostBefore)
		}
		ws := e.workspaces(e.user)
		for _, w := range ws {
			if w.GuestPath == "/root/proj" && (w.Unfetched || w.Fetched.At.IsZero() || w.Fetched.Head != guestHead) {
				t.Errorf("after fetch: %+v", w)
			}
		}
	})

	t.Run("a hostile guest: fetch refused, the user's repository untouched, guest text neutralised", func(t *testing.T) {
		e := e.with(t)
		before := e.hostState()
		fetchedRef := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/banger/ws"))
		// The guest's git, first on root's PATH, adds header lines to
		// every bundle it writes: options and a refspec that the old
		// fetch passed to git as arguments (deleting or overwriting the
		// user's branches), and the user's own branch.
		e.guest("ws", hostileGit)
		e.guest("ws", "cd /root/proj && echo hostile > hostile.txt && git add hostile.txt && git commit -qm 'hostile commit'")
		hostileHead := strings.TrimSpace(e.guest("ws", "git -C /root/proj rev-parse HEAD"))

		r := e.as("workspace", "fetch", "ws", "--guest-path", "/root/proj")
		if r.Code == 0 || !strings.Contains(r.Stderr, "refusing the guest's bundle") || !strings.Contains(r.Stderr, `"--prune"`) || !strings.Contains(r.Stderr, "nothing was written") {
			t.Errorf("fetch of a tampered bundle: %s", r)
		}
		if got := e.hostState(); got != before {
			t.Errorf("the refused fetch changed the user's repository:\n%s\nwas:\n%s", got, before)
		}
		if got := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/banger/ws")); got != fetchedRef {
			t.Errorf("the refused fetch moved banger's ref to %s (was %s)", got, fetchedRef)
		}
		if err := exec.Command("git", "-c", "safe.directory=*", "-C", e.repo, "cat-file", "-e", hostileHead).Run(); err == nil {
			t.Errorf("the refused bundle's commit %s is in the user's repository", hostileHead)
		}

		// What the guest prints reaches the user's terminal with its
		// escape sequences shown, not obeyed: the console, a diff.
		e.guest("ws", `printf 'console \033]0;pwned\007\033[2J end\n' > /dev/console; printf 'line \033]52;c;ZXZpbA==\007\r\n' > /root/proj/escape.txt`)
		var logs harness.Result
		for i := 0; i < 20; i++ {
			if logs = e.mustAs("logs", "ws"); strings.Contains(logs.Stdout, "console ") {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if strings.ContainsAny(logs.Stdout, "\x1b\x07") || !strings.Contains(logs.Stdout, `console \x1b]0;pwned\x07\x1b[2J end`) {
			t.Errorf("banger logs: %q", logs.Stdout)
		}
		if raw := e.mustAs("logs", "ws", "--raw"); !strings.Contains(raw.Stdout, "console \x1b]0;pwned\x07") {
			t.Errorf("banger logs --raw lost the bytes: %q", raw.Stdout)
		}
		diff := e.mustAs("workspace", "diff", "ws", "--guest-path", "/root/proj").Stdout
		if strings.ContainsAny(diff, "\x1b\x07\r") || !strings.Contains(diff, `+line \x1b]52;c;ZXZpbA==\x07\r`) {
			t.Errorf("workspace diff: %q", diff)
		}

		// The guest's git is itself again: the fetch goes through.
		e.guest("ws", "rm -f /usr/local/bin/git /root/proj/escape.txt")
		e.mustAs("workspace", "fetch", "ws", "--guest-path", "/root/proj")
		if got := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/banger/ws")); got != hostileHead {
			t.Errorf("fetch after the guest's git is fixed: %s, want %s", got, hostileHead)
		}
		if got := e.hostState(); got != before {
			t.Errorf("the fetch changed the user's repository:\n%s\nwas:\n%s", got, before)
		}
	})

	t.Run("captured before stop, fetched from the stopped vm, rm refuses until --force", func(t *testing.T) {
		e := e.with(t)
		// A workspace nobody touched: its uncommitted changes are the
		// user's own, as prepared, so it holds nothing unfetched.
		e.mustAs("workspace", "prepare", "ws", e.repo, "--guest-path", "/root/untouched", "--branch", "untouched")
		e.guest("ws", "cd /root/full && echo more >> new.txt && git add -A && git commit -qm full-change && cd /root/proj && git add -A && git commit -qm second")
		fullHead := strings.TrimSpace(e.guest("ws", "git -C /root/full rev-parse HEAD"))

		r := e.mustAs("vm", "stop", "ws")
		if !strings.Contains(r.Stderr, "not fetched yet") {
			t.Errorf("stop did not report the capture:\n%s", r.Stderr)
		}
		for _, w := range e.workspaces(e.user) {
			want := w.GuestPath == "/root/full" || w.GuestPath == "/root/proj"
			if w.Mode != model.WorkspacePrepareModeMetadataOnly && (w.Unfetched != want || w.Capture.At.IsZero() || w.Capture.Error != "") {
				t.Errorf("after stop: %s unfetched %v, want %v: %+v", w.GuestPath, w.Unfetched, want, w.Capture)
			}
			if w.GuestPath == "/root/untouched" && (w.Capture.At.IsZero() || w.Capture.Head != head || w.Capture.WIP == "") {
				t.Errorf("untouched capture: %+v", w.Capture)
			}
		}
		// The stopped VM's work disk grows: e2fsck and resize2fs parse
		// the guest's filesystem as the VM's own unprivileged user, which
		// owns the disk file.
		e.mustAs("vm", "set", "ws", "--disk-size", "3G")
		// The disk may be in the storage pool, mounted where the daemon
		// sees it: look from there.
		disk := e.vm("ws").Runtime.WorkDiskPath
		if out, err := e.d.InMounts("stat", "-c", "%s %u %g %a", disk); err != nil {
			t.Errorf("stat %s: %v: %s", disk, err, out)
		} else {
			var size int64
			var uid, gid uint32
			var mode string
			fmt.Sscan(out, &size, &uid, &gid, &mode)
			if size != 3<<30 || uid < 1500000000 || uid >= 1500000000+1<<16 || gid != uid || mode != "600" {
				t.Errorf("work disk after growing: %d bytes, owner %d:%d, mode %s", size, uid, gid, mode)
			}
		}

		r = e.as("vm", "rm", "ws")
		if r.Code == 0 || !strings.Contains(r.Stderr, "banger workspace fetch ws") || strings.Contains(r.Stderr, "untouched") {
			t.Errorf("rm with unfetched work: %s", r)
		}

		// Fetch from the stopped VM: the captured bundle.
		e.mustAs("workspace", "fetch", "ws", "--guest-path", "/root/full")
		if got := strings.TrimSpace(e.git(e.repo, "rev-parse", "refs/remotes/banger-ws/full-work")); got != fullHead {
			t.Errorf("full-work ref %s, want %s", got, fullHead)
		}
		if got := e.git(e.repo, "log", "--format=%s", "refs/remotes/banger-ws/full-work"); got != "full-change\nthree\ntwo\none\n" {
			t.Errorf("full-work history: %q", got)
		}
		if got := e.hostState(); got != hostBefore {
			t.Errorf("fetch changed the user's repository")
		}
		// The shallow workspace's second commit is still unfetched.
		e.refuses("/root/proj has unfetched work", "vm", "rm", "ws")
		e.mustAs("vm", "rm", "--force", "ws")
		if ws := e.workspaces(nil); len(ws) != 0 {
			t.Errorf("workspaces after rm: %+v", ws)
		}
	})
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers at the end: %v", lo)
	}
}
