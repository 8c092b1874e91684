package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

var (
	baseSHA = strings.Repeat("a", 40)
	// preparedWIP is the wip commit of test workspaces' trees as prepared.
	preparedWIP = strings.Repeat("d", 40)
	headSHA     = strings.Repeat("b", 40)
	wipSHA      = strings.Repeat("c", 40)
)

func TestCheckPrepareRequest(t *testing.T) {
	vm := model.VMRecord{ID: "id1", Name: "dev"}
	good := api.WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeShallowOverlay, RepoRoot: "/home/u/proj", SourcePath: "/home/u/proj", RepoName: "proj", HeadCommit: baseSHA, CurrentBranch: "main"}
	got, err := checkPrepareRequest(vm, good)
	if err != nil {
		t.Fatal(err)
	}
	if got.GuestPath != "/root/proj" || got.BranchName != "banger/dev" || got.BaseCommit != baseSHA || got.VMID != "id1" || got.CurrentBranch != "main" {
		t.Errorf("defaults: %+v", got)
	}
	tests := []struct {
		name   string
		change func(*api.WorkspacePrepareRequest)
	}{
		{"bad mode", func(r *api.WorkspacePrepareRequest) { r.Mode = "all" }},
		{"bad branch", func(r *api.WorkspacePrepareRequest) { r.Branch = "a..b" }},
		{"escaping guest path", func(r *api.WorkspacePrepareRequest) { r.GuestPath = "/root/../etc" }},
		{"guest path /", func(r *api.WorkspacePrepareRequest) { r.GuestPath = "/" }},
		{"short head", func(r *api.WorkspacePrepareRequest) { r.HeadCommit = "abc" }},
		{"relative repo root", func(r *api.WorkspacePrepareRequest) { r.RepoRoot = "proj" }},
		{"multi-line identity", func(r *api.WorkspacePrepareRequest) { r.UserName = "a\nb" }},
	}
	for _, tt := range tests {
		req := good
		tt.change(&req)
		if _, err := checkPrepareRequest(vm, req); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("%s: %v, want EINVALID", tt.name, err)
		}
	}
}

// addWorkspace stores a prepared workspace for vm.
func (e *testEnv) addWorkspace(t *testing.T, vm model.VMRecord, gp string, mode model.WorkspacePrepareMode) {
	t.Helper()
	err := e.d.store.PutWorkspace(e.ctx, model.WorkspacePrepareResult{
		VMID: vm.ID, SourcePath: "/home/u/proj", RepoRoot: "/home/u/proj", RepoName: "proj", GuestPath: gp, Mode: mode,
		HeadCommit: baseSHA, BaseCommit: baseSHA, BranchName: "banger/" + vm.Name, PreparedAt: model.Now(),
	}, preparedWIP)
	if err != nil {
		t.Fatal(err)
	}
}

