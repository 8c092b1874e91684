package daemon

import (
	"context"
	"fmt"
	"os"

	"banger/internal/api"
	"banger/internal/model"
)

// The daemon enforces the per-user limits on what a user holds (VMs,
// unstarted VMs, disk); the API server enforces those on connections and
// operations in flight. Root and admins are exempt.

// usage is what one uid holds.
type usage struct {
	VMs int
	// Unstarted are VMs created and never started: each holds a guest
	// IP and nothing runs in it.
	Unstarted int
	// DiskBytes are the sizes of the uid's image files plus the system
	// and work disk sizes of its VMs: what the uid may come to occupy.
	DiskBytes int64
}

// usageOf adds up uid's usage. imageBytes gives an image's bytes on the
// daemon's disk.
func usageOf(uid int, images []model.Image, vms []model.VMRecord, imageBytes func(model.Image) int64) usage {
	var u usage
	for _, img := range images {
		if img.OwnerUID == uid {
			u.DiskBytes += imageBytes(img)
		}
	}
	for _, vm := range vms {
		if vm.OwnerUID != uid {
			continue
		}
		u.VMs++
		if vm.State == model.VMStateCreated {
			u.Unstarted++
		}
		u.DiskBytes += vm.Spec.SystemOverlaySizeByte + vm.Spec.WorkDiskSizeBytes
	}
	return u
}

// checkUsage refuses adding add to cur when a limit would be passed. It
// names the limit, its configuration key and what to do.
func checkUsage(uid int, l model.UserLimits, cur, add usage) error {
	if add.VMs > 0 && l.VMs > 0 && cur.VMs+add.VMs > l.VMs {
		return model.Errorf(model.ELIMIT, "uid %d already has %d VMs: the limit is %d (config key limits.vms); remove one with `banger vm rm`", uid, cur.VMs, l.VMs)
	}
	if add.Unstarted > 0 && l.UnstartedVMs > 0 && cur.Unstarted+add.Unstarted > l.UnstartedVMs {
		return model.Errorf(model.ELIMIT, "uid %d already has %d VMs created and never started: the limit is %d (config key limits.unstarted_vms); start one or remove one", uid, cur.Unstarted, l.UnstartedVMs)
	}
	if add.DiskBytes > 0 && l.DiskBytes > 0 && cur.DiskBytes+add.DiskBytes > l.DiskBytes {
		return diskError(uid, cur.DiskBytes, add.DiskBytes, l.DiskBytes)
	}
	return nil
}

func diskError(uid int, cur, add, limit int64) error {
	return model.Errorf(model.ELIMIT, "uid %d would hold %s of images and VM disks with this %s, over the limit of %s (config key limits.disk); remove images or VMs, or ask for smaller disks",
		uid, model.FormatSizeBytes(cur+add), model.FormatSizeBytes(add), model.FormatSizeBytes(limit))
}

// imageBytes is the size of an image's files that are the daemon's own.
func (d *Daemon) imageBytes(img model.Image) int64 {
	var n int64
	for _, f := range imageFiles(img) {
		if f.path == "" || !d.ownsPath(f.path) {
			continue
		}
		if fi, err := os.Stat(f.path); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// usageFor reads what uid holds: its images as usageOf counts them, its
// VMs added up by the database (one indexed query, however many VMs the
// host has), as usageOf would add them up.
func (d *Daemon) usageFor(ctx context.Context, uid int) (usage, error) {
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return usage{}, err
	}
	u := usageOf(uid, imgs, nil, d.imageBytes)
	vu, err := d.store.UsageOf(ctx, uid)
	if err != nil {
		return usage{}, err
	}
	u.VMs, u.Unstarted = vu.VMs, vu.Unstarted
	u.DiskBytes += vu.DiskBytes
	return u, nil
}

// checkLimits refuses c adding add, unless c is exempt (root, admins).
func (d *Daemon) checkLimits(ctx context.Context, c api.Caller, add usage) error {
	if c.Privileged() {
		return nil
	}
	cur, err := d.usageFor(ctx, c.UID)
	if err != nil {
		return err
	}
	return checkUsage(c.UID, d.cfg.Limits, cur, add)
}

// diskBudget is how many more bytes c may store; -1 for no limit.
func (d *Daemon) diskBudget(ctx context.Context, c api.Caller) (int64, error) {
	if c.Privileged() || d.cfg.Limits.DiskBytes <= 0 {
		return -1, nil
	}
	cur, err := d.usageFor(ctx, c.UID)
	if err != nil {
		return 0, err
	}
	return max(d.cfg.Limits.DiskBytes-cur.DiskBytes, 0), nil
}

// diskLimitError is the refusal of an upload over = bytes past c's
// budget.
func (d *Daemon) diskLimitError(c api.Caller, over int64) error {
	return model.Errorf(model.ELIMIT, "uid %d: this upload is %s over the disk limit of %s (config key limits.disk); remove images or VMs first",
		c.UID, model.FormatSizeBytes(over), model.FormatSizeBytes(d.cfg.Limits.DiskBytes))
}

// fileSyncLimit bounds one file sync upload for c: the VM's work disk,
// and for non-admins limits.file_sync_size. key names the limit that
// binds, for the error.
func (d *Daemon) fileSyncLimit(c api.Caller, workDisk int64) (limit int64, key string) {
	limit, key = workDisk, "the vm's work disk"
	if !c.Privileged() && d.cfg.Limits.FileSyncBytes > 0 && d.cfg.Limits.FileSyncBytes < limit {
		limit, key = d.cfg.Limits.FileSyncBytes, "config key limits.file_sync_size"
	}
	return limit, key
}

// describeLimits is the per-user limits for the log at start.
func describeLimits(l model.UserLimits) string {
	return fmt.Sprintf("connections=%d operations=%d vms=%d unstarted_vms=%d file_sync_size=%s disk=%s",
		l.Connections, l.Operations, l.VMs, l.UnstartedVMs, model.FormatSizeBytes(l.FileSyncBytes), model.FormatSizeBytes(l.DiskBytes))
}
