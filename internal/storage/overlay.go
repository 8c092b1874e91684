package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"banger/internal/model"
)

// OverlaySpec describes a VM's system overlay.
type OverlaySpec struct {
	// VMID names the dm device (DMName).
	VMID string
	// RootfsPath is the image's root filesystem, never written.
	RootfsPath string
	// OverlayPath is the VM's overlay file: a COW file for dm-snapshot,
	// a full ext4 image for reflink and copy.
	OverlayPath string
	// SizeBytes is the overlay's size. For reflink and copy the guest's
	// root filesystem is grown to it; for dm-snapshot it bounds the
	// changes the guest can make (the guest sees the rootfs's size).
	SizeBytes int64
	// Strategy is how the overlay is made; it must stay the same for the
	// life of the overlay file, since the formats differ.
	Strategy Strategy
}

func (s OverlaySpec) validate() error {
	switch {
	case s.RootfsPath == "" || s.OverlayPath == "":
		return model.Errorf(model.EINVALID, "overlay needs a rootfs path and an overlay path")
	case s.SizeBytes <= 0 || s.SizeBytes > model.MaxDiskBytes:
		return model.Errorf(model.EINVALID, "overlay size %d bytes is out of range: use 1 byte to %s", s.SizeBytes, model.FormatSizeBytes(model.MaxDiskBytes))
	case s.Strategy == StrategyDMSnapshot && s.VMID == "":
		return model.Errorf(model.EINVALID, "dm-snapshot overlay needs the VM's ID")
	}
	switch s.Strategy {
	case StrategyDMSnapshot, StrategyReflink, StrategyCopy, StrategyPool:
		return nil
	}
	_, err := ParseStrategy(string(s.Strategy))
	if err == nil {
		err = model.Errorf(model.EINVALID, "overlay strategy is not set")
	}
	return err
}

// Attached is what AttachOverlay set up for a running VM.
type Attached struct {
	// Device is what the VMM opens as the root drive: the dm device for
	// dm-snapshot, the overlay file itself otherwise.
	Device string `json:"device,omitempty"`
	// Loops are the loop devices under the dm device: the read-only
	// rootfs loop, then the COW loop.
	Loops []string `json:"loops,omitempty"`
	// DMName is the dm device's name, or empty.
	DMName string `json:"dm_name,omitempty"`
}

// CreateOverlay makes a new system overlay at spec.OverlayPath; an
// existing one is an ECONFLICT error. For dm-snapshot it is a sparse COW
// file with a zeroed header; for reflink and copy it is a clone or sparse
// copy of the rootfs whose filesystem is grown to spec.SizeBytes when
// that is larger. The file appears under its name only when complete.
func (m *Manager) CreateOverlay(ctx context.Context, spec OverlaySpec) error {
	return m.createOverlay(ctx, spec, false)
}

// ResetOverlay replaces a stopped VM's system overlay with a fresh one
// (`vm reset-system`); the work disk is not touched. The old overlay is
// replaced in one rename, so a crash leaves either the old or the new.
// An overlay still attached is an ECONFLICT error.
func (m *Manager) ResetOverlay(ctx context.Context, spec OverlaySpec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	if spec.Strategy == StrategyDMSnapshot {
		a, err := m.FindAttached(ctx, spec.VMID, spec.OverlayPath, spec.RootfsPath)
		if err != nil {
			return fmt.Errorf("reset overlay: %w", err)
		}
		if a.DMName != "" || len(a.Loops) > 0 {
			return model.Errorf(model.ECONFLICT, "overlay %s is still attached (%s); stop the VM first", spec.OverlayPath, describe(a))
		}
	}
	return m.createOverlay(ctx, spec, true)
}

func describe(a Attached) string {
	s := fmt.Sprintf("loops %v", a.Loops)
	if a.DMName != "" {
		s = "dm device " + a.DMName + ", " + s
	}
	return s
}

