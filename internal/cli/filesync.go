package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/model"
	"banger/internal/workspace"
)

// homeDir is the user's home, against which file sync host paths resolve.
func (a *App) homeDir() (string, error) {
	if h := a.getenv("HOME"); h != "" {
		return h, nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory: %w", err)
	}
	return h, nil
}

// buildFileSync reads the daemon's file sync entries with this user's
// rights into a temporary tar file (the caller removes it). It returns nil
// when there is nothing to copy. A missing host path is warned about and
// skipped; a file the user cannot read fails the whole create before
// anything is made.
func (a *App) buildFileSync(ctx context.Context, progress func(api.Event)) (*os.File, int, error) {
	entries, err := a.api().FileSyncEntries(ctx)
	if err != nil || len(entries) == 0 {
		return nil, 0, err
	}
	for i, e := range entries {
		if err := config.ValidateGuestPath(e.Guest); err != nil {
			return nil, 0, model.Errorf(model.EINVALID, "file_sync entry %d: %v", i, err)
		}
	}
	home, err := a.homeDir()
	if err != nil {
		return nil, 0, err
	}
	items, err := workspace.ResolveFileSync(entries, home)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.CreateTemp("", "banger-file-sync-*.tar")
	if err != nil {
		return nil, 0, fmt.Errorf("file sync: %w", err)
	}
	warn := func(msg string) {
		progress(api.Event{Type: api.EventProgress, Progress: &api.Progress{Step: "file-sync", Message: msg, Warning: true}})
	}
	n, err := workspace.WriteFileSync(ctx, f, items, nil, warn)
	if err == nil && n > 0 {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil || n == 0 {
		f.Close()
		os.Remove(f.Name())
		return nil, 0, err
	}
	return f, n, nil
}

// createWithFileSync creates a VM. With file sync entries, the files are
// read first (as this user, never by the daemon), then the VM is created
// without starting, the tar is uploaded for the first boot to apply, and
// the VM is started unless the user asked for --no-start. A failed upload
// removes the new VM.
func (a *App) createWithFileSync(ctx context.Context, req model.VMCreateRequest, progress func(api.Event)) (api.VMView, error) {
	tar, n, err := a.buildFileSync(ctx, progress)
	if err != nil {
		return api.VMView{}, err
	}
	if tar == nil {
		return a.api().CreateVM(ctx, req, progress)
	}
	defer os.Remove(tar.Name())
	defer tar.Close()
	start := !req.NoStart
	req.NoStart = true
	v, err := a.api().CreateVM(ctx, req, progress)
	if err != nil {
		return v, err
	}
	up, err := a.api().UploadFileSync(ctx, v.Name, func(w io.Writer) error {
		_, err := io.Copy(w, tar)
		return err
	})
	if err != nil {
		if derr := a.api().DeleteVM(context.WithoutCancel(ctx), v.Name, api.VMDeleteOptions{Force: true}, nil); derr != nil {
			return v, fmt.Errorf("file sync: %w (and removing vm %s failed: %v)", err, v.Name, derr)
		}
		return v, fmt.Errorf("file sync: %w (vm %s was removed)", err, v.Name)
	}
	progress(api.Event{Type: api.EventProgress, Progress: &api.Progress{Step: "file-sync", Message: fmt.Sprintf("%d entries (%d archive entries, %s) for /root, applied at first boot", n, up.Entries, humanBytes(up.Bytes))}})
	if !start {
		return a.api().GetVM(ctx, v.Name)
	}
	return a.api().StartVM(ctx, v.Name, progress)
}
