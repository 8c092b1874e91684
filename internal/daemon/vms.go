package daemon

import (
	"context"
	"fmt"
	"os"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/network"
)

// ListVMs implements api.Backend: the caller's VMs (root sees all).
func (d *Daemon) ListVMs(ctx context.Context) ([]api.VMView, error) {
	vms, err := d.listVMRows(ctx)
	if err != nil {
		return nil, err
	}
	images := map[string]model.Image{}
	if imgs, err := d.store.ListImages(ctx); err == nil {
		for _, img := range imgs {
			images[img.ID] = img
		}
	}
	caller := api.CallerFrom(ctx)
	out := []api.VMView{}
	for _, vm := range vms {
		if !caller.Owns(vm.OwnerUID) || vm.Runtime.WarmOf != "" {
			// An image's hidden warm VM is not listed (warm.go).
			continue
		}
		v := d.view(vm)
		v.ImageName = images[vm.ImageID].Name
		v.ImageConfig = images[vm.ImageID].Config
		out = append(out, v)
	}
	return out, nil
}

// findVM returns a VM the caller owns.
func (d *Daemon) findVM(ctx context.Context, ref string) (model.VMRecord, error) {
	vm, err := d.store.GetVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	if err := checkVMAccess(ctx, vm, ref); err != nil {
		return model.VMRecord{}, err
	}
	return vm, nil
}

// GetVM implements api.Backend.
func (d *Daemon) GetVM(ctx context.Context, ref string) (api.VMView, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return api.VMView{}, err
	}
	v := d.view(vm)
	if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		v.ImageName = img.Name
		v.ImageConfig = img.Config
	}
	v.DiskPool = d.vmPoolView(vm)
	return v, nil
}

// view decorates a record with derived facts.
func (d *Daemon) view(vm model.VMRecord) api.VMView {
	v := api.VMView{VMRecord: vm}
	// VMs made before egress policies existed are open.
	v.Spec.Egress.Mode = vm.Spec.Egress.Effective()
	if h, ok := d.handles.get(vm.ID); ok && vm.State == model.VMStateRunning {
		v.PID = h.PID
	}
	v.IdleAction = d.idleAction(vm)
	if vm.State == model.VMStateRunning {
		if after := d.autoStopAfter(vm); after > 0 {
			last := vm.LastTouchedAt
			if vm.Stats.LastActiveAt.After(last) {
				last = vm.Stats.LastActiveAt
			}
			at := last.Add(after)
			v.AutoStopAt = &at
		}
	}
	return v
}

// autoStopAfter is the idle time after which vm is stopped; 0 is never.
func (d *Daemon) autoStopAfter(vm model.VMRecord) time.Duration {
	if vm.Spec.AutoStopAfterSeconds != nil {
		return time.Duration(*vm.Spec.AutoStopAfterSeconds) * time.Second
	}
	return d.cfg.AutoStopStaleAfter
}

// specFromRequest fills a VM spec from a create request and the
// configured defaults.
func (d *Daemon) specFromRequest(req model.VMCreateRequest) model.VMSpec {
	def := d.cfg.VMDefaults
	pick := func(v, dflt, model int) int {
		if v != 0 {
			return v
		}
		if dflt != 0 {
			return dflt
		}
		return model
	}
	pick64 := func(v, dflt, model int64) int64 {
		if v != 0 {
			return v
		}
		if dflt != 0 {
			return dflt
		}
		return model
	}
	spec := model.VMSpec{
		VCPUCount:             pick(req.VCPUCount, def.VCPUCount, model.DefaultVCPUCount),
		MemoryMiB:             pick(req.MemoryMiB, def.MemoryMiB, model.DefaultMemoryMiB),
		SystemOverlaySizeByte: pick64(req.SystemOverlaySizeByte, def.SystemOverlaySizeByte, model.DefaultSystemOverlaySize),
		WorkDiskSizeBytes:     pick64(req.WorkDiskSizeBytes, def.WorkDiskSizeBytes, model.DefaultWorkDiskSize),
		NATEnabled:            def.NATEnabled,
		AutoStopAfterSeconds:  req.AutoStopAfterSeconds,
		IdleAction:            req.IdleAction,
	}
	if req.NATSet || req.NATEnabled {
		spec.NATEnabled = req.NATEnabled
	}
	spec.Egress, _ = def.Egress.Normalize() // the config checked it
	if req.Egress != nil {
		spec.Egress = *req.Egress
	}
	if spec.AutoStopAfterSeconds == nil && def.AutoStopAfter > 0 {
		s := int64(def.AutoStopAfter / time.Second)
		spec.AutoStopAfterSeconds = &s
	}
	return spec
}

