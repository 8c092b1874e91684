package daemon

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/guestinit"
	"banger/internal/image"
	"banger/internal/model"
	"banger/internal/oci"
)

// maxImageFiles bounds the entries of an imported image.
const maxImageFiles = 10_000_000

// maxAuthPart bounds the credentials part of an import.
const maxAuthPart = 64 << 10

// importSource is what an import received: a reference, an archive or a
// layout, in the daemon's own staging directory.
type importSource struct {
	dir     string
	kernel  string
	auth    *oci.Auth
	archive string
	layout  string
	parts   int
}

func (s *importSource) remove() {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// ImportImage implements api.Backend: an image built from a container
// image (a registry reference pulled through build_netns, or an archive
// or layout the caller's CLI read and sent), layers applied in the
// daemon's own staging directory, then today's image build path. A
// failure or a cancelled request leaves no image, no staged file and no
// row.
func (d *Daemon) ImportImage(ctx context.Context, req api.ImageImportRequest, open api.OpenFunc, progress api.ProgressFunc) (model.Image, error) {
	c := api.CallerFrom(ctx)
	if err := d.checkImportRequest(ctx, c, req); err != nil {
		return model.Image{}, err
	}
	budget, err := d.diskBudget(ctx, c)
	if err != nil {
		return model.Image{}, err
	}
	if budget == 0 {
		return model.Image{}, d.diskLimitError(c, 0)
	}
	body, err := open()
	if err != nil {
		return model.Image{}, err
	}
	src, err := d.receiveImport(ctx, c, body, budget, progress)
	defer src.remove()
	if err != nil {
		return model.Image{}, err
	}
	switch n := countTrue(req.Reference != "", src.archive != "", src.layout != ""); {
	case n == 0:
		return model.Image{}, model.Errorf(model.EINVALID, "import: no image: name a reference, or send an archive or a layout")
	case n > 1:
		return model.Image{}, model.Errorf(model.EINVALID, "import: a reference, an archive and a layout are alternatives: send one")
	}
	if req.Dockerfile != "" && req.Reference != "" {
		return model.Image{}, model.Errorf(model.EINVALID, "import: a Dockerfile build sends its image")
	}
	kernel := src.kernel
	if kernel == "" {
		if err := d.checkKernelAvailable(c); err != nil {
			return model.Image{}, err
		}
	}
	release, err := d.waitBuildTurn(ctx, c, progress)
	if err != nil {
		return model.Image{}, err
	}
	defer release()
	bctx := ctx
	if d.cfg.BuildTimeout > 0 {
		var cancel context.CancelFunc
		bctx, cancel = context.WithTimeout(ctx, d.cfg.BuildTimeout)
		defer cancel()
	}
	img, err := d.importImage(bctx, c, req, src, kernel, budget, progress)
	if err != nil && errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		return model.Image{}, model.Errorf(model.ELIMIT, "image import %q stopped after %s, the limit (config key build_timeout): %v", req.Name, d.cfg.BuildTimeout, err)
	}
	return img, err
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// checkImportRequest validates what can be checked before any upload.
func (d *Daemon) checkImportRequest(ctx context.Context, c api.Caller, req api.ImageImportRequest) error {
	if err := d.checkNewImageName(ctx, c, req.Name); err != nil {
		return err
	}
	if req.SizeBytes < 0 || req.SizeBytes > model.MaxDiskBytes {
		return model.Errorf(model.EINVALID, "size: must be positive and at most %s", model.FormatSizeBytes(model.MaxDiskBytes))
	}
	if req.Reference != "" {
		registry, _, err := oci.ParseReference(req.Reference, req.PlainHTTP)
		if err != nil {
			return err
		}
		if !c.Privileged() && image.MirrorIsLocal("http://"+registry) {
			return model.Errorf(model.EFORBIDDEN, "registry %q: names this host; only root and admins may import from a registry on the daemon's own host", registry)
		}
	}
	if strings.ContainsAny(req.Dockerfile, "\x00\n") || len(req.Dockerfile) > 4096 {
		return model.Errorf(model.EINVALID, "dockerfile: not a path")
	}
	return nil
}

// receiveImport stages an import's parts in a directory of the daemon's,
// refusing unknown or repeated parts and sizes past budget (negative:
// none).
func (d *Daemon) receiveImport(ctx context.Context, c api.Caller, body io.Reader, budget int64, progress api.ProgressFunc) (*importSource, error) {
	src := &importSource{}
	dir, err := os.MkdirTemp(d.layout.imagesDir(), "import.tmp-")
	if err != nil {
		return src, fmt.Errorf("import: %w", err)
	}
	src.dir = dir
	pr := api.NewPartReader(body)
	seen := map[string]bool{}
	var total int64
	for {
		h, err := pr.Next()
		if errors.Is(err, io.EOF) {
			return src, nil
		}
		if err != nil {
			return src, err
		}
		if seen[h.Role] {
			return src, model.Errorf(model.EINVALID, "upload: %s sent twice", h.Role)
		}
		seen[h.Role] = true
		var path string
		switch {
		case h.Role == api.RoleKernel:
			path = filepath.Join(dir, "vmlinux")
			src.kernel = path
		case h.Role == api.RoleAuth:
			if h.Size > maxAuthPart {
				return src, model.Errorf(model.EINVALID, "upload: credentials over %d bytes", maxAuthPart)
			}
			path = filepath.Join(dir, "auth.json")
		case h.Role == api.RoleArchive:
			path = filepath.Join(dir, "archive")
			src.archive = path
		case strings.HasPrefix(h.Role, api.RoleLayoutPrefix) && api.ValidLayoutPath(strings.TrimPrefix(h.Role, api.RoleLayoutPrefix)):
			src.layout = filepath.Join(dir, "layout")
			path = filepath.Join(src.layout, strings.TrimPrefix(h.Role, api.RoleLayoutPrefix))
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return src, err
			}
		default:
			return src, model.Errorf(model.EINVALID, "upload: unexpected file %q", h.Role)
		}
		if h.Size > model.MaxDiskBytes {
			return src, model.Errorf(model.EINVALID, "upload: %s is %s, over the %s an image file may be", h.Role, model.FormatSizeBytes(h.Size), model.FormatSizeBytes(model.MaxDiskBytes))
		}
		total += h.Size
		if budget >= 0 && total > budget {
			return src, d.diskLimitError(c, total-budget)
		}
		if src.parts++; src.parts > 100_000 {
			return src, model.Errorf(model.EINVALID, "upload: too many files")
		}
		if h.Role == api.RoleArchive || h.Role == api.RoleKernel {
			progress(api.Progress{Step: "upload", Message: fmt.Sprintf("receiving %s (%s)", h.Role, humanSize(h.Size))})
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return src, fmt.Errorf("import: %w", err)
		}
		_, err = pr.CopyTo(ctx, f, h)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return src, err
		}
		if h.Role == api.RoleAuth {
			b, err := os.ReadFile(path)
			if err != nil {
				return src, err
			}
			var a oci.Auth
			if err := json.Unmarshal(b, &a); err != nil {
				return src, model.Errorf(model.EINVALID, "upload: credentials: %v", err)
			}
			src.auth = &a
			os.Remove(path)
		}
	}
}

