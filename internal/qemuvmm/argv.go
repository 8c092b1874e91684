package qemuvmm

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MachineSpec is everything QEMU needs to run one VM, gathered from the
// API calls before InstanceStart.
type MachineSpec struct {
	// Accel is AccelKVM or AccelTCG.
	Accel string
	VCPUs int
	// SMT presents the vCPUs as pairs of hyperthreads, as Firecracker's
	// smt does.
	SMT    bool
	MemMiB int
	Kernel string
	// Initrd is "" for none.
	Initrd string
	// Cmdline is the full kernel command line (see KernelCmdline).
	Cmdline string
	// Drives are in guest order: the root drive first, so it is
	// /dev/vda, then the others in the order they were first PUT.
	Drives []DriveSpec
	NICs   []NICSpec
	// VsockCID is the vhost-vsock guest CID, 0 for no vsock device.
	VsockCID uint32
	// QMPSocket is the path of QEMU's QMP unix socket.
	QMPSocket string
	// Files are inherited by QEMU as descriptors 3, 4, ...: the drives,
	// taps, kernel and initrd given as descriptors. DriveSpec.FD,
	// NICSpec.FD and /dev/fd/N paths refer to these numbers.
	Files []*os.File
	// Balloon and Entropy are the optional virtio-balloon and virtio-rng
	// devices (nil for none).
	Balloon *BalloonSpec
	Entropy *EntropySpec
	// NoSandbox leaves QEMU's seccomp sandbox off (--no-seccomp).
	NoSandbox bool
	// RAMFD, when not 0, is QEMU's descriptor of a memfd of MemMiB that
	// backs the guest memory, shared (see MachineSpec.Files).
	RAMFD int
	// Incoming makes QEMU wait, paused, for a migration stream (-S
	// -incoming defer) instead of running the guest: the start of a
	// snapshot load.
	Incoming bool
}

// DriveSpec is one virtio-blk drive.
type DriveSpec struct {
	ID string
	// Path is the file QEMU opens, when FD is 0.
	Path     string
	ReadOnly bool
	// Cache is Firecracker's cache_type: "Unsafe" (flushes ignored, the
	// default) or "Writeback".
	Cache string
	// FD, when not 0, is QEMU's descriptor of the drive (see
	// MachineSpec.Files), opened read-only or read-write as ReadOnly
	// says; QEMU gets it through an fd set and never opens a path.
	FD int
	// BlockDev says the descriptor is a block device, not a file.
	BlockDev bool
	// Throttle limits the drive's I/O (Firecracker's rate_limiter).
	Throttle Throttle
}

// NICSpec is one virtio-net interface on an existing tap device.
type NICSpec struct {
	ID  string
	Tap string
	// MAC is "" to let QEMU choose.
	MAC string
	// MTU is advertised to the guest when not 0.
	MTU int
	// FD, when not 0, is QEMU's descriptor of the tap (see
	// MachineSpec.Files); else QEMU opens Tap by name.
	FD int
}

// BalloonSpec is a virtio-balloon device.
type BalloonSpec struct {
	DeflateOnOOM, FreePageReporting bool
}

// EntropySpec is a virtio-rng device fed from the host's /dev/urandom,
// limited to MaxBytes per PeriodMS when both are set.
type EntropySpec struct {
	MaxBytes, PeriodMS int64
}

// balloonID is the balloon device's QEMU id.
const balloonID = "balloon0"

// sandboxOpts is QEMU's seccomp sandbox: obsolete system calls,
// privilege changes, spawning processes and changing scheduling or
// resource limits all denied. QEMU then cannot exec anything (no exec:
// migration; snapshots go through fd:).
const sandboxOpts = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// blockNodeID and netdevID are the QEMU ids of a drive and a NIC.
// Firecracker ids may start with a digit, which QEMU ids may not, hence
// the prefix; query-blockstats reports blockNodeID back.
func blockNodeID(id string) string { return "blk_" + id }
func netdevID(id string) string    { return "net_" + id }

// formatNodeID and fileNodeID name a drive's block nodes: the raw format
// node the device reads through, and the file node under it (n counts the
// backing files PATCH /drives has swapped in).
func formatNodeID(id string) string { return "fmt_" + id }
func fileNodeID(id string, n int) string {
	if n == 0 {
		return "file_" + id
	}
	return fmt.Sprintf("file%d_%s", n, id)
}

// driveIDFromNode inverts blockNodeID.
func driveIDFromNode(node string) (string, bool) { return strings.CutPrefix(node, "blk_") }

// qemuOpt escapes a value for QEMU's key=value option syntax, where a
// literal comma is written twice.
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// onOff renders a boolean QEMU property.
func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// KernelCmdline returns bootArgs with what Firecracker appends for the
// root drive: root=/dev/vda (or root=PARTUUID=...) and ro or rw. Without
// a root drive, bootArgs is returned as is.
func KernelCmdline(bootArgs string, root *DriveSpec, partUUID string) string {
	if root == nil {
		return bootArgs
	}
	rootArg := "root=/dev/vda"
	if partUUID != "" {
		rootArg = "root=PARTUUID=" + partUUID
	}
	mode := "rw"
	if root.ReadOnly {
		mode = "ro"
	}
	return strings.TrimSpace(bootArgs + " " + rootArg + " " + mode)
}

