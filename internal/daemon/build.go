package daemon

import (
	"context"
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

// BuildKernel implements api.Backend. Builds run one at a time; a
// cancelled request stops the build and removes its work.
func (d *Daemon) BuildKernel(ctx context.Context, req api.KernelBuildRequest, progress api.ProgressFunc) (api.Kernel, error) {
	d.buildMu.Lock()
	defer d.buildMu.Unlock()
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

// BuildImage implements api.Backend: a Debian image built with debootstrap,
// booting the newest built kernel (built first if there is none) or the
// caller's. A cancelled request stops the build, and a failure leaves no
// half image, no mount, no loop device and no row.
func (d *Daemon) BuildImage(ctx context.Context, req api.ImageBuildRequest, progress api.ProgressFunc) (model.Image, error) {
	caller := api.CallerFrom(ctx)
	if req.Name == "" {
		req.Name = d.cfg.DefaultImageName
	}
	if err := model.ValidateImageName(req.Name); err != nil {
		return model.Image{}, err
	}
	for _, p := range req.Packages {
		if !validPackageName(p) {
			return model.Image{}, model.Errorf(model.EINVALID, "package %q: not a Debian package name", p)
		}
	}
	if req.SizeBytes < 0 || req.SizeBytes > model.MaxDiskBytes {
		return model.Image{}, model.Errorf(model.EINVALID, "size: must be positive and at most %s", model.FormatSizeBytes(model.MaxDiskBytes))
	}
	if _, err := d.store.GetImage(ctx, req.Name); err == nil {
		return model.Image{}, model.Errorf(model.ECONFLICT, "image %q already exists; pick another name or `banger image rm %s` first", req.Name, req.Name)
	}
	if req.KernelPath != "" {
		if err := d.checkReadableBy(ctx, caller, req.KernelPath, false); err != nil {
			return model.Image{}, fmt.Errorf("kernel: %w", err)
		}
		if f, _ := image.KernelFormat(req.KernelPath); f != "elf" {
			return model.Image{}, model.Errorf(model.EINVALID, "kernel %s: not an ELF vmlinux (Firecracker boots only those); build one with `banger kernel build`", req.KernelPath)
		}
	}

	d.buildMu.Lock()
	defer d.buildMu.Unlock()
	kernel := req.KernelPath
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
	outDir := d.layout.imageDir(id)
	art, err := image.BuildImage(ctx, image.ImageOptions{
		Name: req.Name, OutDir: outDir, CacheDir: filepath.Join(d.cfg.CacheDir, "images"),
		Release: req.Release, Mirror: req.Mirror, Packages: req.Packages, Docker: req.Docker,
		KernelPath: kernel, SSHPublicKey: pub, DNS: d.cfg.DefaultDNS, SizeBytes: req.SizeBytes, NetNS: d.cfg.BuildNetNS,
		Logger: d.logger.With("sub", "image", "image", req.Name),
	}, progressAdapter(progress))
	if err != nil {
		return model.Image{}, err
	}
	now := model.Now()
	img := model.Image{
		ID: id, Name: req.Name, Managed: true, ArtifactDir: outDir,
		RootfsPath: art.RootfsPath, KernelPath: art.KernelPath, WorkSeedPath: art.WorkSeedPath,
		BuildSize: art.BuildSize, SeededSSHPublicKeyFingerprint: fp, Docker: req.Docker,
		OwnerUID: caller.UID, CreatedAt: now, UpdatedAt: now,
	}
	if err := d.store.CreateImage(context.WithoutCancel(ctx), img); err != nil {
		os.RemoveAll(outDir)
		return model.Image{}, err
	}
	d.logger.Info("image built", "image", img.Name, "id", img.ID, "size", img.BuildSize, "cache_hit", art.CacheHit)
	return img, nil
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