// checkKernelAvailable refuses early when there is no kernel and the
// caller may not build one.
func (d *Daemon) checkKernelAvailable(c api.Caller) error {
	ks, err := image.ListKernels(d.layout.kernelsDir())
	if err != nil {
		return err
	}
	if len(ks) == 0 && !c.Privileged() {
		return model.Errorf(model.EUNAVAILABLE, "no kernel built yet: root or a member of the %s group builds one with `banger kernel build` (or pass --kernel with a vmlinux of yours)", d.adminGroupName())
	}
	return nil
}

// importKernel is the kernel an import boots: the newest built one, else
// one built now (root and admins).
func (d *Daemon) importKernel(ctx context.Context, progress api.ProgressFunc) (string, error) {
	ks, err := image.ListKernels(d.layout.kernelsDir())
	if err != nil {
		return "", err
	}
	if len(ks) > 0 {
		progress(api.Progress{Step: "kernel", Message: "using " + ks[0].Name})
		return ks[0].Path, nil
	}
	progress(api.Progress{Step: "kernel", Message: "no kernel built yet: building one first (about 10 minutes on 2 cores)"})
	k, err := d.buildKernel(ctx, api.KernelBuildRequest{}, progress)
	if err != nil {
		return "", err
	}
	return k.Path, nil
}

