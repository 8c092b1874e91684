package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/model"
)

// progressAdapter turns the image builders' (step, message) progress into
// API progress.
func progressAdapter(p api.ProgressFunc) func(step, msg string) {
	return func(step, msg string) { p(api.Progress{Step: step, Message: msg}) }
}

func kernelView(k image.Kernel) api.Kernel {
	return api.Kernel{Name: k.Name, Path: k.Path, SourceVersion: k.SourceVersion, ConfigHash: k.ConfigHash, SizeBytes: k.SizeBytes, BuiltAt: k.BuiltAt, LogPath: k.LogPath}
}

// ListKernels implements api.Backend.
func (d *Daemon) ListKernels(ctx context.Context) ([]api.Kernel, error) {
	ks, err := image.ListKernels(d.layout.kernelsDir())
	if err != nil {
		return nil, err
	}
	out := []api.Kernel{}
	for _, k := range ks {
		out = append(out, kernelView(k))
	}
	return out, nil
}

// errKernelForbidden refuses a kernel build to a caller who is neither
// root nor an admin: a kernel build is root's work in root's files (the
// kernels every image boots, their logs).
func (d *Daemon) errKernelForbidden() error {
	return model.Errorf(model.EFORBIDDEN, "kernel builds are for root and members of the %s group; ask one of them to run `banger kernel build`", d.adminGroupName())
}

func (d *Daemon) adminGroupName() string {
	if d.cfg.AdminGroup == "" {
		return "admin"
	}
	return d.cfg.AdminGroup
}

// BuildKernel implements api.Backend, for root and admins only (else
// EFORBIDDEN). Builds run one at a time; a cancelled request stops the
// build and removes its work.
func (d *Daemon) BuildKernel(ctx context.Context, req api.KernelBuildRequest, progress api.ProgressFunc) (api.Kernel, error) {
	c := api.CallerFrom(ctx)
	if !c.Privileged() {
		return api.Kernel{}, d.errKernelForbidden()
	}
	release, err := d.waitBuildTurn(ctx, c, progress)
	if err != nil {
		return api.Kernel{}, err
	}
	defer release()
	k, err := d.buildKernel(ctx, req, progress)
	if err != nil {
		return api.Kernel{}, err
	}
	return kernelView(k), nil
}

func (d *Daemon) buildKernel(ctx context.Context, req api.KernelBuildRequest, progress api.ProgressFunc) (image.Kernel, error) {
	k, err := image.BuildKernel(ctx, image.KernelOptions{
		Dir:      d.layout.kernelsDir(),
		CacheDir: filepath.Join(d.cfg.CacheDir, "kernels"),
		Version:  req.Version,
		Force:    req.Force,
		Jobs:     runtime.NumCPU(),
		Logger:   d.logger.With("sub", "kernel"),
	}, progressAdapter(progress))
	if err != nil {
		return k, err
	}
	d.logger.Info("kernel ready", "kernel", k.Name, "reused", k.Reused)
	return k, nil
}