// resolveCreateImage picks the image for a new VM: the named one, else the
// configured default, else the only image a bare name could mean to the
// caller (its own and root's; root's own for root: never another user's).
func (d *Daemon) resolveCreateImage(ctx context.Context, name string) (model.Image, error) {
	if name != "" {
		return d.findImage(ctx, name)
	}
	if d.cfg.DefaultImageName != "" {
		img, err := d.findImage(ctx, d.cfg.DefaultImageName)
		if err == nil {
			return img, nil
		}
		if model.ErrorCode(err) != model.ENOTFOUND {
			return img, err
		}
	}
	all, err := d.store.ListImages(ctx)
	if err != nil {
		return model.Image{}, err
	}
	imgs := defaultCandidates(api.CallerFrom(ctx), all)
	if len(imgs) == 1 {
		return imgs[0], nil
	}
	if len(imgs) == 0 {
		return model.Image{}, model.Errorf(model.ENOTFOUND, "no image to create a VM from; build one with `banger image build %s` or register one with `banger image register`", d.cfg.DefaultImageName)
	}
	return model.Image{}, model.Errorf(model.EINVALID, "no image %q (default_image_name) and %d images exist; choose one with --image (see `banger image ls`)", d.cfg.DefaultImageName, len(imgs))
}

// CreateVM implements api.Backend: validate, pick the image, allocate
// name, ID, guest IP and paths, store the row in state created, and start
// unless asked not to.
func (d *Daemon) CreateVM(ctx context.Context, req model.VMCreateRequest, progress api.ProgressFunc) (api.VMView, error) {
	if err := model.ValidateVMName(req.Name); err != nil {
		return api.VMView{}, err
	}
	if req.VCPUCount != 0 {
		if err := model.ValidateVCPUCount(req.VCPUCount); err != nil {
			return api.VMView{}, err
		}
	}
	if req.MemoryMiB != 0 {
		if err := model.ValidateMemoryMiB(req.MemoryMiB); err != nil {
			return api.VMView{}, err
		}
	}
	if req.SystemOverlaySizeByte < 0 || req.WorkDiskSizeBytes < 0 {
		return api.VMView{}, model.Errorf(model.EINVALID, "sizes must be positive")
	}
	for _, k := range req.SSHPublicKeys {
		if err := validateAuthorizedKey(k); err != nil {
			return api.VMView{}, err
		}
	}
	if req.Egress != nil {
		p, err := req.Egress.Normalize()
		if err != nil {
			return api.VMView{}, err
		}
		req.Egress = &p
	}
	if err := model.ValidateIdleAction("idle", req.IdleAction); err != nil {
		return api.VMView{}, err
	}
	spec := d.specFromRequest(req)
	if err := model.ValidateSpec(spec); err != nil {
		return api.VMView{}, err
	}
	img, err := d.resolveCreateImage(ctx, req.ImageName)
	if err != nil {
		return api.VMView{}, err
	}
	if err := d.checkImageUsable(img); err != nil {
		return api.VMView{}, err
	}

	vm, err := d.insertVM(ctx, req, spec, img)
	if err != nil {
		return api.VMView{}, err
	}
	d.logger.Info("vm created", "vm", vm.Name, "id", vm.ID, "image", img.Name, "owner", vm.OwnerUID, "ip", vm.Runtime.GuestIP)
	progress(api.Progress{Step: "created", Message: fmt.Sprintf("%s (%s, %s)", vm.Name, vm.Runtime.GuestIP, vm.Runtime.DNSName)})
	if len(req.SSHPublicKeys) > 0 {
		if err := d.saveUserKeys(vm, req.SSHPublicKeys); err != nil {
			d.deleteCreated(vm)
			return api.VMView{}, err
		}
	}
	if req.NoStart {
		v := d.view(vm)
		v.ImageName = img.Name
		return v, nil
	}
	v, err := d.StartVM(ctx, vm.ID, progress)
	if err != nil {
		// A create whose first boot fails leaves nothing behind: the
		// start already undid its steps; the row and dir go too.
		unlock := d.locks.lock(vm.ID)
		d.deleteCreated(vm)
		d.locks.forget(vm.ID)
		unlock()
		return api.VMView{}, fmt.Errorf("vm %s was not created: %w", vm.Name, err)
	}
	return v, nil
}

