package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/model"
)

// Every image's files are the daemon's own copies under the state dir:
// a user's CLI uploads what it read with the user's rights, root's paths
// are copied at register time. Nothing a caller names is opened again
// later, so swapping a registered file changes nothing.

// Files of an image in its artifact dir.
const (
	artifactKernel   = "vmlinux"
	artifactInitrd   = "initrd"
	artifactRootfs   = "rootfs.ext4"
	artifactWorkSeed = "work-seed.ext4"
)

// artifactName is the file a role's upload becomes.
var artifactName = map[string]string{
	api.RoleKernel: artifactKernel, api.RoleInitrd: artifactInitrd,
	api.RoleRootfs: artifactRootfs, api.RoleWorkSeed: artifactWorkSeed,
}

// ListImages implements api.Backend: the caller's images and root's (root
// and admins see all).
func (d *Daemon) ListImages(ctx context.Context) ([]model.Image, error) {
	all, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	c := api.CallerFrom(ctx)
	out := []model.Image{}
	for _, img := range all {
		if imageVisible(c, img) {
			out = append(out, img)
		}
	}
	return out, nil
}

// findImage resolves ref as the caller means it (see imageref.go).
// Returns ENOTFOUND for an image the caller may not see.
func (d *Daemon) findImage(ctx context.Context, ref string) (model.Image, error) {
	r, err := parseImageRef(ref)
	if err != nil {
		return model.Image{}, err
	}
	candidates, err := d.store.ImagesNamed(ctx, r.name)
	if err != nil {
		return model.Image{}, err
	}
	return resolveImage(api.CallerFrom(ctx), ref, candidates, d.lookupUID)
}