// initBinary is banger-init, installed next to bangerd.
func initBinary() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Join(filepath.Dir(exe), "banger-init")
}

// openImportSource reads the container image: pulled, or from the
// staged archive or layout. close releases what the layers need.
func (d *Daemon) openImportSource(ctx context.Context, req api.ImageImportRequest, src *importSource, progress api.ProgressFunc) (*oci.Image, model.ImageSource, func(), error) {
	ms := model.ImageSource{Kind: oci.KindRegistry}
	switch {
	case req.Reference != "":
		progress(api.Progress{Step: "pull", Message: "reading " + req.Reference})
		img, full, err := oci.Pull(ctx, req.Reference, oci.PullOptions{Auth: src.auth, PlainHTTP: req.PlainHTTP, NetNS: d.cfg.BuildNetNS})
		if err != nil {
			return nil, ms, nil, err
		}
		ms.Reference = full
		return img, ms, func() {}, nil
	case src.archive != "":
		digest, err := d.prepareArchive(src, progress)
		if err != nil {
			return nil, ms, nil, err
		}
		f, err := os.Open(src.archive)
		if err != nil {
			return nil, ms, nil, err
		}
		img, kind, err := oci.OpenArchive(f)
		if err != nil {
			f.Close()
			return nil, ms, nil, err
		}
		ms.Kind, ms.ArchiveDigest = kind, digest
		return img, ms, func() { f.Close() }, nil
	default:
		img, closeFn, err := oci.OpenLayout(src.layout)
		if err != nil {
			return nil, ms, nil, err
		}
		ms.Kind = oci.KindOCILayout
		return img, ms, closeFn, nil
	}
}

// prepareArchive returns the sha256 of the archive as sent and, when it
// is gzip-compressed (docker save | gzip), replaces it by its content.
func (d *Daemon) prepareArchive(src *importSource, progress api.ProgressFunc) (string, error) {
	f, err := os.Open(src.archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("import: read the archive: %w", err)
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	br := bufio.NewReader(f)
	head, _ := br.Peek(2)
	if len(head) < 2 || head[0] != 0x1f || head[1] != 0x8b {
		return digest, nil
	}
	progress(api.Progress{Step: "upload", Message: "decompressing the archive"})
	zr, err := gzip.NewReader(br)
	if err != nil {
		return "", model.Errorf(model.EINVALID, "archive: broken gzip: %v", err)
	}
	out := src.archive + ".tar"
	w, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(w, io.LimitReader(zr, model.MaxDiskBytes+1))
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", model.Errorf(model.EINVALID, "archive: broken gzip: %v", err)
	}
	os.Remove(src.archive)
	src.archive = out
	return digest, nil
}

