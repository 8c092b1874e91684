package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"banger/internal/api"
	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/termsafe"
	"banger/internal/workspace"
)

// captureTimeout bounds capturing a VM's workspaces before it stops, so a
// hung guest cannot hold a stop forever.
const captureTimeout = 3 * time.Minute

// workspaceBundlePath is where a workspace's last captured bundle is kept:
// in the VM's directory, named by a hash of the guest path.
func workspaceBundlePath(vmDir, guestPath string) string {
	sum := sha256.Sum256([]byte(guestPath))
	return filepath.Join(vmDir, "workspace-"+hex.EncodeToString(sum[:6])+".bundle")
}

// dialGuest connects to a running VM's guest as root with the daemon's key,
// checking the host key learned at boot.
func (d *Daemon) dialGuest(ctx context.Context, vm model.VMRecord) (*guest.Conn, error) {
	signer, err := guest.LoadSigner(d.cfg.SSHKeyPath)
	if err != nil {
		return nil, model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	conn, err := guest.Dial(ctx, net.JoinHostPort(vm.Runtime.GuestIP, "22"), signer, vm.Runtime.SSHHostKey)
	if err != nil {
		return nil, model.Errorf(model.EUNAVAILABLE, "reach vm %s over ssh: %v", vm.Name, err)
	}
	return conn, nil
}

// workspaceView fills in what the API shows of a stored workspace
// beyond what the store keeps: the VM's name and state, the host refs
// fetch writes, and whether work is unfetched.
func workspaceView(vm model.VMRecord, w model.Workspace) model.Workspace {
	w.VMName, w.VMState = vm.Name, vm.State
	w.RemoteRef, w.WIPRef = "", ""
	if w.Mode.Ships() {
		w.RemoteRef = workspace.RemoteRef(vm.Name, w.BranchName)
		w.WIPRef = workspace.WIPRef(vm.Name, w.BranchName)
	}
	w.Unfetched = w.HasUnfetchedWork()
	return w
}

// resolveWorkspace finds a VM's workspace at guestPath, or its only one
// when guestPath is empty.
func (d *Daemon) resolveWorkspace(ctx context.Context, vm model.VMRecord, guestPath string) (model.Workspace, error) {
	if guestPath != "" {
		gp, err := workspace.GuestPath(guestPath, "")
		if err != nil {
			return model.Workspace{}, err
		}
		w, err := d.store.GetWorkspace(ctx, vm.ID, gp)
		if model.ErrorCode(err) == model.ENOTFOUND {
			return w, model.Errorf(model.ENOTFOUND, "vm %s has no workspace at %s; see `banger workspace ls`", vm.Name, gp)
		}
		return w, err
	}
	all, err := d.store.ListWorkspaces(ctx, vm.ID)
	if err != nil {
		return model.Workspace{}, err
	}
	switch len(all) {
	case 0:
		return model.Workspace{}, model.Errorf(model.ENOTFOUND, "vm %s has no workspace; prepare one with `banger workspace prepare %s`", vm.Name, vm.Name)
	case 1:
		return all[0], nil
	}
	var paths []string
	for _, w := range all {
		paths = append(paths, w.GuestPath)
	}
	return model.Workspace{}, model.Errorf(model.EINVALID, "vm %s has %d workspaces (%s); choose one with --guest-path", vm.Name, len(all), strings.Join(paths, ", "))
}

// ListWorkspaces implements api.Backend: the workspaces of the caller's
// VMs.
func (d *Daemon) ListWorkspaces(ctx context.Context) ([]model.Workspace, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	caller := api.CallerFrom(ctx)
	mine := map[string]model.VMRecord{}
	for _, vm := range vms {
		if caller.Owns(vm.OwnerUID) {
			mine[vm.ID] = vm
		}
	}
	all, err := d.store.ListWorkspaces(ctx, "")
	if err != nil {
		return nil, err
	}
	out := []model.Workspace{}
	for _, w := range all {
		if vm, ok := mine[w.VMID]; ok {
			out = append(out, workspaceView(vm, w))
		}
	}
	return out, nil
}

// GetWorkspace implements api.Backend.
func (d *Daemon) GetWorkspace(ctx context.Context, ref, guestPath string) (model.Workspace, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return model.Workspace{}, err
	}
	w, err := d.resolveWorkspace(ctx, vm, guestPath)
	if err != nil {
		return model.Workspace{}, err
	}
	return workspaceView(vm, w), nil
}

