package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/testutil"
	"banger/internal/workspace"
)

// fakeDaemon is the part of the daemon the workspace flows use, with
// "guests" that are directories on this machine: capture and bundle run
// the daemon's own guest scripts there.
type fakeDaemon struct {
	t   *testing.T
	vms map[string]api.VMView
	// workspaces by guest path, which is also the guest directory.
	workspaces map[string]*model.Workspace
	bundles    map[string][]byte
	// tamper, when set, rewrites a bundle as a hostile guest would.
	tamper func(gp string, b []byte) []byte
	// prepared is the last prepare request and the tar entries it sent.
	prepared api.WorkspacePrepareRequest
	entries  []string
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	return &fakeDaemon{t: t, vms: map[string]api.VMView{}, workspaces: map[string]*model.Workspace{}, bundles: map[string][]byte{}}
}

func (f *fakeDaemon) addVM(name string, state model.VMState) {
	f.vms[name] = api.VMView{VMRecord: model.VMRecord{ID: "id-" + name, Name: name, State: state}}
}

func (f *fakeDaemon) GetVM(_ context.Context, ref string) (api.VMView, error) {
	if v, ok := f.vms[ref]; ok {
		return v, nil
	}
	return api.VMView{}, model.Errorf(model.ENOTFOUND, "vm %q not found", ref)
}

func (f *fakeDaemon) PrepareWorkspace(_ context.Context, ref string, req api.WorkspacePrepareRequest, body func(io.Writer) error, progress func(api.Event)) (model.Workspace, error) {
	f.prepared, f.entries = req, nil
	if body != nil {
		var buf bytes.Buffer
		if err := body(&buf); err != nil {
			return model.Workspace{}, err
		}
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return model.Workspace{}, err
			}
			f.entries = append(f.entries, h.Name)
		}
	}
	vm := f.vms[ref]
	return model.Workspace{WorkspacePrepareResult: model.WorkspacePrepareResult{VMID: vm.ID, GuestPath: req.GuestPath, Mode: req.Mode, BranchName: req.Branch, BaseCommit: req.HeadCommit}, VMName: vm.Name}, nil
}

// view is what the daemon shows of a stored workspace.
func (f *fakeDaemon) view(w *model.Workspace) model.Workspace {
	v := *w
	if v.Mode.Ships() {
		v.RemoteRef, v.WIPRef = workspace.RemoteRef(v.VMName, v.BranchName), workspace.WIPRef(v.VMName, v.BranchName)
	}
	v.Unfetched = v.HasUnfetchedWork()
	return v
}

func (f *fakeDaemon) ListWorkspaces(context.Context) ([]model.Workspace, error) {
	var out []model.Workspace
	for _, w := range f.workspaces {
		out = append(out, f.view(w))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GuestPath < out[j].GuestPath })
	return out, nil
}

func (f *fakeDaemon) GetWorkspace(_ context.Context, ref, gp string) (model.Workspace, error) {
	if w, ok := f.workspaces[gp]; ok && w.VMName == ref {
		return f.view(w), nil
	}
	return model.Workspace{}, model.Errorf(model.ENOTFOUND, "vm %s has no workspace at %s", ref, gp)
}

func (f *fakeDaemon) guestRun(script string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("guest script: %v: %s", err, errb.String())
	}
	return out.Bytes(), nil
}

func (f *fakeDaemon) CaptureWorkspace(_ context.Context, ref, gp string, progress func(api.Event)) (model.Workspace, error) {
	w := f.workspaces[gp]
	out, err := f.guestRun(workspace.CaptureScript(gp, w.BranchName, w.BaseCommit))
	if err != nil {
		return model.Workspace{}, err
	}
	c, err := workspace.ParseCapture(string(out), w.BaseCommit)
	if err != nil {
		return model.Workspace{}, err
	}
	w.Capture = model.WorkspaceCapture{At: model.Now(), Head: c.Head, WIP: c.WIP}
	delete(f.bundles, gp)
	if c.Bundle {
		b, err := f.guestRun(workspace.BundleScript(gp, w.BranchName, w.BaseCommit, c.WIP != ""))
		if err != nil {
			return model.Workspace{}, err
		}
		if f.tamper != nil {
			b = f.tamper(gp, b)
		}
		f.bundles[gp] = b
		w.Capture.BundleBytes = int64(len(b))
	}
	return f.view(w), nil
}

