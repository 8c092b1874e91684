package qemuvmm

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFDFromPath(t *testing.T) {
	tests := []struct {
		path string
		n    int
		ok   bool
	}{
		{"/dev/fd/3", 3, true},
		{"/proc/self/fd/17", 17, true},
		{"/dev/fd/", 0, false},
		{"/dev/fd/3x", 0, false},
		{"/dev/fd/-1", 0, false},
		{"/dev/fd/3/x", 0, false},
		{"/proc/1/fd/3", 0, false},
		{"/dev/fdset/3", 0, false},
		{"/dev/fd/99999999999", 0, false},
		{"/srv/disk.img", 0, false},
	}
	for _, tt := range tests {
		n, ok := fdFromPath(tt.path)
		if n != tt.n || ok != tt.ok {
			t.Errorf("fdFromPath(%q): got %d %v, want %d %v", tt.path, n, ok, tt.n, tt.ok)
		}
	}
}

// fdPath opens path with flag and returns /dev/fd/N for it; the test
// closes it at the end.
func fdPath(t *testing.T, path string, flag int) (string, *os.File) {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return "/dev/fd/" + strconv.Itoa(int(f.Fd())), f
}

// TestStartWithInheritedDescriptors configures every file as an inherited
// descriptor, as bangerd does for an unprivileged VMM: the drives go to
// QEMU as fd sets, the kernel and initrd as memfd copies, the tap as the
// descriptor given with --tap-fd; the inherited descriptors themselves
// stay open.
func TestStartWithInheritedDescriptors(t *testing.T) {
	var seen struct{ kernel, initrd string }
	tap, _ := os.Open(os.DevNull)
	defer tap.Close()
	h := newHarness(t, func(c *Config) {
		c.TapFiles = map[string]*os.File{"tap-fc-3": tap}
		c.OpenTap = func(string) (*os.File, error) {
			t.Error("OpenTap called for a --tap-fd tap")
			return nil, os.ErrPermission
		}
		start := c.Start
		c.Start = func(ctx context.Context, spec MachineSpec) (Machine, error) {
			// QEMU reads the kernel and initrd by path from its
			// descriptors; read them as it would, through the files.
			read := func(p string) string {
				n, _ := fdFromPath(p)
				if n < 3 || n-3 >= len(spec.Files) {
					return ""
				}
				raw, _ := io.ReadAll(io.NewSectionReader(spec.Files[n-3], 0, 1<<20))
				return string(raw)
			}
			seen.kernel, seen.initrd = read(spec.Kernel), read(spec.Initrd)
			return start(ctx, spec)
		}
	})
	os.WriteFile(h.kernel, []byte("ELF kernel bytes"), 0o600)
	initrd := filepath.Join(h.dir, "initrd")
	os.WriteFile(initrd, []byte("cpio"), 0o600)
	kernelPath, _ := fdPath(t, h.kernel, os.O_RDONLY)
	initrdPath, _ := fdPath(t, initrd, os.O_RDONLY)
	rootPath, rootFile := fdPath(t, h.rootImg, os.O_RDWR)
	dataPath, _ := fdPath(t, h.dataImg, os.O_RDONLY)

	h.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
	h.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":"console=ttyS0"}`, kernelPath, initrdPath))
	h.ok("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false,"cache_type":"Writeback"}`, rootPath))
	h.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, dataPath))
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap-fc-3"}`)
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)

	spec := h.specs[0]
	// Descriptor 3 is the guest memory; the kernel and initrd copies
	// follow.
	if spec.RAMFD != 3 || spec.Kernel != "/dev/fd/4" || spec.Initrd != "/dev/fd/5" || seen.kernel != "ELF kernel bytes" || seen.initrd != "cpio" {
		t.Errorf("memory %d, kernel %q (%q), initrd %q (%q): want the memory at 3, copies at /dev/fd/4 and 5", spec.RAMFD, spec.Kernel, seen.kernel, spec.Initrd, seen.initrd)
	}
	wantDrives := []DriveSpec{
		{ID: "rootfs", Path: rootPath, Cache: "Writeback", FD: 6},
		{ID: "data", Path: dataPath, ReadOnly: true, Cache: "Unsafe", FD: 7},
	}
	if fmt.Sprint(spec.Drives) != fmt.Sprint(wantDrives) {
		t.Errorf("drives: got %+v, want %+v", spec.Drives, wantDrives)
	}
	if len(spec.NICs) != 1 || spec.NICs[0].FD != 8 || spec.Files[5] != tap {
		t.Errorf("nic: got %+v, want the --tap-fd descriptor as QEMU's 8", spec.NICs)
	}
	// The VMM closed its copies' descriptors once QEMU had its own.
	for _, m := range spec.Files[1:3] {
		if _, err := m.Stat(); err == nil {
			t.Errorf("memfd %s still open", m.Name())
		}
	}
	// QEMU's copy of the root drive is a duplicate; the inherited one
	// stays open, also after Close.
	if spec.Files[3].Fd() == rootFile.Fd() {
		t.Error("the drive was handed over without being duplicated")
	}
	h.v.Close()
	if _, err := unix.FcntlInt(rootFile.Fd(), unix.F_GETFD, 0); err != nil {
		t.Errorf("inherited root descriptor closed: %v", err)
	}
}

// TestInheritedDescriptorsRefused sends descriptors that must not be
// used: each gets a 400 and changes nothing.
func TestInheritedDescriptorsRefused(t *testing.T) {
	dirFD, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirFD)
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, _ := ln.(*net.UnixListener).File()
	defer lf.Close()
	var notInherited int
	h := newHarness(t, func(c *Config) {
		c.InheritedFD = func(n int) bool { return n != notInherited }
	})
	rw, rwFile := fdPath(t, h.rootImg, os.O_RDWR)
	ro, _ := fdPath(t, h.dataImg, os.O_RDONLY)
	wo, _ := fdPath(t, h.kernel, os.O_WRONLY)
	notInherited = int(rwFile.Fd()) + 1000
	drive := func(path string, readOnly bool) string {
		return fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":%v}`, path, readOnly)
	}
	tests := []struct{ name, path, body, want string }{
		{"read-only drive on a writable descriptor", "/drives/rootfs", drive(rw, true), "pass a read-only descriptor"},
		{"writable drive on a read-only descriptor", "/drives/rootfs", drive(ro, false), "not open for reading and writing"},
		{"standard stream", "/drives/rootfs", drive("/dev/fd/1", false), "standard stream"},
		{"directory", "/drives/rootfs", drive(fmt.Sprintf("/proc/self/fd/%d", dirFD), false), "not a regular file or block device"},
		{"socket", "/drives/rootfs", drive(fmt.Sprintf("/dev/fd/%d", lf.Fd()), false), "not a regular file or block device"},
		{"closed descriptor", "/drives/rootfs", drive("/dev/fd/999", false), "descriptor 999"},
		{"not inherited", "/drives/rootfs", drive(fmt.Sprintf("/dev/fd/%d", notInherited), false), "was not inherited"},
		{"kernel not readable", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, wo), "open for reading"},
		{"initrd a directory", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":"/dev/fd/%d"}`, ro, dirFD), "initrd file cannot be opened"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.fault("PUT", tt.path, tt.body, tt.want)
		})
	}
	h.t = t
	if h.v.boot != nil || len(h.v.drives) != 0 {
		t.Errorf("refused calls configured something: boot %+v drives %+v", h.v.boot, h.v.drives)
	}
}
