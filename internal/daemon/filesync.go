package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"banger/internal/api"
	"banger/internal/fsutil"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/workspace"
)

// FileSyncEntries implements api.Backend: the configured entries, which
// the CLI resolves and reads with the requesting user's rights.
func (d *Daemon) FileSyncEntries(context.Context) ([]model.FileSyncEntry, error) {
	return d.cfg.FileSync, nil
}

// UploadFileSync implements api.Backend: a VM that has not booted yet
// receives its file sync tar, which is checked (every entry stays under
// /root) and kept in the VM's directory until the first boot applies it.
// The daemon never reads the user's files itself.
func (d *Daemon) UploadFileSync(ctx context.Context, ref string, open api.OpenFunc) (api.FileSyncUpload, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return api.FileSyncUpload{}, err
	}
	defer unlock()
	if vm.State == model.VMStateRunning {
		return api.FileSyncUpload{}, model.Errorf(model.ECONFLICT, "vm %q is running; file sync is applied when a vm boots, so upload it before `banger vm start %s`", vm.Name, vm.Name)
	}
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
		return api.FileSyncUpload{}, fmt.Errorf("file sync: %w", err)
	}
	body, err := open()
	if err != nil {
		return api.FileSyncUpload{}, err
	}
	path := fileSyncPath(vm.Runtime.VMDir)
	f, err := fsutil.CreateAtomic(path, 0o600)
	if err != nil {
		return api.FileSyncUpload{}, fmt.Errorf("file sync: %w", err)
	}
	defer f.Abort()
	// The work disk bounds what fits in /root.
	limit := vm.Spec.WorkDiskSizeBytes
	n, err := io.Copy(f, io.LimitReader(body, limit+1))
	if err != nil {
		return api.FileSyncUpload{}, fmt.Errorf("file sync upload: %w", err)
	}
	if n > limit {
		return api.FileSyncUpload{}, model.Errorf(model.EINVALID, "file sync archive is larger than the vm's work disk (%s)", model.FormatSizeBytes(limit))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return api.FileSyncUpload{}, err
	}
	entries, _, err := workspace.CheckFileSyncTar(f)
	if err != nil {
		return api.FileSyncUpload{}, err
	}
	if err := f.Commit(); err != nil {
		return api.FileSyncUpload{}, fmt.Errorf("file sync: %w", err)
	}
	d.logger.Info("file sync stored", "vm", vm.Name, "entries", entries, "bytes", n)
	return api.FileSyncUpload{Entries: entries, Bytes: n}, nil
}

// applyFileSync extracts a VM's pending file sync tar into /root over the
// daemon's SSH connection (files owned by root) and removes it. The tar
// is checked again first: it came from a user.
func (d *Daemon) applyFileSync(ctx context.Context, conn *guest.Conn, vm model.VMRecord) error {
	path := fileSyncPath(vm.Runtime.VMDir)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("file sync: %w", err)
	}
	defer f.Close()
	if _, _, err := workspace.CheckFileSyncTar(f); err != nil {
		return fmt.Errorf("file sync: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("file sync: %w", err)
	}
	if err := conn.Run(ctx, workspace.FileSyncScript, f, nil, nil); err != nil {
		return fmt.Errorf("apply file sync: %w", err)
	}
	f.Close()
	if err := os.Remove(path); err != nil {
		d.logger.Warn("remove applied file sync", "vm", vm.Name, "err", err)
	}
	return nil
}