// checkPrepareRequest validates what the CLI says about the repository
// and resolves the branch and guest path.
func checkPrepareRequest(vm model.VMRecord, req api.WorkspacePrepareRequest) (model.WorkspacePrepareResult, error) {
	if err := req.Mode.Validate(); err != nil {
		return model.WorkspacePrepareResult{}, err
	}
	branch := req.Branch
	if branch == "" {
		branch = workspace.DefaultBranch(vm.Name)
	}
	if err := workspace.ValidateBranch(branch); err != nil {
		return model.WorkspacePrepareResult{}, err
	}
	gp, err := workspace.GuestPath(req.GuestPath, req.RepoName)
	if err != nil {
		return model.WorkspacePrepareResult{}, err
	}
	if !workspace.IsObjectName(req.HeadCommit) {
		return model.WorkspacePrepareResult{}, model.Errorf(model.EINVALID, "head commit %q: want a full object name", req.HeadCommit)
	}
	if !filepath.IsAbs(req.RepoRoot) || !filepath.IsAbs(req.SourcePath) || req.RepoName == "" {
		return model.WorkspacePrepareResult{}, model.Errorf(model.EINVALID, "repository root, source path and name are required (absolute paths)")
	}
	if strings.ContainsAny(req.UserName+req.UserEmail, "\n\r\x00") {
		return model.WorkspacePrepareResult{}, model.Errorf(model.EINVALID, "user name and email must be single lines")
	}
	return model.WorkspacePrepareResult{
		VMID: vm.ID, SourcePath: req.SourcePath, RepoRoot: req.RepoRoot, RepoName: req.RepoName, GuestPath: gp,
		Mode: req.Mode, HeadCommit: req.HeadCommit, CurrentBranch: req.CurrentBranch,
		BranchName: branch, BaseCommit: req.HeadCommit, PreparedAt: model.Now(),
	}, nil
}

