package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func checkDiskSize(what string, size int64) error {
	if size <= 0 || size > model.MaxDiskBytes {
		return model.Errorf(model.EINVALID, "%s size %d bytes is out of range: use 1 byte to %s", what, size, model.FormatSizeBytes(model.MaxDiskBytes))
	}
	return nil
}

// CreateWorkDisk makes a VM's work disk at path, owned by owner (the
// VM's unprivileged user) with mode 0600: a clone (where the filesystem
// allows) or sparse copy of the image's ext4 work seed, grown to
// sizeBytes with resize2fs run as owner; with no seed, an empty ext4
// filesystem of sizeBytes. An existing path is an ECONFLICT error, a size
// below the seed's an EINVALID one. The file appears under its name only
// when complete.
func (m *Manager) CreateWorkDisk(ctx context.Context, seedPath, path string, sizeBytes int64, owner hostexec.Credential) error {
	if err := checkDiskSize("work disk", sizeBytes); err != nil {
		return err
	}
	start := time.Now()
	err := buildFile(path, false, func(f *os.File, tmp string) error {
		if seedPath == "" {
			if err := f.Truncate(sizeBytes); err != nil {
				return err
			}
			if _, err := m.run.Run(ctx, "mkfs.ext4", mkfsArgs(tmp)...); err != nil {
				return fmt.Errorf("make filesystem: %w", err)
			}
			return m.ownDisk(f, owner)
		}
		fi, err := os.Stat(seedPath)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return model.Errorf(model.ENOTFOUND, "work seed %s does not exist: %w", seedPath, err)
			}
			return err
		}
		if sizeBytes < fi.Size() {
			return model.Errorf(model.EINVALID, "work disk size %s is smaller than the image's work seed (%s); choose at least %s", model.FormatSizeBytes(sizeBytes), model.FormatSizeBytes(fi.Size()), model.FormatSizeBytes(fi.Size()))
		}
		if _, err := m.fillFrom(ctx, f, seedPath, true); err != nil {
			return err
		}
		if sizeBytes > fi.Size() {
			return m.growFS(ctx, f, sizeBytes, owner)
		}
		return m.ownDisk(f, owner)
	})
	if err != nil {
		return fmt.Errorf("create work disk %s: %w", path, err)
	}
	m.logger.Info("work disk created", "path", path, "seed", seedPath, "size", sizeBytes, "took", time.Since(start))
	return nil
}

// GrowWorkDisk grows a stopped VM's work disk and its filesystem to
// newSize. Shrinking is refused with EINVALID; the same size does nothing.
// The filesystem is the guest's: e2fsck and resize2fs run as owner (the
// VM's unprivileged user), which the disk file ends up owned by.
func (m *Manager) GrowWorkDisk(ctx context.Context, path string, newSize int64, owner hostexec.Credential) error {
	if err := checkDiskSize("work disk", newSize); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return model.Errorf(model.ENOTFOUND, "grow work disk: %s does not exist: %w", path, err)
		}
		return fmt.Errorf("grow work disk: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("grow work disk: %w", err)
	}
	switch {
	case newSize < fi.Size():
		return model.Errorf(model.EINVALID, "work disk %s is %s; shrinking it to %s is not supported: choose a size of at least %s", path, model.FormatSizeBytes(fi.Size()), model.FormatSizeBytes(newSize), model.FormatSizeBytes(fi.Size()))
	case newSize == fi.Size():
		return nil
	}
	if err := m.growFS(ctx, f, newSize, owner); err != nil {
		return fmt.Errorf("grow work disk: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("grow work disk: %w", err)
	}
	m.logger.Info("work disk grown", "path", path, "from", fi.Size(), "to", newSize)
	return nil
}
