package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"banger/internal/model"
)

const imageColumns = `id, name, owner_uid, managed, artifact_dir, rootfs_path, work_seed_path, kernel_path, initrd_path, modules_dir, build_size, ssh_fingerprint, docker, created_at, updated_at, oci`

func scanImage(row interface{ Scan(...any) error }) (model.Image, error) {
	var img model.Image
	var created, updated, oci string
	err := row.Scan(&img.ID, &img.Name, &img.OwnerUID, &img.Managed, &img.ArtifactDir, &img.RootfsPath, &img.WorkSeedPath, &img.KernelPath, &img.InitrdPath, &img.ModulesDir, &img.BuildSize, &img.SeededSSHPublicKeyFingerprint, &img.Docker, &created, &updated, &oci)
	if err != nil {
		return img, err
	}
	img.CreatedAt = parseTime(created)
	img.UpdatedAt = parseTime(updated)
	if err := decodeImageOCI(oci, &img); err != nil {
		return img, err
	}
	return img, nil
}

// imageOCI is the oci column: where an image built from a container
// image came from, and the config its sessions apply.
type imageOCI struct {
	Source *model.ImageSource `json:"source,omitempty"`
	Config *model.ImageConfig `json:"config,omitempty"`
}

func encodeImageOCI(img model.Image) string {
	if img.Source == nil && img.Config == nil {
		return ""
	}
	b, _ := json.Marshal(imageOCI{Source: img.Source, Config: img.Config})
	return string(b)
}

func decodeImageOCI(s string, img *model.Image) error {
	if s == "" {
		return nil
	}
	var o imageOCI
	if err := json.Unmarshal([]byte(s), &o); err != nil {
		return fmt.Errorf("image %s: oci column: %w", img.ID, err)
	}
	img.Source, img.Config = o.Source, o.Config
	return nil
}

// CreateImage stores a new image. A name its owner already uses is
// ECONFLICT.
func (s *DB) CreateImage(ctx context.Context, img model.Image) error {
	_, err := s.exec(ctx, `INSERT INTO images (`+imageColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		img.ID, img.Name, img.OwnerUID, img.Managed, img.ArtifactDir, img.RootfsPath, img.WorkSeedPath, img.KernelPath, img.InitrdPath, img.ModulesDir, img.BuildSize, img.SeededSSHPublicKeyFingerprint, img.Docker, formatTime(img.CreatedAt), formatTime(img.UpdatedAt), encodeImageOCI(img))
	return mapError(err, fmt.Sprintf("image %q", img.Name))
}

// UpdateImage rewrites an image row.
func (s *DB) UpdateImage(ctx context.Context, img model.Image) error {
	res, err := s.exec(ctx, `UPDATE images SET name=?, owner_uid=?, managed=?, artifact_dir=?, rootfs_path=?, work_seed_path=?, kernel_path=?, initrd_path=?, modules_dir=?, build_size=?, ssh_fingerprint=?, docker=?, updated_at=?, oci=? WHERE id=?`,
		img.Name, img.OwnerUID, img.Managed, img.ArtifactDir, img.RootfsPath, img.WorkSeedPath, img.KernelPath, img.InitrdPath, img.ModulesDir, img.BuildSize, img.SeededSSHPublicKeyFingerprint, img.Docker, formatTime(img.UpdatedAt), encodeImageOCI(img), img.ID)
	if err != nil {
		return mapError(err, fmt.Sprintf("image %q", img.Name))
	}
	return requireOne(res, "image", img.Name)
}

// GetImage finds an image by its ID.
func (s *DB) GetImage(ctx context.Context, id string) (model.Image, error) {
	img, err := scanImage(s.queryRow(ctx, `SELECT `+imageColumns+` FROM images WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return img, model.Errorf(model.ENOTFOUND, "image %q not found; see `banger image ls`", id)
	}
	return img, err
}

// ImagesNamed returns the images called name (one per owner at most), or
// the image whose ID is name.
func (s *DB) ImagesNamed(ctx context.Context, name string) ([]model.Image, error) {
	return s.queryImages(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ? OR id = ? ORDER BY owner_uid`, name, name)
}

// ListImages returns every image, by name and owner.
func (s *DB) ListImages(ctx context.Context) ([]model.Image, error) {
	return s.queryImages(ctx, `SELECT `+imageColumns+` FROM images ORDER BY name, owner_uid`)
}

func (s *DB) queryImages(ctx context.Context, query string, args ...any) ([]model.Image, error) {
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.Image
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, rows.Err()
}

// DeleteImage removes an image row. An image that a VM still uses is
// ECONFLICT.
func (s *DB) DeleteImage(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM images WHERE id = ?`, id)
	if err != nil {
		return mapError(err, "image")
	}
	return requireOne(res, "image", id)
}

// VMsUsingImage returns the names of the VMs built on an image.
func (s *DB) VMsUsingImage(ctx context.Context, imageID string) ([]string, error) {
	rows, err := s.query(ctx, `SELECT name FROM vms WHERE image_id = ? ORDER BY name`, imageID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

func requireOne(res sql.Result, kind, name string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return model.Errorf(model.ENOTFOUND, "%s %q not found", kind, name)
	}
	return nil
}
