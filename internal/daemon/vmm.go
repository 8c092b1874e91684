package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/network"

	"golang.org/x/crypto/ssh"
)

// booter launches and boots a VM whose disks, tap and capabilities are
// ready, and waits until the guest answers SSH. It records the VMM's PID
// in h (through setVMHandles) as soon as it has one. On failure it has
// already killed the VMM it started. Tests replace it; the daemon uses
// vmmBooter.
type booter interface {
	// check says why VMs cannot boot here, before anything is touched.
	check() error
	// boot returns the guest's SSH host key.
	boot(ctx context.Context, vm model.VMRecord, img model.Image, h *vmHandles, received time.Time, progress api.ProgressFunc) (string, error)
}

// vmmBooter boots through the Firecracker API: firecracker itself, or
// banger-vmm-qemu, which speaks the same API.
type vmmBooter struct {
	d *Daemon
}

func (b vmmBooter) check() error {
	if b.d.vmmBinary() == "" {
		return model.Errorf(model.EUNAVAILABLE, "no VMM: install firecracker or banger-vmm-qemu, or set firecracker_bin (see `banger doctor`)")
	}
	if _, err := os.Stat(b.d.cfg.SSHKeyPath); err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key %s: %v", b.d.cfg.SSHKeyPath, err)
	}
	return nil
}

func (b vmmBooter) boot(ctx context.Context, vm model.VMRecord, img model.Image, h *vmHandles, received time.Time, progress api.ProgressFunc) (hostKey string, err error) {
	d := b.d
	log := d.logger.With("vm", vm.Name, "id", model.ShortID(vm.ID))
	signer, err := guest.LoadSigner(d.cfg.SSHKeyPath)
	if err != nil {
		return "", model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	bin := d.vmmBinary()
	progress(api.Progress{Step: "vmm", Message: "launching " + bin})
	os.Remove(vm.Runtime.MetricsPath)
	proc, err := firecracker.Launch(firecracker.LaunchConfig{
		Bin: bin, APISock: vm.Runtime.APISockPath, ID: model.ShortID(vm.ID),
		ExtraArgs: d.cfg.VMMArgs, LogPath: vm.Runtime.LogPath,
	})
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			if _, kerr := firecracker.Stop(context.Background(), nil, proc.PID, 0); kerr != nil {
				log.Warn("undo: kill vmm", "pid", proc.PID, "err", kerr)
			}
			os.Remove(vm.Runtime.APISockPath)
		}
	}()
	h.PID = proc.PID
	if err := d.setVMHandles(vm.ID, vm.Runtime.VMDir, *h); err != nil {
		return "", err
	}
	d.crashPoint("start:vmm-launched")
	apiCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = proc.WaitAPI(apiCtx, vm.Runtime.APISockPath)
	cancel()
	if err != nil {
		return "", fmt.Errorf("vmm api: %w; see %s", err, vm.Runtime.LogPath)
	}
	client := firecracker.NewClient(vm.Runtime.APISockPath)
	if err := d.configureVMM(ctx, client, vm, img, *h); err != nil {
		return "", err
	}
	d.crashPoint("start:configured")
	if err := client.InstanceStart(ctx); err != nil {
		return "", err
	}
	hostSide := time.Since(received)
	log.Info("instance started", "host_side_ms", hostSide.Milliseconds())
	progress(api.Progress{Step: "boot", Message: fmt.Sprintf("InstanceStart sent %dms after the request; waiting for SSH", hostSide.Milliseconds())})
	d.crashPoint("start:instance-started")

	conn, err := d.waitSSH(ctx, vm, proc, signer)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := d.firstBoot(ctx, conn, vm); err != nil {
		return "", err
	}
	return guest.AuthorizedKey(conn.HostKey), nil
}