func (f *fakeDaemon) DownloadWorkspaceBundle(_ context.Context, ref, gp string, w io.Writer) (int64, error) {
	n, err := w.Write(f.bundles[gp])
	return int64(n), err
}

func (f *fakeDaemon) MarkWorkspaceFetched(_ context.Context, ref string, req api.WorkspaceFetchedRequest) (model.Workspace, error) {
	w := f.workspaces[req.GuestPath]
	w.Fetched = model.WorkspaceFetch{At: model.Now(), Head: req.Head, WIP: req.WIP}
	return f.view(w), nil
}

// gitEnv isolates git from the machine's configuration.
func gitEnv(t *testing.T) {
	t.Helper()
	testutil.RequireTools(t, "git", "sh", "tar")
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	for _, k := range []string{"GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"} {
		t.Setenv(k, "Test")
	}
	for _, k := range []string{"GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"} {
		t.Setenv(k, "test@example.com")
	}
}

func run(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sh -c %q in %s: %v\n%s", script, dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// hostRepo makes a repository with two commits and a branch of the
// user's own, and an uncommitted change.
func hostRepo(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "proj")
	run(t, filepath.Dir(root), "git init -q -b main proj")
	run(t, root, "echo a > a.txt && echo ignored > x.log && echo '*.log' > .gitignore && git add a.txt .gitignore && git commit -qm one && echo b > b.txt && git add b.txt && git commit -qm two && git branch feature && echo dirty >> a.txt")
	return root
}

func TestPrepareFlow(t *testing.T) {
	gitEnv(t)
	ctx := context.Background()
	root := hostRepo(t)
	head := run(t, root, "git rev-parse HEAD")
	d := newFakeDaemon(t)
	d.addVM("dev", model.VMStateRunning)
	d.addVM("off", model.VMStateStopped)
	var progress bytes.Buffer

	ws, err := prepareWorkspace(ctx, d, hostexec.Real{}, prepareOptions{VM: "dev", Dir: filepath.Join(root, "."), Mode: model.WorkspacePrepareModeShallowOverlay}, &progress)
	if err != nil {
		t.Fatalf("prepare: %v\n%s", err, progress.String())
	}
	want := api.WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeShallowOverlay, Branch: "banger/dev", GuestPath: "/root/proj", SourcePath: root, RepoRoot: root, RepoName: "proj", HeadCommit: head, CurrentBranch: "main"}
	if !reflect.DeepEqual(d.prepared, want) {
		t.Errorf("request %+v\nwant %+v", d.prepared, want)
	}
	if ws.BranchName != "banger/dev" || ws.GuestPath != "/root/proj" {
		t.Errorf("result %+v", ws)
	}
	// The tar: the depth-1 clone's .git and the working tree, not the
	// ignored file.
	joined := strings.Join(d.entries, " ")
	for _, name := range []string{".git/", "a.txt", "b.txt", ".gitignore"} {
		if !strings.Contains(" "+joined+" ", " "+name+" ") {
			t.Errorf("tar lacks %s: %s", name, joined)
		}
	}
	if strings.Contains(joined, "x.log") {
		t.Errorf("tar carries an ignored file: %s", joined)
	}
	if !strings.Contains(progress.String(), "upload: sent") {
		t.Errorf("progress:\n%s", progress.String())
	}

	// metadata_only sends no stream.
	if _, err := prepareWorkspace(ctx, d, hostexec.Real{}, prepareOptions{VM: "dev", Dir: root, Mode: model.WorkspacePrepareModeMetadataOnly, Quiet: true}, io.Discard); err != nil || d.entries != nil {
		t.Errorf("metadata_only: %v, entries %q", err, d.entries)
	}

	// Refusals, before anything reaches the daemon.
	for _, tt := range []struct {
		name string
		o    prepareOptions
		code string
		want string
	}{
		{"bad mode", prepareOptions{VM: "dev", Dir: root, Mode: "everything"}, model.EINVALID, `--mode "everything"`},
		{"bad branch", prepareOptions{VM: "dev", Dir: root, Mode: model.WorkspacePrepareModeFullCopy, Branch: "a..b"}, model.EINVALID, "branch name"},
		{"escaping guest path", prepareOptions{VM: "dev", Dir: root, Mode: model.WorkspacePrepareModeFullCopy, GuestPath: "../etc"}, model.EINVALID, ".."},
		{"stopped vm", prepareOptions{VM: "off", Dir: root, Mode: model.WorkspacePrepareModeFullCopy}, model.ECONFLICT, "banger vm start off"},
		{"no such vm", prepareOptions{VM: "nope", Dir: root, Mode: model.WorkspacePrepareModeFullCopy}, model.ENOTFOUND, "not found"},
		{"not a repository", prepareOptions{VM: "dev", Dir: t.TempDir(), Mode: model.WorkspacePrepareModeFullCopy}, model.EINVALID, "not in a git repository"},
	} {
		d.prepared = api.WorkspacePrepareRequest{}
		_, err := prepareWorkspace(ctx, d, hostexec.Real{}, tt.o, io.Discard)
		var ue *usageError
		code := model.ErrorCode(err)
		if errors.As(err, &ue) {
			code = model.ErrorCode(ue.err)
		}
		if code != tt.code || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v (%s), want %s saying %q", tt.name, err, code, tt.code, tt.want)
		}
		if d.prepared != (api.WorkspacePrepareRequest{}) {
			t.Errorf("%s: the daemon got %+v", tt.name, d.prepared)
		}
	}
}

