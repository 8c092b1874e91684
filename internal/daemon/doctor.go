package daemon

import (
	"context"
	"os"
	"path/filepath"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/hostexec"
)

// vmmBinary resolves the VMM to launch: firecracker_bin when configured,
// else firecracker on PATH, else banger-vmm-qemu next to bangerd or on
// PATH. It returns "" when there is none.
func (d *Daemon) vmmBinary() string {
	if d.cfg.FirecrackerBin != "" {
		if p, err := hostexec.LookPath(d.cfg.FirecrackerBin); err == nil {
			return p
		}
		return ""
	}
	if p, err := hostexec.LookPath("firecracker"); err == nil {
		return p
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "banger-vmm-qemu")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := hostexec.LookPath("banger-vmm-qemu"); err == nil {
		return p
	}
	return ""
}

// Doctor implements api.Backend.
func (d *Daemon) Doctor(ctx context.Context) []api.DoctorCheck {
	in := doctor.Input{Config: d.cfg, VMMPath: d.vmmBinary()}
	in.OverlayStrategy, in.OverlayReason = d.overlayStrategy(ctx)
	in.StoragePool, in.StoragePoolLow, in.StoragePoolErr = d.poolStatus(ctx)
	in.VMs = -1
	if n, err := d.store.CountVMs(ctx); err == nil {
		in.VMs = n
	}
	return append(doctor.Host(ctx, in, d.runner), d.hostDNSCheck(ctx))
}

// overlayStrategy says how system overlays are made here (detected at
// Start).
func (d *Daemon) overlayStrategy(ctx context.Context) (string, string) {
	return string(d.strategy), d.strategyReason
}
