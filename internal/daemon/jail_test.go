package daemon

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"banger/internal/cgroup"
	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/proc"
	"banger/internal/storage"
)

// TestJailPlan: with a firecracker binary and a jailer next to it, the
// daemon plans the jailer's command line (the VM's uid, its cgroup with
// the VM's limits, a chroot under the state dir), links the disks into
// the chroot and copies the kernel, and recognises the jailed VMM by its
// instance id and the binary in the chroot. No firecracker can run here:
// this checks the plan, not a boot.
func TestJailPlan(t *testing.T) {
	e := newTestDaemon(t, false)
	dir := t.TempDir()
	fc := filepath.Join(dir, "firecracker")
	jailer := filepath.Join(dir, "jailer")
	for _, f := range []string{fc, jailer} {
		os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755)
	}
	e.d.cfg.FirecrackerBin = fc
	if got := e.d.jailerBinary(fc); got != jailer {
		t.Fatalf("jailerBinary = %q; want %q", got, jailer)
	}
	if got := e.d.jailerBinary("/usr/bin/banger-vmm-qemu"); got != "" {
		t.Errorf("banger-vmm-qemu gets a jailer: %q", got)
	}
	// A fake v1 hierarchy, as this host has.
	cg := t.TempDir()
	for _, c := range []string{"cpu", "memory", "pids"} {
		os.MkdirAll(filepath.Join(cg, c), 0o755)
		os.WriteFile(filepath.Join(cg, c, "cgroup.procs"), nil, 0o644)
	}
	e.d.cgroups = cgroup.Detect(cg, "banger")
	e.d.cfg.CgroupParent = "banger"

	vm := e.create(t, "jailed", false)
	vm.Runtime.VMMUID = 1500000002
	vm.Spec.VCPUCount, vm.Spec.MemoryMiB = 2, 1024
	kernel := filepath.Join(e.d.cfg.StateDir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.MkdirAll(vm.Runtime.VMDir, 0o700)
	os.WriteFile(vm.Runtime.SystemOverlay, []byte("root"), 0o600)
	os.WriteFile(vm.Runtime.WorkDiskPath, []byte("work"), 0o600)
	img := model.Image{KernelPath: kernel}
	h := vmHandles{Overlay: storage.Attached{Device: vm.Runtime.SystemOverlay}, Tap: "bgtap0"}

	plan, err := e.d.planJail(vm, img, h, fc)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(mustJailerArgs(t, plan), " ")
	for _, want := range []string{
		"--id vm-" + model.ShortID(vm.ID), "--exec-file " + fc, "--uid 1500000002", "--gid 1500000002",
		"--cgroup-version 1", "--cgroup cpu.cfs_quota_us=200000", "--cgroup memory.limit_in_bytes=" + itoa64((1024+vmmOverheadMiB)<<20),
		"--cgroup pids.max=512", "--parent-cgroup banger", "--chroot-base-dir " + e.d.layout.jailDir(),
		"-- --api-sock /run/firecracker.socket",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("jailer args lack %q:\n%s", want, args)
		}
	}
	if want := filepath.Join(e.d.layout.jailDir(), "firecracker", "vm-"+model.ShortID(vm.ID), "root"); plan.chroot != want {
		t.Errorf("chroot %s; want %s", plan.chroot, want)
	}
	if os.Geteuid() == 0 {
		if err := buildJail(plan); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"rootfs": "root", "work.ext4": "work", "vmlinux": "kernel"} {
			if b, err := os.ReadFile(filepath.Join(plan.chroot, name)); err != nil || string(b) != want {
				t.Errorf("%s in the jail: %q %v", name, b, err)
			}
		}
		// The image's kernel keeps its owner: it was copied, not linked.
		if k, _ := os.Stat(kernel); statUID(k) != 0 {
			t.Errorf("the image's kernel changed owner to %d", statUID(k))
		}
		if w, _ := os.Stat(filepath.Join(plan.chroot, "work.ext4")); statUID(w) != 1500000002 {
			t.Errorf("work disk link owner %d", statUID(w))
		}
		if err := e.d.removeJail(vm); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(vm.Runtime.WorkDiskPath); err != nil {
			t.Errorf("removing the jail removed the disk: %v", err)
		}
	}
	// The jailed VMM is known by its id and the binary in the chroot.
	vm.Runtime.APISockPath = e.d.jailedSocket(vm)
	if !e.d.jailed(vm) {
		t.Fatal("not seen as jailed")
	}
	argv := []string{"/firecracker", "--id", "vm-" + model.ShortID(vm.ID), "--api-sock", "/run/firecracker.socket"}
	proc.WriteFake(e.vmms.root, proc.Process{PID: 60001, PPID: 1, UID: 1500000002, Argv: argv}, filepath.Join(plan.chroot, "firecracker"))
	proc.WriteFake(e.vmms.root, proc.Process{PID: 60002, PPID: 1, UID: 1500000002, Argv: argv}, fc)
	if m := e.d.findVMM(vm, 0, nil); m.PID != 60001 {
		t.Errorf("findVMM = %+v; want the jailed firecracker 60001", m)
	}
}

func mustJailerArgs(t *testing.T, p jailPlan) []string {
	t.Helper()
	a, err := firecracker.JailerArgs(p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

func statUID(fi os.FileInfo) int {
	if fi == nil {
		return -1
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