// PrepareWorkspace implements api.Backend: the request is checked, the
// guest path examined, then the repository's tar stream is unpacked in
// the guest next to the guest path and set up there (work branch at the
// base commit, identity), and finally replaces what was at the guest
// path. The daemon never reads the host repository: the stream comes
// from the user's CLI.
func (d *Daemon) PrepareWorkspace(ctx context.Context, ref string, req api.WorkspacePrepareRequest, open api.OpenFunc, progress api.ProgressFunc) (model.Workspace, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return model.Workspace{}, err
	}
	defer unlock()
	if vm, err = d.wakeLocked(ctx, vm, progress); err != nil {
		return model.Workspace{}, err
	}
	if vm.State != model.VMStateRunning {
		return model.Workspace{}, model.Errorf(model.ECONFLICT, "vm %q is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	res, err := checkPrepareRequest(vm, req)
	if err != nil {
		return model.Workspace{}, err
	}
	log := d.logger.With("vm", vm.Name, "guest_path", res.GuestPath, "mode", res.Mode)
	if err := d.checkBranchClash(ctx, vm, res); err != nil {
		return model.Workspace{}, err
	}
	d.touch(vm.ID)
	existing, err := d.store.GetWorkspace(ctx, vm.ID, res.GuestPath)
	recorded := err == nil
	if err != nil && model.ErrorCode(err) != model.ENOTFOUND {
		return model.Workspace{}, err
	}

	preparedWIP := ""
	if res.Mode.Ships() {
		conn, err := d.dialGuest(ctx, vm)
		if err != nil {
			return model.Workspace{}, err
		}
		defer conn.Close()
		if err := d.checkGuestPath(ctx, conn, vm, res.GuestPath, existing, recorded, req.Force); err != nil {
			return model.Workspace{}, err
		}
		body, err := open()
		if err != nil {
			return model.Workspace{}, err
		}
		captured, err := d.unpackWorkspace(ctx, conn, res, req, body, progress)
		if err != nil {
			// The staging directory goes; the guest path is as it was.
			if aerr := conn.Run(context.WithoutCancel(ctx), workspace.AbortScript(res.GuestPath), nil, nil, nil); aerr != nil {
				log.Warn("remove staging dir", "err", aerr)
			}
			return model.Workspace{}, err
		}
		// The tree as prepared carries the user's own uncommitted
		// changes; remember their wip commit, so they do not count as
		// unfetched guest work.
		if c, err := workspace.ParseCapture(captured, res.BaseCommit); err == nil {
			preparedWIP = c.WIP
		} else {
			log.Warn("snapshot the prepared tree; its changes will count as unfetched", "err", err)
		}
	}
	if err := d.store.PutWorkspace(ctx, res, preparedWIP); err != nil {
		return model.Workspace{}, err
	}
	os.Remove(workspaceBundlePath(vm.Runtime.VMDir, res.GuestPath))
	log.Info("workspace prepared", "repo", res.RepoRoot, "head", res.HeadCommit, "branch", res.BranchName)
	w, err := d.store.GetWorkspace(ctx, vm.ID, res.GuestPath)
	if err != nil {
		return model.Workspace{}, err
	}
	return workspaceView(vm, w), nil
}

// checkBranchClash refuses a second workspace of the same repository in
// the same VM on the same work branch: fetch would bring both into the
// same host ref.
func (d *Daemon) checkBranchClash(ctx context.Context, vm model.VMRecord, res model.WorkspacePrepareResult) error {
	if !res.Mode.Ships() {
		return nil
	}
	all, err := d.store.ListWorkspaces(ctx, vm.ID)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.GuestPath != res.GuestPath && o.Mode.Ships() && o.RepoRoot == res.RepoRoot && o.BranchName == res.BranchName {
			return model.Errorf(model.ECONFLICT, "vm %s already has a workspace of %s on branch %s (at %s), and fetch would bring both into %s; pass --branch with another name", vm.Name, res.RepoRoot, res.BranchName, o.GuestPath, workspace.RemoteRef(vm.Name, res.BranchName))
		}
	}
	return nil
}

// checkGuestPath refuses to prepare over something at the guest path
// unless forced: a workspace whose work is not fetched (captured now to
// know), or anything that is not a banger workspace. It also needs git
// in the guest.
func (d *Daemon) checkGuestPath(ctx context.Context, conn *guest.Conn, vm model.VMRecord, gp string, existing model.Workspace, recorded, force bool) error {
	out, err := guestOutput(ctx, conn, workspace.PrecheckScript(gp))
	if err != nil {
		return fmt.Errorf("examine %s in the guest: %w", gp, err)
	}
	pre, err := workspace.ParsePrecheck(out)
	if err != nil {
		return err
	}
	if !pre.Git {
		return model.Errorf(model.EUNAVAILABLE, "vm %s has no git; install it in the guest (`banger exec %s -- apt-get install -y git`, needs --nat) or use an image with git", vm.Name, vm.Name)
	}
	if force || pre.Path == "absent" || pre.Path == "empty" {
		return nil
	}
	if !recorded || pre.Path != "repo" {
		return model.Errorf(model.ECONFLICT, "%s already exists in vm %s and is not a banger workspace; choose another --guest-path, or pass --force to replace it", gp, vm.Name)
	}
	if !existing.Mode.Ships() {
		return nil
	}
	w, err := d.captureLocked(ctx, conn, vm, existing)
	if err != nil {
		return fmt.Errorf("check %s for unfetched work (pass --force to replace it anyway): %w", gp, err)
	}
	if w.HasUnfetchedWork() {
		return model.Errorf(model.ECONFLICT, "the workspace at %s in vm %s has work you have not fetched; run `banger workspace fetch %s --guest-path %s` first, or pass --force to replace it", gp, vm.Name, vm.Name, gp)
	}
	return nil
}