// insertVM allocates a guest IP and stores the new row. Allocation and
// insert are serialised so two creates never pick the same IP.
func (d *Daemon) insertVM(ctx context.Context, req model.VMCreateRequest, spec model.VMSpec, img model.Image) (model.VMRecord, error) {
	d.createMu.Lock()
	defer d.createMu.Unlock()
	add := usage{VMs: 1, DiskBytes: spec.SystemOverlaySizeByte + spec.WorkDiskSizeBytes}
	if req.NoStart {
		add.Unstarted = 1
	}
	if err := d.checkLimits(ctx, api.CallerFrom(ctx), add); err != nil {
		return model.VMRecord{}, err
	}
	if _, err := d.store.GetVM(ctx, req.Name); err == nil {
		return model.VMRecord{}, model.Errorf(model.ECONFLICT, "vm %q already exists; pick another name or remove it with `banger vm rm %s`", req.Name, req.Name)
	} else if model.ErrorCode(err) != model.ENOTFOUND {
		return model.VMRecord{}, err
	}
	used, err := d.store.GuestIPs(ctx)
	if err != nil {
		return model.VMRecord{}, err
	}
	ip, err := network.AllocateIP(d.cfg.BridgeIP, d.cfg.CIDR, used)
	if err != nil {
		return model.VMRecord{}, err
	}
	mac, err := network.MACForIP(ip)
	if err != nil {
		return model.VMRecord{}, err
	}
	id, err := model.NewID()
	if err != nil {
		return model.VMRecord{}, err
	}
	if _, err := os.Stat(d.layout.vmDir(id)); err == nil {
		return model.VMRecord{}, fmt.Errorf("vm dir for new id %s already exists", model.ShortID(id))
	}
	now := model.Now()
	vm := model.VMRecord{
		ID: id, Name: req.Name, ImageID: img.ID, State: model.VMStateCreated,
		CreatedAt: now, UpdatedAt: now, LastTouchedAt: now,
		Spec:     spec,
		OwnerUID: api.CallerFrom(ctx).UID,
		Runtime: model.VMRuntime{
			State:    model.VMStateCreated,
			GuestIP:  ip,
			GuestMAC: mac,
			DNSName:  model.DNSName(req.Name, d.cfg.DNSDomain),
			Cold:     req.Cold,
		},
	}
	vm.Runtime.OverlayStrategy = d.newVMStrategy()
	d.layout.vmPaths(id, &vm.Runtime)
	if err := d.store.CreateVM(ctx, vm); err != nil {
		return model.VMRecord{}, err
	}
	return vm, nil
}

// deleteCreated undoes a create that failed before start.
func (d *Daemon) deleteCreated(vm model.VMRecord) {
	ctx := context.Background()
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		d.logger.Warn("undo create: delete row", "vm", vm.Name, "err", err)
	}
	os.RemoveAll(vm.Runtime.VMDir)
	d.removePoolDisks(vm)
}

