// Package doctor checks a host for what banger needs and says how to fix
// what is missing. The daemon runs the checks on its own host and
// network namespace; the CLI adds its own (daemon reachable, ssh client)
// and runs the host checks itself when the daemon is down.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"

	"golang.org/x/sys/unix"
)

// Input is what the checks need to know about the daemon's setup.
type Input struct {
	Config model.DaemonConfig
	// VMMPath is the resolved VMM binary ("" when none was found).
	VMMPath string
	// OverlayStrategy and OverlayReason describe how VM system disks are
	// made on this host (from storage.DetectStrategy).
	OverlayStrategy string
	OverlayReason   string
	// StoragePool describes the storage pool (its file, mount, space,
	// and whether new VMs use it) or why there is none; StoragePoolLow
	// says its space is nearly gone; StoragePoolErr says it could not be
	// read.
	StoragePool    string
	StoragePoolLow bool
	StoragePoolErr error
	// VMs is how many VMs exist (each holds a guest address), or -1
	// when unknown; the subnet is Config's bridge_ip and cidr.
	VMs int
	// Paths of host files, for tests; zero values mean the real ones.
	Root string
}

// Host runs every host check.
func Host(ctx context.Context, in Input, runner hostexec.Runner) []api.DoctorCheck {
	c := &checker{in: in, runner: runner}
	return []api.DoctorCheck{
		c.kvm(),
		c.vmm(ctx),
		c.firecracker(),
		c.qemu(),
		c.deviceMapper(ctx),
		c.overlay(),
		c.storagePool(),
		c.addresses(),
		c.loop(),
		c.tun(),
		c.iptables(ctx),
		c.nft(ctx),
		c.ipForward(),
		c.disk(),
		c.sshKey(),
		c.kernelBuild(),
		c.imageBuild(),
	}
}

type checker struct {
	in     Input
	runner hostexec.Runner
}

func (c *checker) path(p string) string { return filepath.Join(c.in.Root, p) }

func pass(name, detail string) api.DoctorCheck {
	return api.DoctorCheck{Name: name, Status: api.StatusPass, Detail: detail}
}
func warn(name, detail, fix string) api.DoctorCheck {
	return api.DoctorCheck{Name: name, Status: api.StatusWarn, Detail: detail, Fix: fix}
}
func fail(name, detail, fix string) api.DoctorCheck {
	return api.DoctorCheck{Name: name, Status: api.StatusFail, Detail: detail, Fix: fix}
}

func (c *checker) usesQEMU() bool {
	return strings.Contains(filepath.Base(c.in.VMMPath), "banger-vmm-qemu")
}

func (c *checker) kvm() api.DoctorCheck {
	const name = "kvm"
	f, err := os.OpenFile(c.path("/dev/kvm"), os.O_RDWR, 0)
	if err != nil {
		if c.usesQEMU() {
			return warn(name, fmt.Sprintf("/dev/kvm not usable (%v); banger-vmm-qemu runs guests in software emulation, slowly", unwrap(err)), "enable virtualization in firmware and load kvm_intel or kvm_amd")
		}
		return fail(name, fmt.Sprintf("/dev/kvm not usable: %v", unwrap(err)), "enable virtualization in firmware, load kvm_intel or kvm_amd, and give root access to /dev/kvm")
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), 0xAE00) // KVM_GET_API_VERSION
	if err != nil || v != 12 {
		return fail(name, fmt.Sprintf("/dev/kvm answers KVM_GET_API_VERSION with %d (%v), want 12", v, err), "use a host with a standard KVM")
	}
	if _, err := os.Stat(c.path("/sys/module/kvm_pvm")); err == nil {
		return warn(name, "/dev/kvm is PVM (kvm_pvm loaded): ordinary guest kernels do not boot with it; banger-vmm-qemu falls back to software emulation", "run on a host with hardware KVM for Firecracker speed")
	}
	return pass(name, "/dev/kvm usable (API version 12)")
}

func (c *checker) vmm(ctx context.Context) api.DoctorCheck {
	const name = "vmm"
	if c.in.VMMPath == "" {
		return fail(name, "no VMM found: neither firecracker nor banger-vmm-qemu is on PATH", "install Firecracker, or install banger-vmm-qemu next to bangerd and set firecracker_bin in /etc/banger/bangerd.toml")
	}
	out, err := c.runner.Run(ctx, c.in.VMMPath, "--version")
	if err != nil {
		return fail(name, fmt.Sprintf("%s --version failed: %v", c.in.VMMPath, err), "reinstall the VMM binary")
	}
	return pass(name, fmt.Sprintf("%s (%s)", c.in.VMMPath, firstLine(string(out))))
}