// configureVMM sends the machine's configuration over the Firecracker API.
func (d *Daemon) configureVMM(ctx context.Context, c *firecracker.Client, vm model.VMRecord, img model.Image, h vmHandles) error {
	logger, err := firecracker.NewLogger(vmmLogPath(vm.Runtime.VMDir), "Info")
	if err != nil {
		return err
	}
	if err := c.PutLogger(ctx, logger); err != nil {
		return err
	}
	metrics, err := firecracker.NewMetrics(vm.Runtime.MetricsPath)
	if err != nil {
		return err
	}
	if err := c.PutMetrics(ctx, metrics); err != nil {
		return err
	}
	mc, err := firecracker.NewMachineConfig(vm.Spec.VCPUCount, vm.Spec.MemoryMiB)
	if err != nil {
		return err
	}
	if err := c.PutMachineConfig(ctx, mc); err != nil {
		return err
	}
	ipArg, err := network.KernelIPArg(vm.Runtime.GuestIP, d.cfg.BridgeIP, d.cfg.CIDR, vm.Name, d.guestNameserver())
	if err != nil {
		return err
	}
	args, err := firecracker.BootArgs(firecracker.BootArgsConfig{IP: ipArg, Hostname: vm.Name})
	if err != nil {
		return err
	}
	bs, err := firecracker.NewBootSource(img.KernelPath, img.InitrdPath, args)
	if err != nil {
		return err
	}
	if err := c.PutBootSource(ctx, bs); err != nil {
		return err
	}
	root, err := firecracker.NewDrive("rootfs", h.Overlay.Device, true, false)
	if err != nil {
		return err
	}
	if err := c.PutDrive(ctx, root); err != nil {
		return err
	}
	work, err := firecracker.NewDrive("work", vm.Runtime.WorkDiskPath, false, false)
	if err != nil {
		return err
	}
	if err := c.PutDrive(ctx, work); err != nil {
		return err
	}
	nic, err := firecracker.NewNetworkInterface("eth0", h.Tap, vm.Runtime.GuestMAC)
	if err != nil {
		return err
	}
	return c.PutNetworkInterface(ctx, nic)
}

// waitSSH waits until the guest answers SSH, the VMM dies, or the boot
// timeout passes; a timeout reports the last console lines.
func (d *Daemon) waitSSH(ctx context.Context, vm model.VMRecord, proc *firecracker.Process, signer ssh.Signer) (*guest.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-proc.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	addr := net.JoinHostPort(vm.Runtime.GuestIP, "22")
	conn, err := guest.WaitReady(ctx, addr, signer, 250*time.Millisecond)
	if err == nil {
		return conn, nil
	}
	tail := lastLines(vm.Runtime.LogPath, 15)
	select {
	case <-proc.Done():
		return nil, fmt.Errorf("the VMM exited during boot; last console lines:\n%s\n(full log: %s)", tail, vm.Runtime.LogPath)
	default:
	}
	return nil, fmt.Errorf("no SSH answer from %s within %s: %v; last console lines:\n%s\n(full log: %s)", addr, d.cfg.BootTimeout, err, tail, vm.Runtime.LogPath)
}

// firstBoot does the per-start guest setup over the daemon's SSH
// connection: a pending file sync tar is extracted into /root, then the
// user's keys go into /root/.ssh/authorized_keys (after file sync, so a
// synced file cannot drop them).
func (d *Daemon) firstBoot(ctx context.Context, conn *guest.Conn, vm model.VMRecord) error {
	if err := d.applyFileSync(ctx, conn, vm); err != nil {
		return err
	}
	keysFile := userKeysPath(vm.Runtime.VMDir)
	if keys, err := os.ReadFile(keysFile); err == nil {
		script := `umask 077; mkdir -p /root/.ssh; touch /root/.ssh/authorized_keys; while IFS= read -r k; do [ -n "$k" ] || continue; grep -qxF "$k" /root/.ssh/authorized_keys || printf '%s\n' "$k" >> /root/.ssh/authorized_keys; done`
		if err := conn.Run(ctx, "sh -c "+guest.Quote(script), strings.NewReader(string(keys)), nil, nil); err != nil {
			return fmt.Errorf("authorize user keys: %w", err)
		}
		os.Remove(keysFile)
	}
	return nil
}