// SetVM implements api.Backend.
func (d *Daemon) SetVM(ctx context.Context, req model.VMSetRequest) (api.VMView, error) {
	vm, unlock, err := d.lockVM(ctx, req.IDOrName)
	if err != nil {
		return api.VMView{}, err
	}
	defer unlock()
	if req.VCPUCount == nil && req.MemoryMiB == nil && req.WorkDiskSizeBytes == nil && req.NATEnabled == nil && req.AutoStopAfterSeconds == nil && req.Egress == nil && req.IdleAction == nil {
		return api.VMView{}, model.Errorf(model.EINVALID, "nothing to change; pass --vcpus, --memory, --disk-size, --nat, --auto-stop, --idle or --egress")
	}
	running := vm.State == model.VMStateRunning
	next := vm.Spec
	if err := checkSetSuspended(vm, req); err != nil {
		return api.VMView{}, err
	}
	if req.IdleAction != nil {
		a := *req.IdleAction
		if a == model.IdleDefault {
			a = ""
		}
		if err := model.ValidateIdleAction("idle", a); err != nil {
			return api.VMView{}, err
		}
		next.IdleAction = a
	}
	if req.VCPUCount != nil {
		if err := model.ValidateVCPUCount(*req.VCPUCount); err != nil {
			return api.VMView{}, err
		}
		if running && *req.VCPUCount != vm.Spec.VCPUCount {
			return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is running; stop it to change vCPUs (`banger vm stop %s`)", vm.Name, vm.Name)
		}
		next.VCPUCount = *req.VCPUCount
	}
	if req.MemoryMiB != nil {
		if err := model.ValidateMemoryMiB(*req.MemoryMiB); err != nil {
			return api.VMView{}, err
		}
		if running && *req.MemoryMiB != vm.Spec.MemoryMiB {
			return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is running; stop it to change memory (`banger vm stop %s`)", vm.Name, vm.Name)
		}
		next.MemoryMiB = *req.MemoryMiB
	}
	if req.WorkDiskSizeBytes != nil {
		n := *req.WorkDiskSizeBytes
		if err := model.ValidateDiskSize("disk size", n); err != nil {
			return api.VMView{}, err
		}
		if n < vm.Spec.WorkDiskSizeBytes {
			return api.VMView{}, model.Errorf(model.EINVALID, "disk size %s: smaller than the current %s; the work disk can only grow", model.FormatSizeBytes(n), model.FormatSizeBytes(vm.Spec.WorkDiskSizeBytes))
		}
		if running && n != vm.Spec.WorkDiskSizeBytes {
			return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q is running; stop it to grow its disk (`banger vm stop %s`)", vm.Name, vm.Name)
		}
		if err := d.checkLimits(ctx, api.CallerFrom(ctx), usage{DiskBytes: n - vm.Spec.WorkDiskSizeBytes}); err != nil {
			return api.VMView{}, err
		}
		next.WorkDiskSizeBytes = n
	}
	if req.AutoStopAfterSeconds != nil {
		if *req.AutoStopAfterSeconds < 0 {
			next.AutoStopAfterSeconds = nil
		} else {
			v := *req.AutoStopAfterSeconds
			next.AutoStopAfterSeconds = &v
		}
	}
	if req.NATEnabled != nil {
		next.NATEnabled = *req.NATEnabled
	}
	if req.Egress != nil {
		p, err := req.Egress.Normalize()
		if err != nil {
			return api.VMView{}, err
		}
		next.Egress = p
	}
	if err := d.applySet(ctx, &vm, next); err != nil {
		return api.VMView{}, err
	}
	return d.GetVM(ctx, vm.ID)
}

// DeleteVM implements api.Backend.
func (d *Daemon) DeleteVM(ctx context.Context, ref string, opts api.VMDeleteOptions, progress api.ProgressFunc) error {
	vm, unlock, err := d.lockVMTouch(ctx, ref, false)
	if err != nil {
		return err
	}
	defer unlock()
	if err := d.deleteLocked(context.WithoutCancel(ctx), vm, opts, progress); err != nil {
		return err
	}
	d.locks.forget(vm.ID)
	return nil
}