func (c *checker) firecracker() api.DoctorCheck {
	const name = "firecracker"
	if p, err := hostexec.LookPath("firecracker"); err == nil {
		return pass(name, p)
	}
	if c.usesQEMU() {
		return warn(name, "Firecracker is not installed; VMs run under banger-vmm-qemu (QEMU speaking Firecracker's API)", "install the firecracker binary from its releases and set firecracker_bin = \"firecracker\" for real microVMs")
	}
	return fail(name, "Firecracker is not installed", "install the firecracker binary, or use banger-vmm-qemu (firecracker_bin in /etc/banger/bangerd.toml)")
}

func (c *checker) qemu() api.DoctorCheck {
	const name = "qemu"
	p, err := hostexec.LookPath("qemu-system-x86_64")
	if err == nil {
		return pass(name, p)
	}
	if c.usesQEMU() {
		return fail(name, "qemu-system-x86_64 not found; banger-vmm-qemu needs it", "apt-get install qemu-system-x86")
	}
	return pass(name, "not needed (the VMM is Firecracker)")
}

func (c *checker) deviceMapper(ctx context.Context) api.DoctorCheck {
	const name = "device-mapper"
	misc, _ := os.ReadFile(c.path("/proc/misc"))
	if !strings.Contains(string(misc), "device-mapper") {
		return warn(name, "the kernel has no device-mapper: system disks are reflink clones or sparse copies instead of dm-snapshots", "load dm_mod and dm_snapshot (modprobe dm_snapshot) for instant copy-on-write system disks")
	}
	out, err := c.runner.Run(ctx, "dmsetup", "targets")
	if err != nil {
		return warn(name, "dmsetup targets failed: "+firstLine(err.Error()), "apt-get install dmsetup")
	}
	if !strings.Contains(string(out), "snapshot") {
		return warn(name, "device-mapper has no snapshot target", "modprobe dm_snapshot")
	}
	return pass(name, "dm-snapshot available")
}

func (c *checker) overlay() api.DoctorCheck {
	const name = "overlay"
	switch c.in.OverlayStrategy {
	case "":
		return warn(name, "overlay strategy unknown (daemon not consulted)", "run `banger doctor` with bangerd running")
	case "dm-snapshot":
		return pass(name, "dm-snapshot: "+c.in.OverlayReason)
	case "reflink":
		return pass(name, "reflink clones: "+c.in.OverlayReason)
	case "pool":
		return pass(name, "pool: "+c.in.OverlayReason)
	default:
		return warn(name, c.in.OverlayStrategy+": "+c.in.OverlayReason, "put state_dir on XFS or btrfs (reflink), or enable device-mapper, for instant system disks")
	}
}

func (c *checker) storagePool() api.DoctorCheck {
	const name = "storage-pool"
	switch {
	case c.in.StoragePoolErr != nil:
		return fail(name, fmt.Sprintf("storage pool: %v", c.in.StoragePoolErr), "check the pool's mount (findmnt) and restart bangerd")
	case c.in.StoragePool == "":
		return warn(name, "storage pool unknown (daemon not consulted)", "run `banger doctor` with bangerd running")
	case c.in.StoragePoolLow:
		return fail(name, c.in.StoragePool, "free space on the filesystem holding the pool file, or remove VMs: VM disks cannot be made")
	case strings.Contains(c.in.StoragePool, "unusable"):
		return warn(name, c.in.StoragePool, "install xfsprogs and check loop devices work (modprobe loop), or set storage_pool = \"off\"")
	}
	return pass(name, c.in.StoragePool)
}

// addresses says how much of the guests' subnet is used: every VM, even
// stopped, keeps its address, and a /24 holds 253 of them.
func (c *checker) addresses() api.DoctorCheck {
	const name = "addresses"
	if c.in.VMs < 0 {
		return warn(name, "VM count unknown (daemon not consulted)", "run `banger doctor` with bangerd running")
	}
	bits, err := strconv.Atoi(c.in.Config.CIDR)
	if err != nil || bits < 8 || bits > 30 {
		return warn(name, fmt.Sprintf("cidr %q is not a prefix length", c.in.Config.CIDR), "set cidr to a prefix length such as \"22\"")
	}
	// Network, broadcast and the bridge's own address are not guests'.
	capacity := 1<<(32-bits) - 3
	detail := fmt.Sprintf("%d of %d guest addresses in the /%d used", c.in.VMs, capacity, bits)
	fix := fmt.Sprintf("set cidr to a shorter prefix (a /%d holds %d VMs) and restart bangerd, or remove VMs", bits-2, 1<<(32-bits+2)-3)
	switch {
	case c.in.VMs >= capacity:
		return fail(name, detail+": no VM can be created", fix)
	case c.in.VMs*10 >= capacity*9:
		return warn(name, detail+": nearly used up", fix)
	}
	return pass(name, detail)
}

func (c *checker) loop() api.DoctorCheck {
	const name = "loop"
	if _, err := os.Stat(c.path("/dev/loop-control")); err != nil {
		return warn(name, "no /dev/loop-control; dm-snapshot overlays need loop devices", "modprobe loop")
	}
	return pass(name, "/dev/loop-control present")
}

