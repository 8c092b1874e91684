package qemuvmm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// callsSince returns the QMP calls made after the first n.
func (h *harness) callsSince(n int) []string { return h.m.recorded()[n:] }

func TestPatchDrive(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	n := len(h.m.recorded())
	bigger := filepath.Join(h.dir, "data2.ext4")
	os.WriteFile(bigger, make([]byte, 8192), 0o644)
	h.ok("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q}`, bigger))
	want := []string{
		fmt.Sprintf(`blockdev-add {"cache":{"direct":false,"no-flush":false},"driver":"file","filename":%q,"node-name":"file1_data","read-only":false}`, bigger),
		`blockdev-reopen {"options":[{"cache":{"direct":false,"no-flush":false},"driver":"raw","file":"file1_data","node-name":"fmt_data","read-only":false}]}`,
		`block_resize {"node-name":"fmt_data","size":8192}`,
	}
	if got := h.callsSince(n); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("qmp calls:\n got %q\nwant %q", got, want)
	}
	// A descriptor goes through an fd set; the drive is read-only, so no
	// resize, and the next node name follows.
	ro, f := fdPath(t, bigger, os.O_RDONLY)
	n = len(h.m.recorded())
	h.ok("PATCH", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q}`, ro))
	got := strings.Join(h.callsSince(n), "\n")
	for _, w := range []string{`add-fd {"fdset-id":1001} +fd`, `"filename":"/dev/fdset/1001","node-name":"file1_rootfs","read-only":true`, `"file":"file1_rootfs","node-name":"fmt_rootfs"`} {
		if !strings.Contains(got, w) {
			t.Errorf("qmp calls lack %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "block_resize") {
		t.Errorf("a read-only drive was resized:\n%s", got)
	}
	if d := h.v.drives[1]; d.Path != ro || d.file == nil || d.fdset != 1001 || d.gen != 1 {
		t.Errorf("rootfs after patch: %+v", d)
	}
	_ = f
	// Another swap of the same drive drops the previous fd set.
	n = len(h.m.recorded())
	h.ok("PATCH", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q}`, h.rootImg))
	if got := strings.Join(h.callsSince(n), "\n"); !strings.Contains(got, `remove-fd {"fdset-id":1001}`) || !strings.Contains(got, `"node-name":"file2_rootfs"`) {
		t.Errorf("second swap:\n%s", got)
	}
	// Refused: unknown drive, limiter, a missing file, a writable drive
	// on a read-only descriptor; a failing reopen leaves the old file.
	h.fault("PATCH", "/drives/nope", `{"drive_id":"nope","path_on_host":"/x"}`, "no drive nope")
	h.fault("PATCH", "/drives/data", `{"drive_id":"data","rate_limiter":{"bandwidth":{"size":1}}}`, "missing field `refill_time`")
	h.fault("PATCH", "/drives/data", `{"drive_id":"data","path_on_host":"/nonexistent"}`, "Unable to patch the block device")
	h.fault("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q}`, ro), "not open for reading and writing")
	h.m.fail["blockdev-reopen"] = &QMPError{Command: "blockdev-reopen", Class: "GenericError", Desc: "boom"}
	h.fault("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q}`, h.dataImg), "boom")
	if d := h.v.drives[0]; d.Path != bigger || d.gen != 1 {
		t.Errorf("a failed patch changed the drive: %+v", d)
	}
	// Only the drive_id: nothing to do, as in Firecracker.
	n = len(h.m.recorded())
	h.ok("PATCH", "/drives/data", `{"drive_id":"data"}`)
	if len(h.callsSince(n)) != 0 {
		t.Errorf("an empty patch made qmp calls: %q", h.callsSince(n))
	}
}

func TestPatchNetworkInterface(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	h.ok("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`)
	h.ok("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","rx_rate_limiter":null}`)
	h.fault("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`, "Network rate limiters are not available")
	h.fault("PATCH", "/network-interfaces/eth1", `{"iface_id":"eth1"}`, "no network interface eth1")
	h.fault("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap1"}`, "unknown field `host_dev_name`")
}

func TestBalloon(t *testing.T) {
	h := newHarness(t, nil)
	h.ok("PUT", "/balloon", `{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":1,"free_page_reporting":true}`)
	h.ok("PATCH", "/balloon", `{"amount_mib":32}`)
	code, reply := h.do("GET", "/balloon", "")
	if want := `{"amount_mib":32,"deflate_on_oom":true,"free_page_hinting":false,"free_page_reporting":true,"stats_polling_interval_s":1}`; code != 200 || reply != want {
		t.Errorf("GET /balloon: %d %s, want %s", code, reply, want)
	}
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if args := strings.Join(QEMUArgs(h.specs[0]), " "); !strings.Contains(args, "-device virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on") {
		t.Errorf("qemu args lack the balloon: %s", args)
	}
	calls := strings.Join(h.m.recorded(), "\n")
	for _, w := range []string{`balloon {"value":503316480}`, `qom-set {"path":"/machine/peripheral/balloon0","property":"guest-stats-polling-interval","value":1}`} {
		if !strings.Contains(calls, w) {
			t.Errorf("qmp calls lack %q:\n%s", w, calls)
		}
	}
	h.ok("PATCH", "/balloon", `{"amount_mib":128}`)
	if calls := h.m.recorded(); calls[len(calls)-1] != `balloon {"value":402653184}` {
		t.Errorf("last call %q", calls[len(calls)-1])
	}
	h.fault("PATCH", "/balloon", `{"amount_mib":4096}`, "too large")
	h.fault("PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":false}`, msgNotAfterBoot)
	h.fault("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":0}`, "cannot be turned on or off after boot")
	h.ok("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":5}`)
	code, reply = h.do("GET", "/balloon/statistics", "")
	var st map[string]any
	if code != 200 || json.Unmarshal([]byte(reply), &st) != nil || st["target_mib"] != 128.0 || st["target_pages"] != 32768.0 {
		t.Errorf("GET /balloon/statistics: %d %s", code, reply)
	}
}

func TestEntropy(t *testing.T) {
	h := newHarness(t, nil)
	h.ok("PUT", "/entropy", `{"rate_limiter":{"bandwidth":{"size":4096,"refill_time":100}}}`)
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if e := h.specs[0].Entropy; e == nil || e.MaxBytes != 4096 || e.PeriodMS != 100 {
		t.Errorf("entropy spec: %+v", e)
	}
	code, reply := h.do("GET", "/vm/config", "")
	if code != 200 || !strings.Contains(reply, `"entropy":{"rate_limiter":{"bandwidth":{"refill_time":100,"size":4096},"ops":null}}`) {
		t.Errorf("GET /vm/config: %s", reply)
	}
}

// TestBootFromConfig boots from Firecracker's --config-file JSON, with
// the sections the Go SDK's examples use.
func TestBootFromConfig(t *testing.T) {
	h := newHarness(t, nil)
	h.tap("tap0", 0, 0, 0, 0)
	cfg := fmt.Sprintf(`{
  "boot-source": {"kernel_image_path": %q, "boot_args": "console=ttyS0 reboot=k panic=1"},
  "drives": [
    {"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true, "is_read_only": false},
    {"drive_id": "data", "path_on_host": %q, "is_root_device": false, "is_read_only": true}
  ],
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": true},
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01"}],
  "logger": {"log_path": %q, "level": "Info"},
  "vsock": null
}`, h.kernel, h.rootImg, h.dataImg, filepath.Join(h.dir, "fc.log"))
	if err := h.v.BootFromConfig(context.Background(), []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	if h.state() != "Running" || len(h.specs) != 1 {
		t.Fatalf("state %q, %d machines", h.state(), len(h.specs))
	}
	s := h.specs[0]
	if s.VCPUs != 2 || !s.SMT || len(s.Drives) != 2 || len(s.NICs) != 1 || s.Cmdline != "console=ttyS0 reboot=k panic=1 root=/dev/vda rw" {
		t.Errorf("spec: %+v", s)
	}
	for _, bad := range []struct{ cfg, want string }{
		{`{"boot-source":{"kernel_image_path":"/nonexistent"}}`, "PUT /boot-source"},
		{`{"boot-source":{"kernel_image_path":` + strconv.Quote(h.kernel) + `},"mmds-config":{"network_interfaces":["eth0"]}}`, "MMDS is not available"},
		{`{"bootsource":{}}`, `unknown section "bootsource"`},
		{`[1,2]`, "config file"},
	} {
		h2 := newHarness(t, nil)
		if err := h2.v.BootFromConfig(context.Background(), []byte(bad.cfg)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: got %v, want %q", bad.cfg, err, bad.want)
		}
	}
}

// TestDriveRateLimiter maps Firecracker's token buckets to QEMU's
// throttling: at boot as -drive options, after boot with
// block_set_io_throttle, a PATCH bucket replacing only its own unit.
func TestDriveRateLimiter(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"rate_limiter":{"bandwidth":{"size":10485760,"one_time_burst":1048576,"refill_time":1000},"ops":{"size":100,"refill_time":100}}}`, h.dataImg))
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	args := strings.Join(QEMUArgs(h.specs[0]), " ")
	if !strings.Contains(args, "throttling.bps-total=10485760,throttling.bps-total-max=11534336,throttling.iops-total=1000,throttling.iops-total-max=1000") {
		t.Errorf("qemu args lack the throttling:\n%s", args)
	}
	n := len(h.m.recorded())
	h.ok("PATCH", "/drives/data", `{"drive_id":"data","rate_limiter":{"bandwidth":{"size":0,"refill_time":0}}}`)
	want := `block_set_io_throttle {"bps":0,"bps_rd":0,"bps_wr":0,"device":"blk_data","iops":1000,"iops_max":1000,"iops_rd":0,"iops_wr":0}`
	if got := h.callsSince(n); len(got) != 1 || got[0] != want {
		t.Errorf("qmp calls: %q, want %q", got, want)
	}
	code, reply := h.do("GET", "/vm/config", "")
	if code != 200 || !strings.Contains(reply, `"rate_limiter":{"bandwidth":null,"ops":{"refill_time":1000,"size":1000}}`) {
		t.Errorf("GET /vm/config: %s", reply)
	}
}
