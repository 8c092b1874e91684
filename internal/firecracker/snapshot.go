package firecracker

import (
	"context"
	"net/http"
	"sort"

	"banger/internal/model"
)

// Snapshot types of PUT /snapshot/create.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// Memory backend types of PUT /snapshot/load.
const (
	MemBackendFile = "File"
	MemBackendUffd = "Uffd"
)

// SnapshotCreate is the body of PUT /snapshot/create. The VM must be
// paused. SnapshotPath receives the VM and device state, MemFilePath the
// guest memory; both are replaced when they exist.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemoryBackend says where a snapshot's memory comes from at load.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride gives a restored network interface another tap.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoad is the body of PUT /snapshot/load, accepted only by a
// fresh VMM (nothing configured but the logger and metrics). The
// deprecated mem_file_path and enable_diff_snapshots are never sent.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       MemoryBackend     `json:"mem_backend"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
}

// VMConfig is the reply of GET /vm/config (FullVmConfiguration), with the
// parts banger uses. A VM restored from a snapshot reports no boot
// source.
type VMConfig struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	Drives            []Drive            `json:"drives"`
	MachineConfig     *MachineConfig     `json:"machine-config,omitempty"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
}

// NewSnapshotCreate returns a full snapshot of the VM state to
// snapshotPath and its memory to memPath.
func NewSnapshotCreate(snapshotPath, memPath string) (SnapshotCreate, error) {
	if snapshotPath == "" || memPath == "" {
		return SnapshotCreate{}, model.Errorf(model.EINVALID, "snapshot: state and memory paths are required")
	}
	if snapshotPath == memPath {
		return SnapshotCreate{}, model.Errorf(model.EINVALID, "snapshot: state and memory must go to different files, both are %s", memPath)
	}
	return SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: snapshotPath, MemFilePath: memPath}, nil
}

// NewSnapshotLoad returns a load of the snapshot at snapshotPath with its
// memory file memPath, resumed at once when resume is set, its network
// interfaces moved to the taps in overrides (interface id → tap name).
func NewSnapshotLoad(snapshotPath, memPath string, resume bool, overrides map[string]string) (SnapshotLoad, error) {
	if snapshotPath == "" || memPath == "" {
		return SnapshotLoad{}, model.Errorf(model.EINVALID, "snapshot load: state and memory paths are required")
	}
	l := SnapshotLoad{
		SnapshotPath: snapshotPath, ResumeVM: resume,
		MemBackend: MemoryBackend{BackendType: MemBackendFile, BackendPath: memPath},
	}
	ids := make([]string, 0, len(overrides))
	for id := range overrides {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := checkResourceID("network interface", id); err != nil {
			return SnapshotLoad{}, err
		}
		if err := CheckTapName(overrides[id]); err != nil {
			return SnapshotLoad{}, model.Errorf(model.EINVALID, "snapshot load: override of %s: %v", id, err)
		}
		l.NetworkOverrides = append(l.NetworkOverrides, NetworkOverride{IfaceID: id, HostDevName: overrides[id]})
	}
	return l, nil
}

// CreateSnapshot writes a snapshot of the paused VM.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", s, nil)
}

// LoadSnapshot loads a snapshot into a fresh VMM; the VM is then paused,
// or running when s.ResumeVM.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", s, nil)
}

// VMConfig returns the VM's full configuration (GET /vm/config).
func (c *Client) VMConfig(ctx context.Context) (VMConfig, error) {
	var v VMConfig
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &v)
	return v, err
}
