package daemon

import (
	"context"
	"fmt"
	"os"

	"banger/internal/api"
	"banger/internal/model"
)

// Images registered before bangerd kept its own copies name files
// anywhere on the host. At start the daemon settles them:
//
//   - root's: root named those paths, so the daemon copies the files into
//     the state dir now (a reflink where it can) and the image uses the
//     copies from then on;
//   - another user's: the daemon will not open a path a user named, so
//     the image stays as it is and cannot be used (create, start and
//     reset-system say why: its owner registers it again, which uploads
//     the files). It can still be listed, inspected (no file is looked
//     at) and removed.
func (d *Daemon) settleLegacyImages(ctx context.Context) {
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		d.logger.Warn("legacy images: list", "err", err)
		return
	}
	for _, img := range imgs {
		if d.imageIsOwn(img) {
			continue
		}
		log := d.logger.With("image", img.Name, "id", model.ShortID(img.ID), "owner", img.OwnerUID)
		if img.OwnerUID != 0 {
			log.Warn("image registered by path before bangerd kept copies; it cannot be used until its owner registers it again")
			continue
		}
		if err := d.copyLegacyImage(ctx, img); err != nil {
			log.Warn("legacy image: could not copy root's files into the state dir; the image cannot be used until it is registered again", "err", err)
			continue
		}
		log.Info("legacy image: root's files copied into the state dir")
	}
}

// copyLegacyImage copies a root image's files into an artifact dir of
// its own and points the row at the copies.
func (d *Daemon) copyLegacyImage(ctx context.Context, img model.Image) error {
	if img.ModulesDir != "" && !d.ownsPath(img.ModulesDir) {
		// Never used by banger: drop it rather than copy a tree.
		img.ModulesDir = ""
	}
	staged, err := d.stageImage()
	if err != nil {
		return err
	}
	defer staged.abort()
	staged.id = img.ID
	staged.dir = d.layout.imageDir(img.ID)
	if _, err := os.Lstat(staged.dir); err == nil {
		return fmt.Errorf("%s already exists", staged.dir)
	}
	files := []struct {
		role string
		path *string
	}{
		{api.RoleKernel, &img.KernelPath}, {api.RoleRootfs, &img.RootfsPath},
		{api.RoleInitrd, &img.InitrdPath}, {api.RoleWorkSeed, &img.WorkSeedPath},
	}
	for _, f := range files {
		if *f.path == "" {
			continue
		}
		src, err := openRegular(*f.path)
		if err != nil {
			return fmt.Errorf("%s %s: %w", f.role, *f.path, err)
		}
		dst, err := staged.create(f.role)
		if err != nil {
			src.Close()
			return err
		}
		_, err = d.storage.ImportFile(ctx, dst, src)
		src.Close()
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.role, err)
		}
	}
	if err := staged.commit(); err != nil {
		return err
	}
	for _, f := range files {
		if *f.path != "" {
			*f.path = staged.final(f.role)
		}
	}
	img.ArtifactDir = staged.dir
	img.UpdatedAt = model.Now()
	if err := d.store.UpdateImage(ctx, img); err != nil {
		os.RemoveAll(staged.dir)
		return err
	}
	return nil
}
