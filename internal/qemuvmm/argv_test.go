package qemuvmm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestQEMUArgs(t *testing.T) {
	base := []string{
		"-device", "i8042",
		"-nodefaults", "-no-user-config", "-no-reboot",
		"-display", "none",
	}
	join := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name string
		spec MachineSpec
		want []string
	}{
		{
			name: "kernel only, tcg",
			spec: MachineSpec{Accel: AccelTCG, VCPUs: 1, MemMiB: 128, Kernel: "/k/vmlinux", Cmdline: "console=ttyS0", QMPSocket: "/run/vm/api.sock.qmp"},
			want: join(
				[]string{"-sandbox", sandboxOpts, "-M", "microvm,acpi=on,pit=on,pic=on,rtc=on", "-accel", "tcg,tb-size=256"},
				base,
				[]string{"-smp", "1", "-m", "128M", "-kernel", "/k/vmlinux",
					"-append", "console=ttyS0",
					"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
					"-chardev", "socket,id=qmp,path=/run/vm/api.sock.qmp,server=on,wait=off", "-mon", "chardev=qmp,mode=control"},
			),
		},
		{
			name: "kvm, initrd, drives, nics, vsock, commas escaped",
			spec: MachineSpec{
				Accel: AccelKVM, VCPUs: 2, MemMiB: 2048, Kernel: "/k/vmlinuz", Initrd: "/k/initrd.img",
				Cmdline: "console=ttyS0 root=/dev/vda ro",
				Drives: []DriveSpec{
					{ID: "rootfs", Path: "/v/root,1.ext4", ReadOnly: true, Cache: "Unsafe"},
					{ID: "1work", Path: "/v/work.ext4", Cache: "Writeback"},
				},
				NICs: []NICSpec{
					{ID: "eth0", Tap: "tap-fc-1", MAC: "06:00:AC:10:00:02"},
					{ID: "eth1", Tap: "tap-fc-2", MTU: 1400},
				},
				VsockCID:  3,
				QMPSocket: "/run/vm,x/api.sock.qmp",
			},
			want: join(
				[]string{"-sandbox", sandboxOpts, "-M", "microvm,acpi=on,pit=on,pic=on,rtc=on", "-accel", "kvm", "-cpu", "host"},
				base,
				[]string{"-smp", "2", "-m", "2048M", "-kernel", "/k/vmlinuz", "-initrd", "/k/initrd.img",
					"-append", "console=ttyS0 root=/dev/vda ro",
					"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
					"-chardev", "socket,id=qmp,path=/run/vm,,x/api.sock.qmp,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
					"-drive", "id=blk_rootfs,file=/v/root,,1.ext4,format=raw,if=none,readonly=on,cache=unsafe,node-name=fmt_rootfs,file.node-name=file_rootfs",
					"-device", "virtio-blk-device,drive=blk_rootfs",
					"-drive", "id=blk_1work,file=/v/work.ext4,format=raw,if=none,readonly=off,cache=writeback,node-name=fmt_1work,file.node-name=file_1work",
					"-device", "virtio-blk-device,drive=blk_1work",
					"-netdev", "tap,id=net_eth0,ifname=tap-fc-1,script=no,downscript=no",
					"-device", "virtio-net-device,netdev=net_eth0,mac=06:00:ac:10:00:02",
					"-netdev", "tap,id=net_eth1,ifname=tap-fc-2,script=no,downscript=no",
					"-device", "virtio-net-device,netdev=net_eth1,host_mtu=1400",
					"-device", "vhost-vsock-device,guest-cid=3"},
			),
		},
		{
			name: "descriptors: drives through fd sets, a block device, a tap fd, a memfd kernel, incoming",
			spec: MachineSpec{
				Accel: AccelTCG, VCPUs: 1, MemMiB: 256, Kernel: "/dev/fd/3", Cmdline: "console=ttyS0",
				Drives: []DriveSpec{
					{ID: "rootfs", Path: "/dev/fd/7", Cache: "Unsafe", FD: 4, BlockDev: true},
					{ID: "work", Path: "/dev/fd/8", Cache: "Writeback", FD: 5, ReadOnly: true},
				},
				NICs:      []NICSpec{{ID: "eth0", Tap: "tap-fc-1", FD: 6}},
				QMPSocket: "/v/vmm/api.sock.qmp",
				Balloon:   &BalloonSpec{DeflateOnOOM: true},
				RAMFD:     7,
				Entropy:   &EntropySpec{MaxBytes: 1024, PeriodMS: 100},
				Incoming:  true,
			},
			want: join(
				[]string{"-sandbox", sandboxOpts,
					"-object", "memory-backend-file,id=ram0,mem-path=/dev/fd/7,size=256M,share=on",
					"-M", "microvm,acpi=on,pit=on,pic=on,rtc=on,memory-backend=ram0", "-accel", "tcg,tb-size=256"},
				base,
				[]string{"-smp", "1", "-m", "256M", "-kernel", "/dev/fd/3",
					"-append", "console=ttyS0",
					"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
					"-chardev", "socket,id=qmp,path=/v/vmm/api.sock.qmp,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
					"-add-fd", "fd=4,set=4",
					"-drive", "id=blk_rootfs,file.driver=host_device,file.filename=/dev/fdset/4,file.auto-read-only=off,format=raw,if=none,readonly=off,cache=unsafe,node-name=fmt_rootfs,file.node-name=file_rootfs",
					"-device", "virtio-blk-device,drive=blk_rootfs",
					"-add-fd", "fd=5,set=5",
					"-drive", "id=blk_work,file.driver=file,file.filename=/dev/fdset/5,file.auto-read-only=off,format=raw,if=none,readonly=on,cache=writeback,node-name=fmt_work,file.node-name=file_work",
					"-device", "virtio-blk-device,drive=blk_work",
					"-netdev", "tap,id=net_eth0,fd=6",
					"-device", "virtio-net-device,netdev=net_eth0",
					"-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=off",
					"-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0,max-bytes=1024,period=100",
					"-S", "-incoming", "defer"},
			),
		},
	}
	for _, tt := range tests {
		got := QEMUArgs(tt.spec)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestKernelCmdline(t *testing.T) {
	ro := &DriveSpec{ID: "rootfs", ReadOnly: true}
	rw := &DriveSpec{ID: "rootfs"}
	tests := []struct {
		args string
		root *DriveSpec
		uuid string
		want string
	}{
		{"console=ttyS0 reboot=k", ro, "", "console=ttyS0 reboot=k root=/dev/vda ro"},
		{"console=ttyS0 reboot=k", rw, "", "console=ttyS0 reboot=k root=/dev/vda rw"},
		{"console=ttyS0", rw, "abcd-02", "console=ttyS0 root=PARTUUID=abcd-02 rw"},
		{"console=ttyS0", nil, "", "console=ttyS0"},
		{"", ro, "", "root=/dev/vda ro"},
	}
	for _, tt := range tests {
		if got := KernelCmdline(tt.args, tt.root, tt.uuid); got != tt.want {
			t.Errorf("KernelCmdline(%q, %v, %q): got %q, want %q", tt.args, tt.root, tt.uuid, got, tt.want)
		}
	}
}

func TestWithTSCHint(t *testing.T) {
	tests := []struct {
		args string
		khz  uint64
		want string
	}{
		{"console=ttyS0", 2596128, "console=ttyS0 tsc_early_khz=2596128"},
		{"console=ttyS0", 0, "console=ttyS0"},
		{"console=ttyS0 tsc_early_khz=1000", 2596128, "console=ttyS0 tsc_early_khz=1000"},
	}
	for _, tt := range tests {
		if got := withTSCHint(tt.args, tt.khz); got != tt.want {
			t.Errorf("withTSCHint(%q, %d): got %q, want %q", tt.args, tt.khz, got, tt.want)
		}
	}
}

func TestMetricsLine(t *testing.T) {
	now := time.UnixMilli(1700000000123)
	prev := counters{
		Block: map[string]blockCounters{"rootfs": {ReadBytes: 100, ReadCount: 1}},
		Net:   map[string]netCounters{"eth0": {RxBytes: 10}},
	}
	cur := counters{
		Block: map[string]blockCounters{
			"rootfs": {ReadBytes: 300, ReadCount: 3, WriteBytes: 8, WriteCount: 1},
			"work":   {WriteBytes: 4096, WriteCount: 2, FlushCount: 1},
		},
		// A counter that went backwards (device reset) counts from zero.
		Net: map[string]netCounters{"eth0": {RxBytes: 4, TxBytes: 7, RxPackets: 1, TxPackets: 1}},
	}
	got := string(metricsLine(now, prev, cur))
	want := `{"block":{"read_bytes":200,"write_bytes":4104,"read_count":2,"write_count":3,"flush_count":1},` +
		`"block_rootfs":{"read_bytes":200,"write_bytes":8,"read_count":2,"write_count":1,"flush_count":0},` +
		`"block_work":{"read_bytes":0,"write_bytes":4096,"read_count":0,"write_count":2,"flush_count":1},` +
		`"net":{"rx_bytes_count":4,"tx_bytes_count":7,"rx_packets_count":1,"tx_packets_count":1},` +
		`"net_eth0":{"rx_bytes_count":4,"tx_bytes_count":7,"rx_packets_count":1,"tx_packets_count":1},` +
		`"utc_timestamp_ms":1700000000123}` + "\n"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestReadTapCountersSwapsToGuestView(t *testing.T) {
	dir := t.TempDir()
	st := filepath.Join(dir, "tap0", "statistics")
	os.MkdirAll(st, 0o755)
	for name, v := range map[string]string{"rx_bytes": "111\n", "tx_bytes": "222\n", "rx_packets": "3\n", "tx_packets": "4\n"} {
		os.WriteFile(filepath.Join(st, name), []byte(v), 0o644)
	}
	got, err := readTapCounters(dir, "tap0")
	if err != nil {
		t.Fatal(err)
	}
	if want := (netCounters{RxBytes: 222, TxBytes: 111, RxPackets: 4, TxPackets: 3}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := readTapCounters(dir, "tap1"); err == nil || !strings.Contains(err.Error(), "tap1") {
		t.Errorf("missing tap: got %v", err)
	}
}

func TestBlockCountersFromQMP(t *testing.T) {
	var a, b qmpBlockStats
	a.Device, a.Stats.RdBytes, a.Stats.WrOps = "blk_rootfs", 10, 2
	b.Device = "some-other-node"
	got := blockCountersFromQMP([]qmpBlockStats{a, b})
	want := map[string]blockCounters{"rootfs": {ReadBytes: 10, WriteCount: 2}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
