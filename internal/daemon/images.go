package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/model"
)

// ListImages implements api.Backend: the caller's images and root's.
func (d *Daemon) ListImages(ctx context.Context) ([]model.Image, error) {
	all, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := []model.Image{}
	for _, img := range all {
		if imageVisible(ctx, img) {
			out = append(out, img)
		}
	}
	return out, nil
}

// findImage returns an image the caller may see.
func (d *Daemon) findImage(ctx context.Context, ref string) (model.Image, error) {
	img, err := d.store.GetImage(ctx, ref)
	if err != nil {
		return img, err
	}
	if !imageVisible(ctx, img) {
		return model.Image{}, model.Errorf(model.ENOTFOUND, "image %q not found; see `banger image ls`", ref)
	}
	return img, nil
}

// GetImage implements api.Backend.
func (d *Daemon) GetImage(ctx context.Context, ref string) (api.ImageDetail, error) {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return api.ImageDetail{}, err
	}
	det := api.ImageDetail{Image: img, UsedBy: []string{}}
	det.KernelFormat, _ = image.KernelFormat(img.KernelPath)
	for _, a := range []struct{ role, path string }{
		{"kernel", img.KernelPath}, {"rootfs", img.RootfsPath}, {"initrd", img.InitrdPath},
		{"modules", img.ModulesDir}, {"work_seed", img.WorkSeedPath},
	} {
		if a.path == "" {
			continue
		}
		art := api.Artifact{Role: a.role, Path: a.path}
		var st syscall.Stat_t
		if err := syscall.Stat(a.path, &st); err != nil {
			art.Missing = true
		} else {
			art.SizeBytes = st.Size
			art.AllocatedBytes = st.Blocks * 512
		}
		det.Artifacts = append(det.Artifacts, art)
	}
	if img.SeededSSHPublicKeyFingerprint != "" {
		if _, fp, err := image.EnsureSSHKey(d.cfg.SSHKeyPath); err == nil {
			match := fp == img.SeededSSHPublicKeyFingerprint
			det.SSHKeyMatches = &match
		}
	}
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

// RegisterImage implements api.Backend: it records existing artifacts as
// an image after checking the caller can read them and that the kernel is
// a kernel.
func (d *Daemon) RegisterImage(ctx context.Context, req api.ImageRegisterRequest) (api.ImageRegisterResponse, error) {
	var resp api.ImageRegisterResponse
	caller := api.CallerFrom(ctx)
	if err := model.ValidateImageName(req.Name); err != nil {
		return resp, err
	}
	if req.KernelPath == "" {
		return resp, model.Errorf(model.EINVALID, "kernel: required; pass --kernel PATH (an ELF vmlinux or a bzImage)")
	}
	if req.RootfsPath == "" {
		return resp, model.Errorf(model.EINVALID, "rootfs: required; pass --rootfs PATH (an ext4 image)")
	}
	paths := []struct {
		flag string
		p    *string
		dir  bool
	}{
		{"kernel", &req.KernelPath, false}, {"rootfs", &req.RootfsPath, false},
		{"initrd", &req.InitrdPath, false}, {"modules", &req.ModulesDir, true},
		{"work-seed", &req.WorkSeed, false},
	}
	for _, p := range paths {
		if *p.p == "" {
			continue
		}
		if !filepath.IsAbs(*p.p) {
			return resp, model.Errorf(model.EINVALID, "%s %q: must be an absolute path", p.flag, *p.p)
		}
		*p.p = filepath.Clean(*p.p)
		if err := d.checkReadableBy(ctx, caller, *p.p, p.dir); err != nil {
			return resp, fmt.Errorf("%s: %w", p.flag, err)
		}
	}
	format, err := image.KernelFormat(req.KernelPath)
	if err != nil {
		return resp, model.Errorf(model.EINVALID, "kernel %s: %v", req.KernelPath, err)
	}
	switch format {
	case "elf":
	case "bzimage":
		resp.Warnings = append(resp.Warnings, fmt.Sprintf("kernel %s is a bzImage: Firecracker boots only an uncompressed ELF vmlinux, so this image runs only under banger-vmm-qemu; build one with `banger kernel build`", req.KernelPath))
	default:
		return resp, model.Errorf(model.EINVALID, "kernel %s: neither an ELF vmlinux nor a bzImage; build one with `banger kernel build`", req.KernelPath)
	}
	if ok, err := isExt4(req.RootfsPath); err != nil || !ok {
		resp.Warnings = append(resp.Warnings, fmt.Sprintf("rootfs %s does not look like an ext4 filesystem image", req.RootfsPath))
	}
	if _, err := d.store.GetImage(ctx, req.Name); err == nil {
		return resp, model.Errorf(model.ECONFLICT, "image %q already exists; pick another name or `banger image rm %s` first", req.Name, req.Name)
	}
	id, err := model.NewID()
	if err != nil {
		return resp, err
	}
	now := model.Now()
	img := model.Image{
		ID: id, Name: req.Name, Managed: false,
		RootfsPath: req.RootfsPath, KernelPath: req.KernelPath, InitrdPath: req.InitrdPath,
		ModulesDir: req.ModulesDir, WorkSeedPath: req.WorkSeed, Docker: req.Docker,
		OwnerUID: caller.UID, CreatedAt: now, UpdatedAt: now,
	}
	if fi, err := os.Stat(req.RootfsPath); err == nil {
		img.BuildSize = model.FormatSizeBytes(fi.Size())
	}
	if err := d.store.CreateImage(ctx, img); err != nil {
		return resp, err
	}
	d.logger.Info("image registered", "image", img.Name, "id", img.ID, "owner", caller.UID)
	resp.Image = img
	return resp, nil
}

// DeleteImage implements api.Backend. It refuses while a VM uses the
// image, and removes the artifacts of managed images.
func (d *Daemon) DeleteImage(ctx context.Context, ref string) error {
	img, err := d.findImage(ctx, ref)
	if err != nil {
		return err
	}
	if !api.CallerFrom(ctx).Owns(img.OwnerUID) {
		return model.Errorf(model.EFORBIDDEN, "image %q belongs to uid %d; only its owner or root can remove it", img.Name, img.OwnerUID)
	}
	users, err := d.store.VMsUsingImage(ctx, img.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return model.Errorf(model.ECONFLICT, "image %q is used by %d VM(s): %s; remove them first (`banger vm rm`)", img.Name, len(users), strings.Join(users, ", "))
	}
	if err := d.store.DeleteImage(ctx, img.ID); err != nil {
		return err
	}
	if img.Managed && img.ArtifactDir != "" {
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
