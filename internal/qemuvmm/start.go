package qemuvmm

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
)

// machineSpec gathers the configuration into a MachineSpec. The root drive
// goes first, the others follow in the order they were first PUT.
// Inherited descriptors become QEMU's descriptors 3, 4, ...; a kernel or
// initrd given as a descriptor is copied (copyForQEMU) into a file QEMU
// opens as /dev/fd/N. The returned copies are the caller's to close once
// QEMU has inherited them.
func (v *VMM) machineSpec(accel string, tscKHz uint64) (spec MachineSpec, copies []*os.File, err error) {
	if v.boot == nil {
		return MachineSpec{}, nil, faultf("Start microvm error: Cannot start microvm without kernel configuration.")
	}
	defer func() {
		if err != nil {
			closeAll(copies)
			copies = nil
		}
	}()
	spec = MachineSpec{
		Accel: accel, VCPUs: v.vcpus, SMT: v.smt, MemMiB: v.memMiB,
		Kernel: v.boot.kernel, Initrd: v.boot.initrd,
		QMPSocket: v.QMPSocket(), NoSandbox: v.cfg.NoSandbox,
	}
	addFile := func(f *os.File) int {
		spec.Files = append(spec.Files, f)
		return 2 + len(spec.Files)
	}
	// The guest memory: a new memfd for a boot, the loaded one for a
	// snapshot load.
	if v.ram == nil {
		if v.ram, err = newGuestRAM(v.memMiB); err != nil {
			return MachineSpec{}, nil, faultf("Start microvm error: %v", err)
		}
	}
	spec.RAMFD = addFile(v.ram)
	bootFile := func(what string, in *inheritedFile) (string, error) {
		size, trim := in.size, false
		if what == "kernel" && v.boot.kernelELF {
			// Only the loaded part of a vmlinux (kernelcopy.go).
			if end, ok := loadableELFEnd(in.f, in.size); ok {
				size, trim = end, true
			}
		}
		m, err := copyForQEMU(filepath.Dir(v.cfg.APISock), "banger-vmm-"+what, in.f, size)
		if err == nil && trim {
			if err = trimELF(m); err != nil {
				m.Close()
			}
		}
		if err != nil {
			return "", faultf("Start microvm error: %s: %v", what, err)
		}
		copies = append(copies, m)
		return "/dev/fd/" + strconv.Itoa(addFile(m)), nil
	}
	if v.boot.kernelFile != nil {
		if spec.Kernel, err = bootFile("kernel", v.boot.kernelFile); err != nil {
			return MachineSpec{}, nil, err
		}
	}
	if v.boot.initrdFile != nil {
		if spec.Initrd, err = bootFile("initrd", v.boot.initrdFile); err != nil {
			return MachineSpec{}, nil, err
		}
	}
	var root *driveConfig
	addDrive := func(d *driveConfig) {
		ds := d.DriveSpec
		if d.file != nil {
			ds.FD, ds.BlockDev = addFile(d.file.f), d.file.blockDev
			d.fdset = ds.FD
		}
		spec.Drives = append(spec.Drives, ds)
	}
	for i := range v.drives {
		if v.drives[i].root {
			root = &v.drives[i]
			addDrive(root)
		}
	}
	for i := range v.drives {
		if !v.drives[i].root {
			addDrive(&v.drives[i])
		}
	}
	for _, n := range v.nics {
		ns := n.NICSpec
		ns.FD = addFile(n.tap)
		spec.NICs = append(spec.NICs, ns)
	}
	args := defaultBootArgs
	if v.boot.argsSet {
		args = v.boot.args
	}
	if accel == AccelTCG {
		args = withTSCHint(args, tscKHz)
	}
	if root != nil {
		spec.Cmdline = KernelCmdline(args, &root.DriveSpec, root.partUUID)
	} else {
		spec.Cmdline = KernelCmdline(args, nil, "")
	}
	if v.vsock != nil {
		spec.VsockCID = v.vsock.cid
	}
	if v.balloon != nil {
		spec.Balloon = &BalloonSpec{DeflateOnOOM: v.balloon.DeflateOnOOM, FreePageReporting: v.balloon.FreePageReporting}
	}
	if v.entropy != nil {
		spec.Entropy = &EntropySpec{MaxBytes: v.entropy.MaxBytes, PeriodMS: v.entropy.PeriodMS}
	}
	return spec, copies, nil
}

// closeAll closes the VMM's own descriptors of the kernel and initrd
// copies; QEMU keeps its own (and its mappings) for as long as it runs.
func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func (v *VMM) instanceStart(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.cfg.StartTimeout)
	defer cancel()
	choice, err := v.cfg.Accel.Result(ctx)
	if err != nil {
		return faultf("Start microvm error: %v", err)
	}
	spec, copies, err := v.machineSpec(choice.Accel, choice.TSCkHz)
	if err != nil {
		return err
	}
	defer closeAll(copies)
	v.logger().Info("starting microvm", "accel", choice.Accel, "accel_reason", choice.Why,
		"vcpus", spec.VCPUs, "mem_mib", spec.MemMiB, "cmdline", spec.Cmdline)
	m, err := v.cfg.Start(ctx, spec)
	if err != nil {
		// The next start makes its memory anew (the size may change).
		v.ram.Close()
		v.ram = nil
		return faultf("Start microvm error: %v", err)
	}
	v.m = m
	v.state = stateRunning
	v.accel, v.cmdline = choice.Accel, spec.Cmdline
	if v.qemuVersion, err = queryQEMUVersion(ctx, m); err != nil {
		v.logger().Warn("qemu version unknown: snapshots will not load", "err", err)
	}
	if err := v.applyRuntimeDevices(ctx); err != nil {
		v.logger().Warn("device setup after start failed", "err", err)
	}
	v.wg.Add(1)
	go v.watch(m)
	if v.metricsFile != nil {
		v.wg.Add(1)
		go v.metricsLoop(v.cfg.MetricsPeriod, m.Done())
	}
	return nil
}