// countingReader counts bytes read, and remembers the first read error
// other than EOF (a cut upload).
type countingReader struct {
	r   io.Reader
	n   atomic.Int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err != nil && !errors.Is(err, io.EOF) && c.err == nil {
		c.err = err
	}
	return n, err
}

// unpackWorkspace streams the upload into the guest's staging directory
// and sets the repository up there; it returns the capture of the tree
// as prepared (CaptureScript's output, empty if that failed).
func (d *Daemon) unpackWorkspace(ctx context.Context, conn *guest.Conn, res model.WorkspacePrepareResult, req api.WorkspacePrepareRequest, body io.Reader, progress api.ProgressFunc) (string, error) {
	progress(api.Progress{Step: "unpack", Message: "unpacking into " + res.GuestPath + " in the guest"})
	cr := &countingReader{r: body}
	start := time.Now()
	err := conn.Run(ctx, workspace.ExtractScript(res.GuestPath), cr, nil, nil)
	if cr.err != nil {
		return "", model.Errorf(model.EINVALID, "upload cut short: %v", cr.err)
	}
	if err != nil {
		return "", fmt.Errorf("unpack in the guest: %w", err)
	}
	progress(api.Progress{Step: "unpack", Message: fmt.Sprintf("%s unpacked in %.1fs", humanSize(cr.n.Load()), time.Since(start).Seconds())})
	setup := workspace.SetupAndCaptureScript(workspace.SetupParams{
		GuestPath: res.GuestPath, Mode: res.Mode, Branch: res.BranchName, Base: res.BaseCommit,
		UserName: req.UserName, UserEmail: req.UserEmail,
	})
	out, err := guestOutput(ctx, conn, setup)
	if err != nil {
		return "", fmt.Errorf("set up the repository in the guest: %w", err)
	}
	progress(api.Progress{Step: "branch", Message: fmt.Sprintf("work branch %s at %s", res.BranchName, shortSHA(res.BaseCommit))})
	return out, nil
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// humanSize prints a byte count in the largest binary unit.
func humanSize(n int64) string {
	const k = 1024
	switch {
	case n >= k*k*k:
		return fmt.Sprintf("%.1f GiB", float64(n)/(k*k*k))
	case n >= k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	case n >= k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	}
	return fmt.Sprintf("%d B", n)
}

// maxGuestOutput bounds what the daemon keeps of a workspace script's
// output: each prints one short line.
const maxGuestOutput = 4 << 10

// guestOutput runs script in the guest and returns its standard output,
// refusing more than maxGuestOutput bytes: a guest cannot make the
// daemon hold what it likes in memory.
func guestOutput(ctx context.Context, conn *guest.Conn, script string) (string, error) {
	return guestOutputIn(ctx, conn, script, nil)
}

// guestOutputIn is guestOutput with stdin as the script's standard input.
func guestOutputIn(ctx context.Context, conn *guest.Conn, script string, stdin io.Reader) (string, error) {
	var buf bytes.Buffer
	lw := &limitWriter{w: &buf, max: maxGuestOutput, over: fmt.Errorf("the guest printed more than the %d bytes expected", maxGuestOutput)}
	err := conn.Run(ctx, script, stdin, lw, nil)
	return buf.String(), err
}

// limitWriter fails writes past max bytes: a guest cannot fill the host's
// disk with a bundle larger than its own disks.
type limitWriter struct {
	w   io.Writer
	n   int64
	max int64
	// over is the error of a write past max.
	over error
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+int64(len(p)) > l.max {
		return 0, l.over
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// captureLocked captures one workspace of a running VM over conn: the
// work branch head, the uncommitted work as a commit, and a bundle of
// what the base does not have, kept in the VM's directory. The outcome
// (or the failure) is recorded. The caller holds the VM's lock.
func (d *Daemon) captureLocked(ctx context.Context, conn *guest.Conn, vm model.VMRecord, w model.Workspace) (model.Workspace, error) {
	fail := func(err error) (model.Workspace, error) {
		// The message may quote the guest's stderr: it is stored, and
		// later shown, with its control characters made visible.
		if rerr := d.store.SetWorkspaceCaptureError(context.WithoutCancel(ctx), vm.ID, w.GuestPath, model.Now(), termsafe.String(err.Error())); rerr != nil {
			d.logger.Warn("record capture error", "vm", vm.Name, "err", rerr)
		}
		return w, err
	}
	out, err := guestOutput(ctx, conn, workspace.CaptureScript(w.GuestPath, w.BranchName, w.BaseCommit))
	if err != nil {
		return fail(fmt.Errorf("capture %s: %w", w.GuestPath, err))
	}
	c, err := workspace.ParseCapture(out, w.BaseCommit)
	if err != nil {
		return fail(fmt.Errorf("capture %s: %w", w.GuestPath, err))
	}
	capture := model.WorkspaceCapture{At: model.Now(), Head: c.Head, WIP: c.WIP}
	path := workspaceBundlePath(vm.Runtime.VMDir, w.GuestPath)
	if c.Bundle {
		f, err := fsutil.CreateAtomic(path, 0o600)
		if err != nil {
			return fail(fmt.Errorf("capture %s: %w", w.GuestPath, err))
		}
		max := vm.Spec.WorkDiskSizeBytes + vm.Spec.SystemOverlaySizeByte
		lw := &limitWriter{w: f, max: max, over: fmt.Errorf("bundle is larger than the vm's disks (%d bytes)", max)}
		err = conn.Run(ctx, workspace.BundleScript(w.GuestPath, w.BranchName, w.BaseCommit, c.WIP != ""), nil, lw, nil)
		if err == nil {
			err = f.Commit()
		}
		if err != nil {
			f.Abort()
			return fail(fmt.Errorf("bundle %s: %w", w.GuestPath, err))
		}
		capture.BundlePath, capture.BundleBytes = path, lw.n
	} else if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("capture %s: %w", w.GuestPath, err))
	}
	if err := d.store.SetWorkspaceCapture(ctx, vm.ID, w.GuestPath, capture); err != nil {
		return w, err
	}
	w.Capture = capture
	return w, nil
}

// captureBeforeStop captures every workspace of a running VM that is
// about to stop (by request or idle auto-stop), so its work can still be
// fetched from the stopped VM. Failures are recorded (and make `vm rm`
// refuse without --force) but never block the stop.
func (d *Daemon) captureBeforeStop(ctx context.Context, vm model.VMRecord, progress api.ProgressFunc) {
	all, err := d.store.ListWorkspaces(ctx, vm.ID)
	if err != nil {
		d.logger.Warn("list workspaces before stop", "vm", vm.Name, "err", err)
		return
	}
	var todo []model.Workspace
	for _, w := range all {
		if w.Mode.Ships() {
			todo = append(todo, w)
		}
	}
	if len(todo) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, captureTimeout)
	defer cancel()
	progress(api.Progress{Step: "workspace", Message: fmt.Sprintf("capturing the guest's work in %d workspace(s)", len(todo))})
	conn, err := d.dialGuest(ctx, vm)
	if err != nil {
		for _, w := range todo {
			d.store.SetWorkspaceCaptureError(context.WithoutCancel(ctx), vm.ID, w.GuestPath, model.Now(), err.Error())
		}
		progress(api.Progress{Step: "workspace", Message: fmt.Sprintf("could not capture workspace work: %v", err), Warning: true})
		d.logger.Warn("capture before stop", "vm", vm.Name, "err", err)
		return
	}
	defer conn.Close()
	for _, w := range todo {
		got, err := d.captureLocked(ctx, conn, vm, w)
		if err != nil {
			progress(api.Progress{Step: "workspace", Message: fmt.Sprintf("%s: %v", w.GuestPath, err), Warning: true})
			d.logger.Warn("capture before stop", "vm", vm.Name, "guest_path", w.GuestPath, "err", err)
			continue
		}
		msg := fmt.Sprintf("%s: %s at %s", w.GuestPath, w.BranchName, shortSHA(got.Capture.Head))
		if got.Capture.WIP != "" {
			msg += ", uncommitted work saved"
		}
		if got.HasUnfetchedWork() {
			msg += fmt.Sprintf("; not fetched yet: `banger workspace fetch %s --guest-path %s`", vm.Name, w.GuestPath)
		}
		progress(api.Progress{Step: "workspace", Message: msg})
	}
}