func (m *Manager) createOverlay(ctx context.Context, spec OverlaySpec, replace bool) error {
	if err := spec.validate(); err != nil {
		return err
	}
	fi, err := os.Stat(spec.RootfsPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return model.Errorf(model.ENOTFOUND, "create overlay: rootfs %s does not exist: %w", spec.RootfsPath, err)
		}
		return fmt.Errorf("create overlay: %w", err)
	}
	start := time.Now()
	cloned := false
	err = buildFile(spec.OverlayPath, replace, func(f *os.File, tmp string) error {
		if spec.Strategy == StrategyDMSnapshot {
			// A fresh COW must start with a zero header, or
			// dm-snapshot brings back old exceptions; a new sparse
			// file reads as zeros.
			if err := f.Truncate(0); err != nil {
				return err
			}
			return f.Truncate(cowSize(spec.SizeBytes, fi.Size()))
		}
		var err error
		if cloned, err = m.fillFrom(ctx, f, spec.RootfsPath, spec.Strategy == StrategyReflink || spec.Strategy == StrategyPool); err != nil {
			return err
		}
		if spec.SizeBytes > fi.Size() {
			return m.growImageFS(ctx, tmp, spec.SizeBytes)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create overlay %s: %w", spec.OverlayPath, err)
	}
	m.logger.Info("overlay created", "vm", spec.VMID, "path", spec.OverlayPath, "strategy", spec.Strategy, "cloned", cloned, "took", time.Since(start))
	return nil
}

// cowSize returns the size of a dm-snapshot COW file: the requested size,
// but at least enough for the guest to rewrite the whole origin (one
// 4 KiB metadata chunk per 256 data chunks, a header, and margin), so a
// busy guest never invalidates its snapshot by filling the COW.
func cowSize(requested, origin int64) int64 {
	need := origin + origin/128 + 1<<20
	size := max(requested, need)
	return (size + 4095) &^ 4095
}

// AttachOverlay makes the overlay usable as the VM's root drive. For
// dm-snapshot it attaches the rootfs read-only and the COW file on loop
// devices and creates the snapshot device DMName(spec.VMID); on failure
// everything it attached is detached again. For reflink and copy nothing
// is attached: the device is the overlay file.
func (m *Manager) AttachOverlay(ctx context.Context, spec OverlaySpec) (Attached, error) {
	if err := spec.validate(); err != nil {
		return Attached{}, err
	}
	if _, err := os.Stat(spec.OverlayPath); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Attached{}, model.Errorf(model.ENOTFOUND, "attach overlay: %s does not exist: %w", spec.OverlayPath, err)
		}
		return Attached{}, fmt.Errorf("attach overlay: %w", err)
	}
	if spec.Strategy != StrategyDMSnapshot {
		return Attached{Device: spec.OverlayPath}, nil
	}
	a, err := m.attachSnapshot(ctx, spec)
	if err != nil {
		return Attached{}, fmt.Errorf("attach overlay %s: %w", spec.OverlayPath, err)
	}
	m.logger.Info("overlay attached", "vm", spec.VMID, "device", a.Device, "loops", a.Loops)
	return a, nil
}

func (m *Manager) attachSnapshot(ctx context.Context, spec OverlaySpec) (a Attached, err error) {
	if !m.dmAvailable() {
		return a, model.Errorf(model.EUNAVAILABLE, "device-mapper is not available on this host (%s missing); use the reflink or copy overlay strategy", m.dmControl)
	}
	name := DMName(spec.VMID)
	names, err := m.dmNames(ctx)
	if err != nil {
		return a, err
	}
	if slices.Contains(names, name) {
		return a, model.Errorf(model.ECONFLICT, "dm device %s already exists: the overlay is still attached; stop the VM (or restart bangerd to reconcile) first", name)
	}
	defer func() {
		if err != nil {
			if derr := m.DetachOverlay(context.WithoutCancel(ctx), a); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo attach: %w", derr))
			}
		}
	}()
	base, err := m.attachLoop(ctx, spec.RootfsPath, true)
	if err != nil {
		return a, err
	}
	a.Loops = append(a.Loops, base)
	sectors, err := m.sectors(ctx, base)
	if err != nil {
		return a, err
	}
	cow, err := m.attachLoop(ctx, spec.OverlayPath, false)
	if err != nil {
		return a, err
	}
	a.Loops = append(a.Loops, cow)
	// Set before create: a create interrupted half-way may leave the
	// device, and removing a missing device is not an error.
	a.DMName = name
	if _, err := m.run.Run(ctx, "dmsetup", dmCreateArgs(name, snapshotTable(sectors, base, cow))...); err != nil {
		return a, fmt.Errorf("create dm device %s: %w", name, err)
	}
	if a.Device, err = m.dmNode(ctx, name); err != nil {
		return a, err
	}
	return a, nil
}