func (c *checker) tun() api.DoctorCheck {
	const name = "tun"
	if _, err := os.Stat(c.path("/dev/net/tun")); err != nil {
		return fail(name, "no /dev/net/tun: VMs cannot get a network interface", "modprobe tun")
	}
	return pass(name, "/dev/net/tun present")
}

// nft checks the tool that installs the guests' packet filter (isolation,
// anti-spoofing, egress policy); without it no VM gets a network.
func (c *checker) nft(ctx context.Context) api.DoctorCheck {
	const name = "nft"
	if _, err := hostexec.LookPath("nft"); err != nil {
		return fail(name, "nft not found: guests cannot be isolated, so no VM can start", "apt-get install nftables")
	}
	if _, err := c.runner.Run(ctx, "nft", "-j", "list", "tables"); err != nil {
		return fail(name, fmt.Sprintf("nft does not work: %v", err), "load the nf_tables module (and nft_chain_nat, br_netfilter's bridge family)")
	}
	return pass(name, "nft works (guest isolation and egress policy)")
}

func (c *checker) iptables(ctx context.Context) api.DoctorCheck {
	const name = "iptables"
	if _, err := hostexec.LookPath("iptables"); err != nil {
		return fail(name, "iptables not found: NAT for VMs cannot work", "apt-get install iptables")
	}
	if _, err := hostexec.LookPath("iptables-restore"); err != nil {
		return fail(name, "iptables-restore not found: a VM's NAT rules are applied with it", "apt-get install iptables")
	}
	if _, err := c.runner.Run(ctx, "iptables", "-t", "nat", "-S", "POSTROUTING"); err != nil {
		return fail(name, fmt.Sprintf("iptables does not work: %v", err), "load the nf_tables or ip_tables modules")
	}
	return pass(name, "iptables works")
}

func (c *checker) ipForward() api.DoctorCheck {
	const name = "ip_forward"
	b, err := os.ReadFile(c.path("/proc/sys/net/ipv4/ip_forward"))
	if err != nil {
		return warn(name, fmt.Sprintf("cannot read ip_forward: %v", err), "")
	}
	if strings.TrimSpace(string(b)) != "1" {
		return warn(name, "net.ipv4.ip_forward is 0; bangerd turns it on when a VM uses NAT", "sysctl -w net.ipv4.ip_forward=1 (or let bangerd do it)")
	}
	return pass(name, "net.ipv4.ip_forward=1")
}

func (c *checker) disk() api.DoctorCheck {
	const name = "disk"
	dir := c.in.Config.StateDir
	for dir != "/" {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return warn(name, fmt.Sprintf("statfs %s: %v", dir, err), "")
	}
	free := int64(st.Bavail) * st.Bsize
	detail := fmt.Sprintf("%s free in %s", humanBytes(free), dir)
	switch {
	case free < 2<<30:
		return fail(name, detail, "free space: an image needs ~2G and each VM's disks grow up to their sizes")
	case free < 10<<30:
		return warn(name, detail, "free space or move state_dir: VM disks grow up to their sizes")
	}
	return pass(name, detail)
}

func (c *checker) sshKey() api.DoctorCheck {
	const name = "ssh-key"
	if _, err := os.Stat(c.in.Config.SSHKeyPath); err != nil {
		return warn(name, fmt.Sprintf("no daemon SSH key at %s yet", c.in.Config.SSHKeyPath), "it is generated by the first `banger image build`")
	}
	return pass(name, c.in.Config.SSHKeyPath)
}

func (c *checker) kernelBuild() api.DoctorCheck {
	const name = "kernel-build"
	matches, _ := filepath.Glob(c.path("/usr/src/linux-source-*.tar.xz"))
	var missing []string
	if len(matches) == 0 {
		missing = append(missing, "linux-source-6.1")
	}
	for _, t := range []string{"make", "gcc", "flex", "bison", "bc"} {
		if _, err := hostexec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return warn(name, "`banger kernel build` lacks: "+strings.Join(missing, ", "), "apt-get install linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev")
	}
	return pass(name, "linux-source and build tools present")
}

func (c *checker) imageBuild() api.DoctorCheck {
	const name = "image-build"
	var missing []string
	for _, t := range []string{"debootstrap", "mkfs.ext4", "e2fsck", "resize2fs"} {
		if _, err := hostexec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return warn(name, "`banger image build` lacks: "+strings.Join(missing, ", "), "apt-get install debootstrap e2fsprogs")
	}
	return pass(name, "debootstrap and e2fsprogs present")
}

func unwrap(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func humanBytes(n int64) string {
	const g = 1 << 30
	if n >= g {
		return fmt.Sprintf("%.1fG", float64(n)/g)
	}
	return fmt.Sprintf("%dM", n>>20)
}

// Failed reports whether any check failed.
func Failed(checks []api.DoctorCheck) bool {
	for _, c := range checks {
		if c.Status == api.StatusFail {
			return true
		}
	}
	return false
}