// checkUnfetched refuses to drop a VM whose workspaces hold work the user
// has not fetched, or whose last capture failed (so nobody knows).
func (d *Daemon) checkUnfetched(ctx context.Context, vm model.VMRecord) error {
	all, err := d.store.ListWorkspaces(ctx, vm.ID)
	if err != nil {
		return err
	}
	var why []string
	for _, w := range all {
		switch {
		case !w.Mode.Ships():
		case w.HasUnfetchedWork():
			why = append(why, fmt.Sprintf("%s has unfetched work (`banger workspace fetch %s --guest-path %s`)", w.GuestPath, vm.Name, w.GuestPath))
		case w.Capture.Error != "":
			why = append(why, fmt.Sprintf("%s could not be checked when the vm stopped (%s)", w.GuestPath, w.Capture.Error))
		}
	}
	if len(why) == 0 {
		return nil
	}
	return model.Errorf(model.ECONFLICT, "vm %q: %s; run `banger workspace fetch %s` first, or pass --force to drop the work", vm.Name, strings.Join(why, "; "), vm.Name)
}

// CaptureWorkspace implements api.Backend: a running VM's work is
// captured now; a stopped VM's last capture (made before it stopped) is
// returned as is.
func (d *Daemon) CaptureWorkspace(ctx context.Context, ref, guestPath string, progress api.ProgressFunc) (model.Workspace, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return model.Workspace{}, err
	}
	w, err := d.resolveWorkspace(ctx, vm, guestPath)
	if err != nil {
		return model.Workspace{}, err
	}
	if !w.Mode.Ships() {
		return model.Workspace{}, model.Errorf(model.EINVALID, "the workspace at %s was prepared metadata_only: banger put no repository in the guest, so there is nothing to fetch", w.GuestPath)
	}
	if vm.State == model.VMStateRunning {
		unlock := d.locks.lock(vm.ID)
		defer unlock()
		if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
			return model.Workspace{}, err
		}
		// A stop may have captured while this waited for the lock.
		if w, err = d.store.GetWorkspace(ctx, vm.ID, w.GuestPath); err != nil {
			return model.Workspace{}, err
		}
	}
	if vm.State == model.VMStateRunning {
		d.touch(vm.ID)
		progress(api.Progress{Step: "capture", Message: fmt.Sprintf("capturing %s in the guest", w.GuestPath)})
		conn, err := d.dialGuest(ctx, vm)
		if err != nil {
			return model.Workspace{}, err
		}
		defer conn.Close()
		if w, err = d.captureLocked(ctx, conn, vm, w); err != nil {
			return model.Workspace{}, err
		}
	} else if w.Capture.At.IsZero() {
		return model.Workspace{}, model.Errorf(model.ECONFLICT, "vm %s is %s and its work was never captured (a kill skips the capture); start it (`banger vm start %s`) and fetch again", vm.Name, vm.State, vm.Name)
	} else if w.Capture.Head == "" {
		return model.Workspace{}, model.Errorf(model.ECONFLICT, "vm %s is %s and capturing its work failed (%s); start it (`banger vm start %s`) and fetch again", vm.Name, vm.State, w.Capture.Error, vm.Name)
	}
	return workspaceView(vm, w), nil
}