// waitBuildTurn queues the caller's build and waits for its turn.
func (d *Daemon) waitBuildTurn(ctx context.Context, c api.Caller, progress api.ProgressFunc) (func(), error) {
	release, err := d.builds.acquire(ctx, c.UID, func(ahead int) {
		progress(api.Progress{Step: "queue", Message: fmt.Sprintf("waiting: %d build(s) go first (users take turns)", ahead)})
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for a build slot: %w", err)
	}
	return release, nil
}

// BuildImage implements api.Backend: a Debian image built with debootstrap,
// booting the newest built kernel or, for root, the vmlinux at
// req.KernelPath (others send theirs with BuildImageUpload). A cancelled
// request stops the build, and a failure leaves no half image, no mount,
// no loop device and no row.
func (d *Daemon) BuildImage(ctx context.Context, req api.ImageBuildRequest, progress api.ProgressFunc) (model.Image, error) {
	c := api.CallerFrom(ctx)
	if req.KernelPath != "" && !c.Root() {
		return model.Image{}, model.Errorf(model.EFORBIDDEN, "only root names a kernel by path: bangerd opens no file another user names; the banger CLI sends the kernel's contents instead (upgrade the CLI if it sent a path)")
	}
	if err := d.checkBuildRequest(ctx, c, &req); err != nil {
		return model.Image{}, err
	}
	kernel := ""
	if req.KernelPath != "" {
		if !filepath.IsAbs(req.KernelPath) {
			return model.Image{}, model.Errorf(model.EINVALID, "kernel %q: must be an absolute path", req.KernelPath)
		}
		f, err := openRegular(req.KernelPath)
		if err != nil {
			return model.Image{}, model.Errorf(model.EINVALID, "kernel %s: %v", req.KernelPath, err)
		}
		f.Close()
		kernel = req.KernelPath
	}
	return d.buildImage(ctx, c, req, kernel, progress)
}

// BuildImageUpload implements api.Backend: BuildImage with the caller's
// kernel received in the stream, kept by the daemon until the build
// copies it into the image.
func (d *Daemon) BuildImageUpload(ctx context.Context, req api.ImageBuildRequest, open api.OpenFunc, progress api.ProgressFunc) (model.Image, error) {
	c := api.CallerFrom(ctx)
	req.KernelPath = ""
	if err := d.checkBuildRequest(ctx, c, &req); err != nil {
		return model.Image{}, err
	}
	staged, err := d.stageImage()
	if err != nil {
		return model.Image{}, err
	}
	defer staged.abort()
	body, err := open()
	if err != nil {
		return model.Image{}, err
	}
	budget, err := d.diskBudget(ctx, c)
	if err != nil {
		return model.Image{}, err
	}
	if err := d.receiveParts(ctx, c, body, map[string]bool{api.RoleKernel: true}, staged, budget, progress); err != nil {
		return model.Image{}, err
	}
	if staged.files[api.RoleKernel] == "" {
		return model.Image{}, model.Errorf(model.EINVALID, "upload: no kernel was sent")
	}
	return d.buildImage(ctx, c, req, staged.path(api.RoleKernel), progress)
}

// checkBuildRequest validates a build request and fills the default name.
func (d *Daemon) checkBuildRequest(ctx context.Context, c api.Caller, req *api.ImageBuildRequest) error {
	if req.Name == "" {
		req.Name = d.cfg.DefaultImageName
	}
	for _, p := range req.Packages {
		if !validPackageName(p) {
			return model.Errorf(model.EINVALID, "package %q: not a Debian package name", p)
		}
	}
	if req.SizeBytes < 0 || req.SizeBytes > model.MaxDiskBytes {
		return model.Errorf(model.EINVALID, "size: must be positive and at most %s", model.FormatSizeBytes(model.MaxDiskBytes))
	}
	if req.Mirror != "" {
		if err := image.ValidateMirror(req.Mirror); err != nil {
			return err
		}
		if !c.Privileged() && image.MirrorIsLocal(req.Mirror) {
			return model.Errorf(model.EFORBIDDEN, "mirror %q: names this host; only root and admins may build from a mirror on the daemon's own host", req.Mirror)
		}
	}
	if req.Release != "" && !validPackageName(req.Release) {
		return model.Errorf(model.EINVALID, "release %q: not a Debian release name", req.Release)
	}
	if err := d.checkNewImageName(ctx, c, req.Name); err != nil {
		return err
	}
	if budget, err := d.diskBudget(ctx, c); err != nil {
		return err
	} else if budget == 0 {
		return d.diskLimitError(c, 0)
	}
	return nil
}

// buildImage waits for the caller's turn and builds, for at most
// build_timeout.
func (d *Daemon) buildImage(ctx context.Context, c api.Caller, req api.ImageBuildRequest, kernel string, progress api.ProgressFunc) (model.Image, error) {
	if kernel == "" {
		ks, err := image.ListKernels(d.layout.kernelsDir())
		if err != nil {
			return model.Image{}, err
		}
		if len(ks) == 0 && !c.Privileged() {
			return model.Image{}, model.Errorf(model.EUNAVAILABLE, "no kernel built yet: root or a member of the %s group builds one with `banger kernel build` (or pass --kernel with a vmlinux of yours)", d.adminGroupName())
		}
	}
	release, err := d.waitBuildTurn(ctx, c, progress)
	if err != nil {
		return model.Image{}, err
	}
	defer release()
	if kernel == "" {
		ks, err := image.ListKernels(d.layout.kernelsDir())
		if err != nil {
			return model.Image{}, err
		}
		if len(ks) > 0 {
			kernel = ks[0].Path
			progress(api.Progress{Step: "kernel", Message: "using " + ks[0].Name})
		} else {
			progress(api.Progress{Step: "kernel", Message: "no kernel built yet: building one first (about 10 minutes on 2 cores)"})
			k, err := d.buildKernel(ctx, api.KernelBuildRequest{}, progress)
			if err != nil {
				return model.Image{}, err
			}
			kernel = k.Path
		}
	}
	pub, fp, err := image.EnsureSSHKey(d.cfg.SSHKeyPath)
	if err != nil {
		return model.Image{}, err
	}
	id, err := model.NewID()
	if err != nil {
		return model.Image{}, err
	}
	bctx := ctx
	if d.cfg.BuildTimeout > 0 {
		var cancel context.CancelFunc
		bctx, cancel = context.WithTimeout(ctx, d.cfg.BuildTimeout)
		defer cancel()
	}
	outDir := d.layout.imageDir(id)
	art, err := image.BuildImage(bctx, image.ImageOptions{
		Name: req.Name, OutDir: outDir, CacheDir: filepath.Join(d.cfg.CacheDir, "images"),
		Release: req.Release, Mirror: req.Mirror, Packages: req.Packages, Docker: req.Docker,
		KernelPath: kernel, SSHPublicKey: pub, DNS: d.cfg.DefaultDNS, SizeBytes: req.SizeBytes, NetNS: d.cfg.BuildNetNS,
		Keyring: mirrorKeyring(c, req.Mirror),
		Logger:  d.logger.With("sub", "image", "image", req.Name, "owner", c.UID),
	}, progressAdapter(progress))
	if err != nil {
		if errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return model.Image{}, model.Errorf(model.ELIMIT, "image build %q stopped after %s, the limit (config key build_timeout): %v", req.Name, d.cfg.BuildTimeout, err)
		}
		return model.Image{}, err
	}
	now := model.Now()
	img := model.Image{
		ID: id, Name: req.Name, Managed: true, ArtifactDir: outDir,
		RootfsPath: art.RootfsPath, KernelPath: art.KernelPath, WorkSeedPath: art.WorkSeedPath,
		BuildSize: art.BuildSize, SeededSSHPublicKeyFingerprint: fp, Docker: req.Docker,
		OwnerUID: c.UID, CreatedAt: now, UpdatedAt: now,
	}
	if err := d.checkLimits(context.WithoutCancel(ctx), c, usage{DiskBytes: d.imageBytes(img)}); err != nil {
		os.RemoveAll(outDir)
		return model.Image{}, err
	}
	if err := d.store.CreateImage(context.WithoutCancel(ctx), img); err != nil {
		os.RemoveAll(outDir)
		if model.ErrorCode(err) == model.ECONFLICT {
			return model.Image{}, model.Errorf(model.ECONFLICT, "image %q already exists; pick another name or `banger image rm %s` first", req.Name, req.Name)
		}
		return model.Image{}, err
	}
	d.logger.Info("image built", "image", img.Name, "id", img.ID, "owner", c.UID, "size", img.BuildSize, "cache_hit", art.CacheHit)
	d.warmPool(ctx, img)
	return img, nil
}

// debianKeyring is the keyring a mirror named by a user who is not an
// admin must be signed with.
const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// mirrorKeyring is the keyring a build's mirror is checked against: a
// user's own mirror serves only what Debian signed (its packages' scripts
// run as root in the build's chroot); root's, an admin's and the host's
// mirror are trusted as configured.
func mirrorKeyring(c api.Caller, mirror string) string {
	if mirror == "" || c.Privileged() {
		return ""
	}
	return debianKeyring
}

// validPackageName checks a Debian package name (policy 5.6.1), with an
// optional =version or /release.
func validPackageName(p string) bool {
	if len(p) < 2 || len(p) > 128 {
		return false
	}
	for i, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.' || r == '=' || r == '/' || r == ':' || r == '~'
		if !ok || (i == 0 && !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}