// importImage builds the image and stores its row.
func (d *Daemon) importImage(ctx context.Context, c api.Caller, req api.ImageImportRequest, src *importSource, kernel string, budget int64, progress api.ProgressFunc) (model.Image, error) {
	ci, source, closeSrc, err := d.openImportSource(ctx, req, src, progress)
	if err != nil {
		return model.Image{}, err
	}
	defer closeSrc()
	if req.Dockerfile != "" {
		source.Kind, source.Reference = oci.KindDockerfile, req.Dockerfile
	}
	source.ManifestDigest, source.ConfigDigest = ci.ManifestDigest, ci.ConfigDigest
	source.ChainID, source.Layers = ci.ChainID(), len(ci.Layers)
	progress(api.Progress{Step: "image", Message: fmt.Sprintf("%s: %d layers, chain %s", source.Kind, len(ci.Layers), short(source.ChainID))})
	if kernel == "" {
		if kernel, err = d.importKernel(ctx, progress); err != nil {
			return model.Image{}, err
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
	maxBytes := model.MaxDiskBytes
	if budget >= 0 {
		// The tree is not the image (mkfs packs it), but a tree larger
		// than the caller's whole budget cannot fit.
		maxBytes = min(maxBytes, budget)
	}
	cfg := ci.Config.Config
	outDir := d.layout.imageDir(id)
	res, err := image.ImportImage(ctx, image.ImportOptions{
		Name: req.Name, OutDir: outDir, CacheDir: filepath.Join(d.cfg.CacheDir, "images"),
		CacheKey: importCacheKey(c.UID, source.ChainID),
		Unpack: func(ctx context.Context, root string) error {
			return applyLayers(ctx, ci, root, maxBytes, progress)
		},
		Guest:    guestinit.Config{Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User},
		InitPath: initBinary(), KernelPath: kernel, SSHPublicKey: pub, DNS: d.cfg.DefaultDNS,
		SizeBytes: req.SizeBytes, NetNS: d.cfg.BuildNetNS,
		Logger: d.logger.With("sub", "image", "image", req.Name, "owner", c.UID),
	}, progressAdapter(progress))
	if err != nil {
		return model.Image{}, err
	}
	source.Init, source.SSHInstalledWith = res.Init, res.SSHInstalledWith
	now := model.Now()
	img := model.Image{
		ID: id, Name: req.Name, Managed: true, ArtifactDir: outDir,
		RootfsPath: res.RootfsPath, KernelPath: res.KernelPath, WorkSeedPath: res.WorkSeedPath,
		BuildSize: res.BuildSize, SeededSSHPublicKeyFingerprint: fp,
		OwnerUID: c.UID, CreatedAt: now, UpdatedAt: now, Source: &source,
	}
	if len(cfg.Env) > 0 || cfg.WorkingDir != "" || cfg.User != "" {
		img.Config = &model.ImageConfig{Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User}
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
	d.logger.Info("image imported", "image", img.Name, "id", img.ID, "owner", c.UID, "kind", source.Kind, "chain", source.ChainID, "init", source.Init, "cache_hit", res.CacheHit)
	return img, nil
}

// importCacheKey names an unpacked tree in the cache: per owner, so a
// user who knows another's layer digests cannot get their files without
// their layers.
func importCacheKey(uid int, chain string) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("banger oci tree\nowner=%d\nchain=%s\n", uid, chain)))
	return hex.EncodeToString(sum[:16])
}

// applyLayers applies the image's layers onto root, each checked against
// its digests once read.
func applyLayers(ctx context.Context, ci *oci.Image, root string, maxBytes int64, progress api.ProgressFunc) error {
	a, err := oci.OpenApplier(root)
	if err != nil {
		return err
	}
	defer a.Close()
	a.KeepOwners = true
	a.MaxBytes, a.MaxEntries = maxBytes, maxImageFiles
	a.Warn = func(msg string) { progress(api.Progress{Step: "unpack", Message: msg, Warning: true}) }
	for i, l := range ci.Layers {
		what := l.Digest
		if what == "" {
			what = l.DiffID
		}
		size := ""
		if l.Size > 0 {
			size = ", " + humanSize(l.Size)
		}
		progress(api.Progress{Step: "unpack", Message: fmt.Sprintf("layer %d/%d %s%s", i+1, len(ci.Layers), short(what), size)})
		lr, err := ci.Open(i)
		if err != nil {
			return err
		}
		err = a.Apply(ctx, lr)
		if err == nil {
			err = lr.Finish()
		}
		lr.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// short abbreviates a digest for progress lines.
func short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}