func TestRmRefusesUnfetchedWork(t *testing.T) {
	e := newTestDaemon(t, false)
	vm := e.create(t, "dev", false)
	e.addWorkspace(t, vm, "/root/proj", model.WorkspacePrepareModeShallowOverlay)
	e.addWorkspace(t, vm, "/root/meta", model.WorkspacePrepareModeMetadataOnly)

	// Captured but nothing new (the uncommitted work is the user's own,
	// as prepared): rm is allowed; checked on a second VM so this one
	// stays for the rest.
	other := e.create(t, "other", false)
	e.addWorkspace(t, other, "/root/proj", model.WorkspacePrepareModeFullCopy)
	e.d.store.SetWorkspaceCapture(e.ctx, other.ID, "/root/proj", model.WorkspaceCapture{At: model.Now(), Head: baseSHA, WIP: preparedWIP})
	if err := e.d.DeleteVM(e.ctx, "other", api.VMDeleteOptions{}, api.NoProgress); err != nil {
		t.Errorf("rm without new work: %v", err)
	}

	// A commit and uncommitted work captured at stop: rm refuses.
	bundle := workspaceBundlePath(vm.Runtime.VMDir, "/root/proj")
	os.MkdirAll(vm.Runtime.VMDir, 0o700)
	os.WriteFile(bundle, []byte("bundle"), 0o600)
	e.d.store.SetWorkspaceCapture(e.ctx, vm.ID, "/root/proj", model.WorkspaceCapture{At: model.Now(), Head: headSHA, WIP: wipSHA, BundlePath: bundle, BundleBytes: 6})
	err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress)
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "banger workspace fetch dev") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("rm with unfetched work: %v", err)
	}
	ws, err := e.d.GetWorkspace(e.ctx, "dev", "/root/proj")
	if err != nil || !ws.Unfetched || ws.RemoteRef != "refs/remotes/banger-dev/banger/dev" || ws.WIPRef != "refs/remotes/banger-dev/banger/dev-wip" {
		t.Errorf("view: %+v %v", ws, err)
	}

	// The bundle can be downloaded while the VM is stopped.
	rc, size, err := e.d.OpenWorkspaceBundle(e.ctx, "dev", "/root/proj")
	if err != nil || size != 6 {
		t.Fatalf("bundle: %d %v", size, err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "bundle" {
		t.Errorf("bundle content %q", b)
	}
	// A stopped VM's capture is returned as is.
	ws, err = e.d.CaptureWorkspace(e.ctx, "dev", "/root/proj", api.NoProgress)
	if err != nil || ws.Capture.At.IsZero() || ws.Capture.Head != headSHA {
		t.Errorf("capture of a stopped vm: %+v %v", ws, err)
	}

	// Fetching only the commit is not enough; fetching both is.
	if _, err := e.d.MarkWorkspaceFetched(e.ctx, "dev", api.WorkspaceFetchedRequest{GuestPath: "/root/proj", Head: headSHA}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("rm with wip unfetched: %v", err)
	}
	if _, err := e.d.MarkWorkspaceFetched(e.ctx, "dev", api.WorkspaceFetchedRequest{GuestPath: "/root/proj", Head: headSHA, WIP: "not-hex"}); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("bad object name: %v", err)
	}
	ws, err = e.d.MarkWorkspaceFetched(e.ctx, "dev", api.WorkspaceFetchedRequest{GuestPath: "/root/proj", Head: headSHA, WIP: wipSHA})
	if err != nil || ws.Unfetched {
		t.Fatalf("after fetch: %+v %v", ws, err)
	}

	// A failed capture also refuses, until --force.
	e.d.store.SetWorkspaceCaptureError(e.ctx, vm.ID, "/root/proj", model.Now(), "guest did not answer")
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress); model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "guest did not answer") {
		t.Errorf("rm after a failed capture: %v", err)
	}
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
		t.Fatalf("rm --force: %v", err)
	}
	if all, _ := e.d.store.ListWorkspaces(e.ctx, ""); len(all) != 0 {
		t.Errorf("workspaces left after rm: %+v", all)
	}
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Errorf("bundle left after rm: %v", err)
	}
}

func TestWorkspaceAccessAndLookup(t *testing.T) {
	e := newTestDaemon(t, false)
	alice := api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000})
	bob := api.WithCaller(e.ctx, api.Caller{UID: 1001, GID: 1001})
	v, err := e.d.CreateVM(alice, model.VMCreateRequest{Name: "avm", ImageName: "base", NoStart: true}, api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	e.addWorkspace(t, v.VMRecord, "/root/a", model.WorkspacePrepareModeShallowOverlay)

	if ws, err := e.d.ListWorkspaces(alice); err != nil || len(ws) != 1 || ws[0].VMName != "avm" {
		t.Errorf("alice's list: %+v %v", ws, err)
	}
	if ws, err := e.d.ListWorkspaces(bob); err != nil || len(ws) != 0 {
		t.Errorf("bob sees %+v %v", ws, err)
	}
	if _, err := e.d.GetWorkspace(bob, "avm", ""); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("bob's get: %v", err)
	}
	if _, _, err := e.d.OpenWorkspaceBundle(bob, "avm", ""); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("bob's bundle: %v", err)
	}
	// One workspace: found without a guest path; two: a guest path is
	// needed; relative guest paths are under /root.
	if ws, err := e.d.GetWorkspace(alice, "avm", ""); err != nil || ws.GuestPath != "/root/a" {
		t.Errorf("only workspace: %+v %v", ws, err)
	}
	e.addWorkspace(t, v.VMRecord, "/root/b", model.WorkspacePrepareModeMetadataOnly)
	if _, err := e.d.GetWorkspace(alice, "avm", ""); model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "--guest-path") {
		t.Errorf("two workspaces: %v", err)
	}
	if ws, err := e.d.GetWorkspace(alice, "avm", "b"); err != nil || ws.GuestPath != "/root/b" || ws.RemoteRef != "" {
		t.Errorf("by relative path: %+v %v", ws, err)
	}
	// A stopped VM never captured cannot be fetched from; metadata_only
	// has nothing to fetch; diff needs a running VM.
	if _, err := e.d.CaptureWorkspace(alice, "avm", "/root/a", api.NoProgress); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("capture never made: %v", err)
	}
	if _, err := e.d.CaptureWorkspace(alice, "avm", "/root/b", api.NoProgress); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("capture of metadata_only: %v", err)
	}
	if err := e.d.WorkspaceGit(alice, "avm", api.WorkspaceGitRequest{Kind: "diff", GuestPath: "/root/a"}, io.Discard); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("diff of a stopped vm: %v", err)
	}
	// Prepare needs a running VM, before reading anything.
	_, err = e.d.PrepareWorkspace(alice, "avm", api.WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeMetadataOnly}, func() (io.Reader, error) {
		t.Error("opened the stream for a stopped vm")
		return nil, nil
	}, api.NoProgress)
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "banger vm start avm") {
		t.Errorf("prepare on a stopped vm: %v", err)
	}
}