// ownsPath reports whether path is one of the daemon's own image or
// kernel files (under the state dir, which only root can enter).
func (d *Daemon) ownsPath(path string) bool {
	for _, dir := range []string{d.layout.imagesDir(), d.layout.kernelsDir()} {
		if strings.HasPrefix(filepath.Clean(path), dir+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// imageFiles returns an image's files by role.
func imageFiles(img model.Image) []struct{ role, path string } {
	return []struct{ role, path string }{
		{"kernel", img.KernelPath}, {"rootfs", img.RootfsPath}, {"initrd", img.InitrdPath},
		{"modules", img.ModulesDir}, {"work_seed", img.WorkSeedPath},
	}
}

// imageIsOwn reports whether every file of img is the daemon's copy.
func (d *Daemon) imageIsOwn(img model.Image) bool {
	for _, f := range imageFiles(img) {
		if f.path != "" && !d.ownsPath(f.path) {
			return false
		}
	}
	return true
}

// checkImageUsable refuses an image whose files are not the daemon's
// copies: one a user registered by path before banger kept copies, which
// root must not open.
func (d *Daemon) checkImageUsable(img model.Image) error {
	if d.imageIsOwn(img) {
		return nil
	}
	return model.Errorf(model.ECONFLICT, "image %q was registered by path before bangerd kept its own copies of image files, and bangerd no longer opens files a user names: its owner (uid %d) registers it again under a new name (`banger image register NEW --kernel ... --rootfs ...`), makes new VMs from that, and removes this one", img.Name, img.OwnerUID)
}

// GetImage implements api.Backend. Sizes come from the daemon's own
// copies only: a file outside the state dir (an image registered by path
// before copies) is shown, never looked at.
func (d *Daemon) GetImage(ctx context.Context, ref string) (api.ImageDetail, error) {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return api.ImageDetail{}, err
	}
	det := api.ImageDetail{Image: img, UsedBy: []string{}, KernelFormat: "unknown"}
	if d.ownsPath(img.KernelPath) {
		det.KernelFormat, _ = image.KernelFormat(img.KernelPath)
	}
	for _, a := range imageFiles(img) {
		if a.path == "" {
			continue
		}
		art := api.Artifact{Role: a.role, Path: a.path}
		var st syscall.Stat_t
		if !d.ownsPath(a.path) || syscall.Stat(a.path, &st) != nil {
			art.Missing = true
		} else {
			art.SizeBytes = st.Size
			art.AllocatedBytes = st.Blocks * 512
		}
		det.Artifacts = append(det.Artifacts, art)
	}
	if !d.imageIsOwn(img) {
		det.Note = d.checkImageUsable(img).Error()
	}
	if img.SeededSSHPublicKeyFingerprint != "" {
		if _, fp, err := image.EnsureSSHKey(d.cfg.SSHKeyPath); err == nil {
			match := fp == img.SeededSSHPublicKeyFingerprint
			det.SSHKeyMatches = &match
		}
	}
	det.Warm = d.warmView(img)
	users, err := d.store.VMsUsingImage(ctx, img.ID)
	if err != nil {
		return det, err
	}
	for _, name := range users {
		// Only name VMs the caller could see.
		if vm, err := d.store.GetVM(ctx, name); err == nil && api.CallerFrom(ctx).Owns(vm.OwnerUID) {
			det.UsedBy = append(det.UsedBy, name)
		}
	}
	return det, nil
}

// checkNewImageName validates a new image's name and refuses one the
// caller already uses. Other owners' names are none of the caller's
// business: they neither conflict nor show.
func (d *Daemon) checkNewImageName(ctx context.Context, c api.Caller, name string) error {
	if err := model.ValidateImageName(name); err != nil {
		return err
	}
	imgs, err := d.store.ImagesNamed(ctx, name)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if img.OwnerUID == c.UID && img.Name == name {
			return model.Errorf(model.ECONFLICT, "image %q already exists; pick another name or `banger image rm %s` first", name, name)
		}
	}
	return nil
}

// RegisterImage implements api.Backend for root, whose paths the daemon
// may open: it copies them (a reflink where the filesystem allows) into
// the state dir at once. Anyone else uploads the files (UploadImage), as
// the banger CLI does.
func (d *Daemon) RegisterImage(ctx context.Context, req api.ImageRegisterRequest) (api.ImageRegisterResponse, error) {
	var resp api.ImageRegisterResponse
	c := api.CallerFrom(ctx)
	if !c.Root() {
		return resp, model.Errorf(model.EFORBIDDEN, "only root registers images by path: bangerd opens no file another user names; the banger CLI sends your files' contents instead (upgrade the CLI if it sent paths)")
	}
	if err := d.checkNewImageName(ctx, c, req.Name); err != nil {
		return resp, err
	}
	if req.KernelPath == "" {
		return resp, model.Errorf(model.EINVALID, "kernel: required; pass --kernel PATH (an ELF vmlinux or a bzImage)")
	}
	if req.RootfsPath == "" {
		return resp, model.Errorf(model.EINVALID, "rootfs: required; pass --rootfs PATH (an ext4 image)")
	}
	if req.ModulesDir != "" {
		return resp, errNoModules
	}
	paths := []struct{ role, flag, path string }{
		{api.RoleKernel, "kernel", req.KernelPath}, {api.RoleRootfs, "rootfs", req.RootfsPath},
		{api.RoleInitrd, "initrd", req.InitrdPath}, {api.RoleWorkSeed, "work-seed", req.WorkSeed},
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	roles := map[string]*os.File{}
	for _, p := range paths {
		if p.path == "" {
			continue
		}
		if !filepath.IsAbs(p.path) {
			return resp, model.Errorf(model.EINVALID, "%s %q: must be an absolute path", p.flag, p.path)
		}
		f, err := openRegular(p.path)
		if err != nil {
			return resp, model.Errorf(model.EINVALID, "%s %s: %v", p.flag, p.path, err)
		}
		files = append(files, f)
		roles[p.role] = f
	}
	staged, err := d.stageImage()
	if err != nil {
		return resp, err
	}
	defer staged.abort()
	for role, src := range roles {
		dst, err := staged.create(role)
		if err != nil {
			return resp, err
		}
		_, err = d.storage.ImportFile(ctx, dst, src)
		dst.Close()
		if err != nil {
			return resp, fmt.Errorf("register image: %s: %w", role, err)
		}
	}
	return d.commitImage(ctx, c, staged, api.ImageUploadRequest{Name: req.Name, Docker: req.Docker})
}

// errNoModules refuses a modules directory: banger never used one (an
// image's modules live in its root filesystem).
var errNoModules = model.Errorf(model.EINVALID, "modules: banger does not use a separate modules directory (put the modules in the root filesystem); drop --modules")

// openRegular opens path for reading without blocking (a FIFO must not
// hang the daemon) and refuses anything but a regular file.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	return f, nil
}

// UploadImage implements api.Backend: the caller's CLI streams the files
// it read with the caller's rights, and the daemon keeps its own copies.
// Returns EINVALID for a bad name or stream, ECONFLICT for a name the
// caller already uses, ELIMIT past the caller's disk limit.
func (d *Daemon) UploadImage(ctx context.Context, req api.ImageUploadRequest, open api.OpenFunc, progress api.ProgressFunc) (api.ImageRegisterResponse, error) {
	var resp api.ImageRegisterResponse
	c := api.CallerFrom(ctx)
	if err := d.checkNewImageName(ctx, c, req.Name); err != nil {
		return resp, err
	}
	budget, err := d.diskBudget(ctx, c)
	if err != nil {
		return resp, err
	}
	staged, err := d.stageImage()
	if err != nil {
		return resp, err
	}
	defer staged.abort()
	body, err := open()
	if err != nil {
		return resp, err
	}
	allowed := map[string]bool{api.RoleKernel: true, api.RoleRootfs: true, api.RoleInitrd: true, api.RoleWorkSeed: true}
	if err := d.receiveParts(ctx, c, body, allowed, staged, budget, progress); err != nil {
		return resp, err
	}
	for _, role := range []string{api.RoleKernel, api.RoleRootfs} {
		if staged.files[role] == "" {
			return resp, model.Errorf(model.EINVALID, "upload: no %s was sent", role)
		}
	}
	return d.commitImage(ctx, c, staged, req)
}

// receiveParts writes an upload's parts into staged, refusing a role not
// in allowed, a role sent twice, and sizes past budget (negative: none).
func (d *Daemon) receiveParts(ctx context.Context, c api.Caller, body io.Reader, allowed map[string]bool, staged *stagedImage, budget int64, progress api.ProgressFunc) error {
	pr := api.NewPartReader(body)
	var total int64
	for {
		h, err := pr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if !allowed[h.Role] {
			return model.Errorf(model.EINVALID, "upload: unexpected file %q", h.Role)
		}
		if staged.files[h.Role] != "" {
			return model.Errorf(model.EINVALID, "upload: %s sent twice", h.Role)
		}
		if h.Size > model.MaxDiskBytes {
			return model.Errorf(model.EINVALID, "upload: %s is %s, over the %s an image file may be", h.Role, model.FormatSizeBytes(h.Size), model.FormatSizeBytes(model.MaxDiskBytes))
		}
		total += h.Size
		if budget >= 0 && total > budget {
			return d.diskLimitError(c, total-budget)
		}
		progress(api.Progress{Step: "upload", Message: fmt.Sprintf("receiving %s (%s)", h.Role, humanSize(h.Size))})
		dst, err := staged.create(h.Role)
		if err != nil {
			return err
		}
		_, err = pr.CopyTo(ctx, dst, h)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
}

// commitImage checks staged files (the kernel is a kernel, the rootfs
// looks like ext4), moves them to the image's dir and stores the row.
func (d *Daemon) commitImage(ctx context.Context, c api.Caller, staged *stagedImage, req api.ImageUploadRequest) (api.ImageRegisterResponse, error) {
	var resp api.ImageRegisterResponse
	kernel := staged.path(api.RoleKernel)
	format, err := image.KernelFormat(kernel)
	if err != nil {
		return resp, model.Errorf(model.EINVALID, "kernel: %v", err)
	}
	switch format {
	case image.FormatELF:
	case image.FormatBzImage:
		resp.Warnings = append(resp.Warnings, "the kernel is a bzImage: Firecracker boots only an uncompressed ELF vmlinux, so this image runs only under banger-vmm-qemu; build one with `banger kernel build`")
	default:
		return resp, model.Errorf(model.EINVALID, "kernel: neither an ELF vmlinux nor a bzImage; build one with `banger kernel build`")
	}
	if ok, err := isExt4(staged.path(api.RoleRootfs)); err != nil || !ok {
		resp.Warnings = append(resp.Warnings, "the rootfs does not look like an ext4 filesystem image")
	}
	if p := staged.files[api.RoleWorkSeed]; p != "" {
		if ok, err := isExt4(staged.path(api.RoleWorkSeed)); err != nil || !ok {
			return resp, model.Errorf(model.EINVALID, "work seed: not an ext4 filesystem image (each VM's /root disk starts as a copy of it)")
		}
	}
	if err := staged.commit(); err != nil {
		return resp, err
	}
	now := model.Now()
	img := model.Image{
		ID: staged.id, Name: req.Name, Managed: false, ArtifactDir: staged.dir,
		RootfsPath: staged.final(api.RoleRootfs), KernelPath: staged.final(api.RoleKernel),
		InitrdPath: staged.final(api.RoleInitrd), WorkSeedPath: staged.final(api.RoleWorkSeed),
		Docker: req.Docker, OwnerUID: c.UID, CreatedAt: now, UpdatedAt: now,
	}
	if fi, err := os.Stat(img.RootfsPath); err == nil {
		img.BuildSize = model.FormatSizeBytes(fi.Size())
	}
	if err := d.store.CreateImage(context.WithoutCancel(ctx), img); err != nil {
		os.RemoveAll(staged.dir)
		if model.ErrorCode(err) == model.ECONFLICT {
			return resp, model.Errorf(model.ECONFLICT, "image %q already exists; pick another name or `banger image rm %s` first", req.Name, req.Name)
		}
		return resp, err
	}
	d.logger.Info("image registered", "image", img.Name, "id", img.ID, "owner", c.UID)
	d.warmPool(ctx, img)
	resp.Image = img
	return resp, nil
}

// stagedImage is an image's files being received in a temporary dir
// under the images dir, renamed to the image's dir when complete.
type stagedImage struct {
	id    string
	dir   string // the final dir
	tmp   string
	files map[string]string // role → file name
	done  bool
}

func (d *Daemon) stageImage() (*stagedImage, error) {
	id, err := model.NewID()
	if err != nil {
		return nil, err
	}
	dir := d.layout.imageDir(id)
	tmp, err := os.MkdirTemp(d.layout.imagesDir(), model.ShortID(id)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("register image: %w", err)
	}
	return &stagedImage{id: id, dir: dir, tmp: tmp, files: map[string]string{}}, nil
}

// create makes role's file in the staging dir.
func (s *stagedImage) create(role string) (*os.File, error) {
	name := artifactName[role]
	f, err := os.OpenFile(filepath.Join(s.tmp, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("register image: %w", err)
	}
	s.files[role] = name
	return f, nil
}

// path is where role's file is while staged.
func (s *stagedImage) path(role string) string { return filepath.Join(s.tmp, s.files[role]) }

// final is where role's file is once committed ("" when not sent).
func (s *stagedImage) final(role string) string {
	if s.files[role] == "" {
		return ""
	}
	return filepath.Join(s.dir, s.files[role])
}

func (s *stagedImage) commit() error {
	if err := os.Rename(s.tmp, s.dir); err != nil {
		return fmt.Errorf("register image: %w", err)
	}
	s.done = true
	return nil
}

// abort removes what was staged, unless committed.
func (s *stagedImage) abort() {
	if !s.done {
		os.RemoveAll(s.tmp)
	}
}

// DeleteImage implements api.Backend. It refuses while a VM uses the
// image, and removes the daemon's copies of its files.
func (d *Daemon) DeleteImage(ctx context.Context, ref string) error {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return err
	}
	if !api.CallerFrom(ctx).Owns(img.OwnerUID) {
		return model.Errorf(model.EFORBIDDEN, "image %q belongs to uid %d; only its owner, root or an admin can remove it", img.Name, img.OwnerUID)
	}
	users, err := d.store.VMsUsingImage(ctx, img.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		// Name only the VMs the caller could see: others' are counted.
		var seen []string
		for _, name := range users {
			if vm, err := d.store.GetVM(ctx, name); err == nil && api.CallerFrom(ctx).Owns(vm.OwnerUID) {
				seen = append(seen, name)
			}
		}
		which := strings.Join(seen, ", ")
		if hidden := len(users) - len(seen); hidden > 0 {
			if which != "" {
				which += " and "
			}
			which += fmt.Sprintf("%d of other users", hidden)
		}
		return model.Errorf(model.ECONFLICT, "image %q is used by %d VM(s): %s; remove them first (`banger vm rm`)", img.Name, len(users), which)
	}
	if err := d.store.DeleteImage(ctx, img.ID); err != nil {
		return err
	}
	d.removeWarmStates(img)
	if img.ArtifactDir != "" && d.ownsPath(img.ArtifactDir) {
		if err := os.RemoveAll(img.ArtifactDir); err != nil {
			d.logger.Warn("remove image artifacts", "image", img.Name, "err", err)
		}
	}
	d.logger.Info("image removed", "image", img.Name, "id", img.ID)
	return nil
}

// isExt4 checks the ext2/3/4 superblock magic.
func isExt4(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	magic := make([]byte, 2)
	if _, err := f.ReadAt(magic, 1024+56); err != nil {
		return false, err
	}
	return magic[0] == 0x53 && magic[1] == 0xEF, nil
}
