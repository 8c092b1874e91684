// Package api is the contract between bangerd and its clients: routes,
// request and response bodies, the error mapping, the server that serves a
// Backend on a unix socket, and the Go client the CLI uses.
package api

import (
	"time"

	"banger/internal/model"
)

// Prefix is the versioned route prefix.
const Prefix = "/v1"

// VersionInfo describes a build of banger.
type VersionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"go_version"`
}

// ImageRegisterRequest registers existing artifacts as an image.
type ImageRegisterRequest struct {
	Name       string `json:"name"`
	KernelPath string `json:"kernel_path"`
	RootfsPath string `json:"rootfs_path"`
	InitrdPath string `json:"initrd_path,omitempty"`
	ModulesDir string `json:"modules_dir,omitempty"`
	WorkSeed   string `json:"work_seed_path,omitempty"`
	Docker     bool   `json:"docker,omitempty"`
}

// ImageRegisterResponse is the registered image plus what the daemon
// noticed about it.
type ImageRegisterResponse struct {
	Image    model.Image `json:"image"`
	Warnings []string    `json:"warnings,omitempty"`
}

// ImageBuildRequest builds a Debian image.
type ImageBuildRequest struct {
	Name     string   `json:"name"`
	Release  string   `json:"release,omitempty"`
	Mirror   string   `json:"mirror,omitempty"`
	Packages []string `json:"packages,omitempty"`
	Docker   bool     `json:"docker,omitempty"`
	// KernelPath is a vmlinux to use instead of building one.
	KernelPath string `json:"kernel_path,omitempty"`
	// Size is the root filesystem size; empty means fit the contents.
	SizeBytes int64 `json:"size_bytes,omitempty"`
}

// ImageDetail is an image with facts computed at read time.
type ImageDetail struct {
	model.Image
	// KernelFormat is "elf", "bzimage" or "unknown".
	KernelFormat string `json:"kernel_format"`
	// Artifacts are the files and their sizes on disk.
	Artifacts []Artifact `json:"artifacts"`
	// SSHKeyMatches says whether the daemon's configured key is the one
	// seeded into the image ("" when the image was not seeded).
	SSHKeyMatches *bool `json:"ssh_key_matches,omitempty"`
	// UsedBy names the VMs built on this image.
	UsedBy []string `json:"used_by"`
	// Note says why the image cannot be used, when it cannot.
	Note string `json:"note,omitempty"`
	// Warm is the image's warm state (`banger image warm`), nil when
	// it has none.
	Warm *WarmState `json:"warm,omitempty"`
}

// ImageWarmRequest asks for an image's warm state: booted once with
// these vCPUs and memory (0: the daemon's VM defaults).
type ImageWarmRequest struct {
	VCPUCount int `json:"vcpu_count,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`
}

// WarmState is an image's warm state: a snapshot of it booted, from
// which `vm create` restores VMs of the same vCPUs, memory and disk
// sizes instead of booting them.
type WarmState struct {
	VCPUCount             int       `json:"vcpu_count"`
	MemoryMiB             int       `json:"memory_mib"`
	SystemOverlaySizeByte int64     `json:"system_overlay_size_bytes"`
	WorkDiskSizeBytes     int64     `json:"work_disk_size_bytes"`
	SizeBytes             int64     `json:"size_bytes"`
	MadeAt                time.Time `json:"made_at"`
	Valid                 bool      `json:"valid"`
	// Invalid says why it is never used, when it is not valid.
	Invalid string `json:"invalid,omitempty"`
}