// guestCopy makes a "guest" workspace of root at dir: a clone on the work
// branch at the base, as prepare leaves it, recorded in d.
func (f *fakeDaemon) guestCopy(t *testing.T, root, dir, vm, branch string, mode model.WorkspacePrepareMode) {
	t.Helper()
	run(t, filepath.Dir(dir), fmt.Sprintf("git clone -q %s %s && cd %s && git checkout -q -b %s", root, filepath.Base(dir), filepath.Base(dir), branch))
	base := run(t, dir, "git rev-parse HEAD")
	f.workspaces[dir] = &model.Workspace{
		WorkspacePrepareResult: model.WorkspacePrepareResult{VMID: f.vms[vm].ID, RepoRoot: root, GuestPath: dir, Mode: mode, BranchName: branch, BaseCommit: base, HeadCommit: base},
		VMName:                 vm,
	}
}

func TestFetchFlowAllWorkspaces(t *testing.T) {
	gitEnv(t)
	ctx := context.Background()
	root := hostRepo(t)
	d := newFakeDaemon(t)
	d.addVM("dev", model.VMStateRunning)
	d.addVM("other", model.VMStateRunning)
	guests := t.TempDir()
	one, two, meta, elsewhere := filepath.Join(guests, "one"), filepath.Join(guests, "two"), filepath.Join(guests, "meta"), filepath.Join(guests, "elsewhere")
	d.guestCopy(t, root, one, "dev", "banger/dev", model.WorkspacePrepareModeFullCopy)
	d.guestCopy(t, root, two, "dev", "second", model.WorkspacePrepareModeShallowOverlay)
	d.guestCopy(t, root, meta, "dev", "meta", model.WorkspacePrepareModeMetadataOnly)
	d.guestCopy(t, root, elsewhere, "other", "banger/other", model.WorkspacePrepareModeFullCopy)
	run(t, one, "echo guest > g.txt && git add g.txt && git commit -qm 'guest one'")
	run(t, two, "echo wip > w.txt")
	run(t, elsewhere, "echo x > x.txt && git add x.txt && git commit -qm elsewhere")
	userSide := run(t, root, "git for-each-ref refs/heads && git rev-parse HEAD && git status --porcelain")

	// `banger workspace fetch dev`: both of dev's workspaces with a
	// repository; the metadata_only one and the other VM's are left.
	var warn bytes.Buffer
	results, err := fetchWorkspaces(ctx, d, hostexec.Real{}, "dev", "", nil, &warn)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Workspace.GuestPath)
	}
	if !reflect.DeepEqual(got, []string{one, two}) {
		t.Errorf("fetched %q, want %q", got, []string{one, two})
	}
	if h := run(t, root, "git log -1 --format=%s refs/remotes/banger-dev/banger/dev"); h != "guest one" {
		t.Errorf("banger-dev/banger/dev: %q", h)
	}
	if w := run(t, root, "git show refs/remotes/banger-dev/second-wip:w.txt"); w != "wip" {
		t.Errorf("second-wip: %q", w)
	}
	if out, err := exec.Command("git", "-C", root, "rev-parse", "-q", "--verify", "refs/remotes/banger-other/banger/other").Output(); err == nil {
		t.Errorf("fetched the other vm's work: %s", out)
	}
	if results[0].Commits != 1 || d.workspaces[one].Fetched.Head == "" {
		t.Errorf("first result %+v", results[0])
	}
	for _, gp := range []string{one, two} {
		if d.workspaces[gp].HasUnfetchedWork() {
			t.Errorf("%s still unfetched after the fetch", gp)
		}
	}
	if after := run(t, root, "git for-each-ref refs/heads && git rev-parse HEAD && git status --porcelain"); after != userSide {
		t.Errorf("the user's side changed:\n%s\nwas:\n%s", after, userSide)
	}

	// One workspace's guest turns hostile: the other is still fetched,
	// the hostile one refused, and the error says which.
	run(t, one, "echo more >> g.txt && git commit -qam 'guest two'")
	run(t, two, "git add -A && git commit -qm 'second commit'")
	d.tamper = func(gp string, b []byte) []byte {
		if gp != one {
			return b
		}
		end := bytes.Index(b, []byte("\n\n"))
		return append(append(append([]byte{}, b[:end+1]...), strings.Repeat("a", 40)+" --prune\n"...), b[end+1:]...)
	}
	results, err = fetchWorkspaces(ctx, d, hostexec.Real{}, "dev", "", nil, &warn)
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "fetch "+one) || !strings.Contains(err.Error(), `"--prune"`) {
		t.Errorf("fetch with one hostile guest: %v", err)
	}
	if len(results) != 1 || results[0].Workspace.GuestPath != two {
		t.Errorf("results with one hostile guest: %+v", results)
	}
	if h := run(t, root, "git log -1 --format=%s refs/remotes/banger-dev/banger/dev"); h != "guest one" {
		t.Errorf("the refused workspace's ref moved: %q", h)
	}
	if h := run(t, root, "git log -1 --format=%s refs/remotes/banger-dev/second"); h != "second commit" {
		t.Errorf("the good workspace's ref: %q", h)
	}
	if after := run(t, root, "git for-each-ref refs/heads && git rev-parse HEAD && git status --porcelain"); after != userSide {
		t.Errorf("the user's side changed:\n%s\nwas:\n%s", after, userSide)
	}

	// --guest-path: that one only; a metadata_only one has nothing.
	d.tamper = nil
	results, err = fetchWorkspaces(ctx, d, hostexec.Real{}, "dev", one, nil, &warn)
	if err != nil || len(results) != 1 || results[0].Workspace.GuestPath != one {
		t.Errorf("fetch --guest-path: %+v, %v", results, err)
	}
	if _, err := fetchWorkspaces(ctx, d, hostexec.Real{}, "dev", meta, nil, &warn); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("fetch of a metadata_only workspace: %v", err)
	}
	// A VM without workspaces, and one that does not exist.
	d.addVM("empty", model.VMStateRunning)
	if _, err := fetchWorkspaces(ctx, d, hostexec.Real{}, "empty", "", nil, &warn); model.ErrorCode(err) != model.ENOTFOUND || !strings.Contains(err.Error(), "banger workspace prepare empty") {
		t.Errorf("fetch from a vm without workspaces: %v", err)
	}
	if _, err := fetchWorkspaces(ctx, d, hostexec.Real{}, "nope", "", nil, &warn); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("fetch from a missing vm: %v", err)
	}
	// The repository moved away: a clear error, nothing else tried.
	if err := os.Rename(root, root+".moved"); err != nil {
		t.Fatal(err)
	}
	if _, err := fetchWorkspaces(ctx, d, hostexec.Real{}, "dev", one, nil, &warn); err == nil || !strings.Contains(err.Error(), "the repository this workspace came from") {
		t.Errorf("fetch into a moved repository: %v", err)
	}
}