// tarOf builds an archive of the given headers (regular files get one
// byte each).
func tarOf(hs ...*tar.Header) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hs {
		if h.Typeflag == tar.TypeReg {
			h.Size = 1
		}
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("x"))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestUploadFileSync(t *testing.T) {
	e := newTestDaemon(t, false)
	vm := e.create(t, "dev", false)
	upload := func(b []byte) (api.FileSyncUpload, error) {
		return e.d.UploadFileSync(e.ctx, "dev", func() (io.Reader, error) { return bytes.NewReader(b), nil })
	}
	path := fileSyncPath(vm.Runtime.VMDir)

	// Refused archives store nothing.
	for name, b := range map[string][]byte{
		"dot dot":  tarOf(&tar.Header{Typeflag: tar.TypeReg, Name: "../etc/passwd", Mode: 0o600}),
		"absolute": tarOf(&tar.Header{Typeflag: tar.TypeReg, Name: "/etc/passwd", Mode: 0o600}),
		"via link": tarOf(&tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "/etc"}, &tar.Header{Typeflag: tar.TypeReg, Name: "l/passwd", Mode: 0o600}),
	} {
		if _, err := upload(b); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("%s: %v, want EINVALID", name, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: stored anyway", name)
		}
	}
	good := tarOf(&tar.Header{Typeflag: tar.TypeDir, Name: ".config/", Mode: 0o755}, &tar.Header{Typeflag: tar.TypeReg, Name: ".config/x", Mode: 0o600})
	got, err := upload(good)
	if err != nil || got.Entries != 2 || got.Bytes != int64(len(good)) {
		t.Fatalf("good upload: %+v %v", got, err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, good) {
		t.Errorf("stored %d bytes, %v", len(b), err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("stored mode: %v %v", fi, err)
	}

	// A running VM gets no file sync: it would wait for the next boot.
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := upload(good); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("upload to a running vm: %v", err)
	}
	if entries, err := e.d.FileSyncEntries(context.Background()); err != nil || len(entries) != 0 {
		t.Errorf("entries: %v %v", entries, err)
	}
}

func TestBranchClash(t *testing.T) {
	e := newTestDaemon(t, false)
	vm := e.create(t, "dev", false)
	e.addWorkspace(t, vm, "/root/proj", model.WorkspacePrepareModeShallowOverlay)
	res := model.WorkspacePrepareResult{VMID: vm.ID, RepoRoot: "/home/u/proj", GuestPath: "/root/other", Mode: model.WorkspacePrepareModeFullCopy, BranchName: "banger/dev"}
	if err := e.d.checkBranchClash(e.ctx, vm, res); model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "--branch") {
		t.Errorf("same repo and branch: %v", err)
	}
	for name, change := range map[string]func(*model.WorkspacePrepareResult){
		"other branch":  func(r *model.WorkspacePrepareResult) { r.BranchName = "try" },
		"other repo":    func(r *model.WorkspacePrepareResult) { r.RepoRoot = "/home/u/lib" },
		"same path":     func(r *model.WorkspacePrepareResult) { r.GuestPath = "/root/proj" },
		"metadata only": func(r *model.WorkspacePrepareResult) { r.Mode = model.WorkspacePrepareModeMetadataOnly },
	} {
		r := res
		change(&r)
		if err := e.d.checkBranchClash(e.ctx, vm, r); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