// OpenWorkspaceBundle implements api.Backend.
func (d *Daemon) OpenWorkspaceBundle(ctx context.Context, ref, guestPath string) (io.ReadCloser, int64, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	w, err := d.resolveWorkspace(ctx, vm, guestPath)
	if err != nil {
		return nil, 0, err
	}
	if w.Capture.BundlePath == "" {
		return nil, 0, model.Errorf(model.ENOTFOUND, "the last capture of %s has no new commits, so no bundle", w.GuestPath)
	}
	f, err := os.Open(w.Capture.BundlePath)
	if err != nil {
		return nil, 0, model.Errorf(model.ENOTFOUND, "bundle of %s: %v", w.GuestPath, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// MarkWorkspaceFetched implements api.Backend.
func (d *Daemon) MarkWorkspaceFetched(ctx context.Context, ref string, req api.WorkspaceFetchedRequest) (model.Workspace, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return model.Workspace{}, err
	}
	w, err := d.resolveWorkspace(ctx, vm, req.GuestPath)
	if err != nil {
		return model.Workspace{}, err
	}
	for _, c := range []string{req.Head, req.WIP} {
		if c != "" && !workspace.IsObjectName(c) {
			return model.Workspace{}, model.Errorf(model.EINVALID, "%q is not an object name", c)
		}
	}
	f := model.WorkspaceFetch{At: model.Now(), Head: req.Head, WIP: req.WIP}
	if err := d.store.SetWorkspaceFetch(ctx, vm.ID, w.GuestPath, f); err != nil {
		return model.Workspace{}, err
	}
	w.Fetched = f
	return workspaceView(vm, w), nil
}

// WorkspaceGit implements api.Backend: git's diff (commits and
// uncommitted work) or log of the guest's work against the base,
// streamed from the guest.
func (d *Daemon) WorkspaceGit(ctx context.Context, ref string, req api.WorkspaceGitRequest, out io.Writer) error {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return err
	}
	w, err := d.resolveWorkspace(ctx, vm, req.GuestPath)
	if err != nil {
		return err
	}
	if !w.Mode.Ships() {
		return model.Errorf(model.EINVALID, "the workspace at %s was prepared metadata_only: there is no repository banger set up in the guest", w.GuestPath)
	}
	if vm, err = d.wake(ctx, vm, api.NoProgress); err != nil {
		return err
	}
	if vm.State != model.VMStateRunning {
		return model.Errorf(model.ECONFLICT, "vm %s is %s; start it, or look at the fetched work on the host: `git log %s..%s`", vm.Name, vm.State, shortSHA(w.BaseCommit), strings.TrimPrefix(workspace.RemoteRef(vm.Name, w.BranchName), "refs/remotes/"))
	}
	o := workspace.GitOutput{Stat: req.Stat, Oneline: req.Oneline, Color: req.Color}
	var script string
	switch req.Kind {
	case "diff":
		script = workspace.DiffScript(w.GuestPath, w.BaseCommit, o)
	case "log":
		script = workspace.LogScript(w.GuestPath, w.BranchName, w.BaseCommit, o)
	default:
		return model.Errorf(model.EINVALID, "unknown git view %q", req.Kind)
	}
	d.touch(vm.ID)
	conn, err := d.dialGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The guest's stderr is kept only as the error's bounded tail.
	if err := conn.Run(ctx, script, nil, out, nil); err != nil {
		return fmt.Errorf("%s in the guest: %w", req.Kind, err)
	}
	return nil
}