// Artifact is one file of an image.
type Artifact struct {
	Role           string `json:"role"`
	Path           string `json:"path"`
	SizeBytes      int64  `json:"size_bytes"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	Missing        bool   `json:"missing,omitempty"`
}

// Kernel is a kernel banger built.
type Kernel struct {
	Name          string    `json:"name"`
	Path          string    `json:"path"`
	SourceVersion string    `json:"source_version"`
	ConfigHash    string    `json:"config_hash"`
	SizeBytes     int64     `json:"size_bytes"`
	BuiltAt       time.Time `json:"built_at"`
	LogPath       string    `json:"log_path,omitempty"`
}

// KernelBuildRequest builds a kernel.
type KernelBuildRequest struct {
	// Version selects the linux-source package version ("6.1"); empty
	// means the newest installed.
	Version string `json:"version,omitempty"`
	// Force rebuilds even when a matching kernel exists.
	Force bool `json:"force,omitempty"`
}

// VMDeleteOptions qualify a delete.
type VMDeleteOptions struct {
	Force bool
}

// VMView is a VM as the API shows it: the record plus derived facts.
type VMView struct {
	model.VMRecord
	ImageName string `json:"image_name"`
	// AutoStopAt is when the idle auto-stop will stop the VM if nothing
	// happens; nil when it will not.
	AutoStopAt *time.Time `json:"auto_stop_at,omitempty"`
	// PID is the VMM's process ID, when running.
	PID int `json:"pid,omitempty"`
	// ImageConfig is the session config of the VM's image (built from a
	// container image): banger ssh and exec run as its user, in its
	// working directory, with its environment.
	ImageConfig *model.ImageConfig `json:"image_config,omitempty"`
	// IdleAction is what the idle policy will do to the VM: "suspend"
	// or "stop" (its own setting, else the daemon's).
	IdleAction string `json:"idle_action,omitempty"`
	// DiskPool describes the storage pool's space for a VM whose disks
	// are in it.
	DiskPool string `json:"disk_pool,omitempty"`
}

// VMRow is the brief view of a VM that `GET /v1/vms?view=brief` lists:
// the fields a table of VMs shows, under the same JSON names as VMView's,
// so a full VMView decodes into a VMRow too. A list of 1,000 VMs is a
// tenth of the full views' size to encode, send and decode.
type VMRow struct {
	Name      string        `json:"name"`
	State     model.VMState `json:"state"`
	ImageName string        `json:"image_name"`
	CreatedAt time.Time     `json:"created_at"`
	Spec      VMRowSpec     `json:"spec"`
	Runtime   VMRowRuntime  `json:"runtime"`
	// AutoStopAt is as in VMView.
	AutoStopAt *time.Time `json:"auto_stop_at,omitempty"`
}

// VMRowSpec is the part of a VM's spec a VMRow carries.
type VMRowSpec struct {
	VCPUCount         int   `json:"vcpu_count"`
	MemoryMiB         int   `json:"memory_mib"`
	WorkDiskSizeBytes int64 `json:"work_disk_size_bytes"`
	NATEnabled        bool  `json:"nat_enabled"`
}

// VMRowRuntime is the part of a VM's runtime a VMRow carries.
type VMRowRuntime struct {
	GuestIP     string    `json:"guest_ip"`
	SuspendedAt time.Time `json:"suspended_at"`
}

// Row returns v's brief view.
func (v VMView) Row() VMRow {
	return VMRow{
		Name: v.Name, State: v.State, ImageName: v.ImageName, CreatedAt: v.CreatedAt,
		Spec: VMRowSpec{
			VCPUCount: v.Spec.VCPUCount, MemoryMiB: v.Spec.MemoryMiB,
			WorkDiskSizeBytes: v.Spec.WorkDiskSizeBytes, NATEnabled: v.Spec.NATEnabled,
		},
		Runtime:    VMRowRuntime{GuestIP: v.Runtime.GuestIP, SuspendedAt: v.Runtime.SuspendedAt},
		AutoStopAt: v.AutoStopAt,
	}
}

// DoctorCheck is one named host check.
type DoctorCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // PASS, WARN or FAIL
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Doctor statuses.
const (
	StatusPass = "PASS"
	StatusWarn = "WARN"
	StatusFail = "FAIL"
)

// LogsOptions select console output.
type LogsOptions struct {
	Follow bool
	// Tail is how many trailing lines to show first; 0 means all.
	Tail int
}