// DetachOverlay undoes AttachOverlay: it removes the dm device (retrying
// while busy), then detaches the loops, COW first. What is already gone
// is skipped, so it can be repeated. An Attached without a dm device or
// loops (reflink, copy) needs nothing.
func (m *Manager) DetachOverlay(ctx context.Context, a Attached) error {
	if a.DMName != "" {
		if err := m.RemoveDM(ctx, a.DMName); err != nil {
			return fmt.Errorf("detach overlay: %w", err)
		}
	}
	var errs []error
	for i := len(a.Loops) - 1; i >= 0; i-- {
		if err := m.DetachLoop(ctx, a.Loops[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach overlay: %w", err)
	}
	return nil
}

// DetachVM finds what is attached for a VM's overlay (FindAttached) and
// detaches it; for use when the handles were lost.
func (m *Manager) DetachVM(ctx context.Context, vmID, overlayPath, rootfsPath string) error {
	a, err := m.FindAttached(ctx, vmID, overlayPath, rootfsPath)
	if err != nil {
		return err
	}
	return m.DetachOverlay(ctx, a)
}

// FindAttached rediscovers from the OS what is attached for a VM's
// overlay, for a daemon that restarted: the dm device DMName(vmID), the
// loops its table names (by major:minor), and any loop backed by the
// overlay file. Without a dm device, a rootfs loop cannot be told apart
// from other VMs' (several VMs share an image) and is left out; see
// UnreferencedLoops. Nothing attached gives an empty Attached.
func (m *Manager) FindAttached(ctx context.Context, vmID, overlayPath, rootfsPath string) (Attached, error) {
	var a Attached
	loops, err := m.ListLoops(ctx)
	if err != nil {
		return a, fmt.Errorf("find attached overlay: %w", err)
	}
	name := DMName(vmID)
	names, err := m.dmNames(ctx)
	if err != nil {
		return a, fmt.Errorf("find attached overlay: %w", err)
	}
	if slices.Contains(names, name) {
		out, err := m.run.Run(ctx, "dmsetup", dmTableArgs(name)...)
		if err != nil {
			return a, fmt.Errorf("find attached overlay: read table of %s: %w", name, err)
		}
		a.DMName = name
		for i, dep := range parseTableDeps(string(out)) {
			for _, l := range loops {
				if l.MajMin != dep {
					continue
				}
				a.Loops = append(a.Loops, l.Dev)
				want := rootfsPath
				if i == 1 {
					want = overlayPath
				}
				if canonical(l.BackFile) != canonical(want) {
					m.logger.Warn("dm device uses an unexpected file", "dm", name, "loop", l.Dev, "file", l.BackFile, "want", want)
				}
			}
		}
		if dev, err := m.dmNode(ctx, name); err == nil {
			a.Device = dev
		} else {
			m.logger.Warn("no device node for attached overlay", "dm", name, "err", err)
		}
	}
	over := canonical(overlayPath)
	for _, l := range loops {
		if canonical(l.BackFile) == over && !slices.Contains(a.Loops, l.Dev) {
			a.Loops = append(a.Loops, l.Dev)
		}
	}
	return a, nil
}

// UnreferencedLoops returns the loops that no dm device in dms uses. A
// rootfs loop left by an attach interrupted before its dm device was
// made is one of them; the caller decides, by backing file and with no
// attach in flight, which of them are banger's orphans.
func UnreferencedLoops(loops []LoopDevice, dms []DMDevice) []LoopDevice {
	used := map[string]bool{}
	for _, d := range dms {
		for _, dep := range d.Deps {
			used[dep] = true
		}
	}
	var out []LoopDevice
	for _, l := range loops {
		if !used[l.MajMin] {
			out = append(out, l)
		}
	}
	return out
}