// withTSCHint adds tsc_early_khz=tscKHz to a TCG guest's command line,
// unless it is unknown (0) or the caller set one: under TCG on a busy
// host the guest's PIT calibration of the TSC fails and the boot hangs
// (see MeasureTSCkHz). Firecracker guests on KVM learn the frequency from
// the hypervisor instead.
func withTSCHint(args string, tscKHz uint64) string {
	if tscKHz == 0 || strings.Contains(args, "tsc_early_khz=") {
		return args
	}
	return strings.TrimSpace(args + " tsc_early_khz=" + strconv.FormatUint(tscKHz, 10))
}

// smpArg is -smp's value: n vCPUs, as n/2 cores of two threads with SMT.
func smpArg(n int, smt bool) string {
	if smt && n > 1 && n%2 == 0 {
		return fmt.Sprintf("%d,sockets=1,cores=%d,threads=2", n, n/2)
	}
	return strconv.Itoa(n)
}

// QEMUArgs returns QEMU's argv (after the binary name) for spec: the
// Firecracker-equivalent machine. microvm with ACPI describes the
// virtio-mmio devices and the i8042 to the guest; the PIT is needed for
// TSC calibration under TCG; -no-reboot turns the guest's reboot (and
// Ctrl-Alt-Del, and a panic with panic=1) into QEMU's exit, as a reboot
// ends Firecracker. The serial console goes to QEMU's stdout, which is
// the VMM's stdout, as with Firecracker.
// TCGTranslationCacheMiB caps TCG's translation cache (QEMU's tb-size).
// The daemon's per-VM memory limit leaves room for it.
const TCGTranslationCacheMiB = 256

func QEMUArgs(spec MachineSpec) []string {
	var args []string
	if !spec.NoSandbox {
		args = append(args, "-sandbox", sandboxOpts)
	}
	machine := "microvm,acpi=on,pit=on,pic=on,rtc=on"
	if spec.RAMFD != 0 {
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=ram0,mem-path=/dev/fd/%d,size=%dM,share=on", spec.RAMFD, spec.MemMiB))
		machine += ",memory-backend=ram0"
	}
	accel := spec.Accel
	if accel == AccelTCG {
		// TCG's translation cache defaults to 1 GiB, allocated as the
		// guest runs new code: a long-lived guest grew QEMU past the VM's
		// cgroup memory limit (guest memory plus the VMM's overhead) and
		// was OOM-killed. Capped, the cache is flushed when full instead.
		accel += ",tb-size=" + strconv.Itoa(TCGTranslationCacheMiB)
	}
	args = append(args,
		"-M", machine,
		"-accel", accel,
	)
	if spec.Accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	args = append(args,
		"-device", "i8042",
		"-nodefaults", "-no-user-config", "-no-reboot",
		"-display", "none",
		"-smp", smpArg(spec.VCPUs, spec.SMT),
		"-m", strconv.Itoa(spec.MemMiB)+"M",
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	args = append(args,
		"-append", spec.Cmdline,
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path="+qemuOpt(spec.QMPSocket)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)
	for _, d := range spec.Drives {
		cache := "unsafe"
		if d.Cache == "Writeback" {
			cache = "writeback"
		}
		file := "file=" + qemuOpt(d.Path)
		if d.FD != 0 {
			// An fd set holds the one descriptor; QEMU dups it when it
			// opens /dev/fdset/N with the same access mode.
			driver := "file"
			if d.BlockDev {
				driver = "host_device"
			}
			args = append(args, "-add-fd", fmt.Sprintf("fd=%d,set=%d", d.FD, d.FD))
			// auto-read-only=off: QEMU would first open the set read-only
			// and find no descriptor of that mode.
			file = fmt.Sprintf("file.driver=%s,file.filename=/dev/fdset/%d,file.auto-read-only=off", driver, d.FD)
		}
		args = append(args,
			"-drive", fmt.Sprintf("id=%s,%s,format=raw,if=none,readonly=%s,cache=%s,node-name=%s,file.node-name=%s%s",
				blockNodeID(d.ID), file, onOff(d.ReadOnly), cache, formatNodeID(d.ID), fileNodeID(d.ID, 0), d.Throttle.driveOpts()),
			"-device", "virtio-blk-device,drive="+blockNodeID(d.ID),
		)
	}
	for _, n := range spec.NICs {
		dev := "virtio-net-device,netdev=" + netdevID(n.ID)
		if n.MAC != "" {
			dev += ",mac=" + strings.ToLower(n.MAC)
		}
		if n.MTU != 0 {
			dev += ",host_mtu=" + strconv.Itoa(n.MTU)
		}
		netdev := fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", netdevID(n.ID), qemuOpt(n.Tap))
		if n.FD != 0 {
			netdev = fmt.Sprintf("tap,id=%s,fd=%d", netdevID(n.ID), n.FD)
		}
		args = append(args, "-netdev", netdev, "-device", dev)
	}
	if spec.VsockCID != 0 {
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", spec.VsockCID))
	}
	if b := spec.Balloon; b != nil {
		args = append(args, "-device", fmt.Sprintf("virtio-balloon-device,id=%s,deflate-on-oom=%s,free-page-reporting=%s",
			balloonID, onOff(b.DeflateOnOOM), onOff(b.FreePageReporting)))
	}
	if e := spec.Entropy; e != nil {
		dev := "virtio-rng-device,rng=rng0"
		if e.MaxBytes > 0 && e.PeriodMS > 0 {
			dev += fmt.Sprintf(",max-bytes=%d,period=%d", e.MaxBytes, e.PeriodMS)
		}
		args = append(args, "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", dev)
	}
	if spec.Incoming {
		// -S keeps the loaded VM paused until cont, as Firecracker
		// leaves a loaded VM.
		args = append(args, "-S", "-incoming", "defer")
	}
	return args
}
