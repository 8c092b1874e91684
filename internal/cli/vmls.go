package cli

import (
	"time"

	"banger/internal/model"
)

// vmLsRow is what the `vm ls` table shows of a VM: the fields of
// api.VMView it reads, under their JSON names. Decoding only these keeps
// a list of 1,000 VMs quick to read; vmls_test.go checks the names
// against api.VMView.
type vmLsRow struct {
	Name      string        `json:"name"`
	State     model.VMState `json:"state"`
	ImageName string        `json:"image_name"`
	CreatedAt time.Time     `json:"created_at"`
	Spec      struct {
		VCPUCount         int   `json:"vcpu_count"`
		MemoryMiB         int   `json:"memory_mib"`
		WorkDiskSizeBytes int64 `json:"work_disk_size_bytes"`
		NATEnabled        bool  `json:"nat_enabled"`
	} `json:"spec"`
	Runtime struct {
		GuestIP     string    `json:"guest_ip"`
		SuspendedAt time.Time `json:"suspended_at"`
	} `json:"runtime"`
	AutoStopAt *time.Time `json:"auto_stop_at"`
}
