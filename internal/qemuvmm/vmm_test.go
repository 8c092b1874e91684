package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMachine stands in for QEMU: it records QMP commands, answers
// query-blockstats from its counters, and migrates: migrate writes
// stream to the descriptor passed under the URI's name, migrate-incoming
// reads one into loaded.
type fakeMachine struct {
	mu     sync.Mutex
	calls  []string
	stats  []qmpBlockStats
	done   chan struct{}
	ended  bool
	killed bool
	err    error
	fail   map[string]error
	// version is query-version's micro (major and minor are 7.2).
	version int
	fds     map[string]*os.File
	stream  []byte
	// migrateStatus is query-migrate's final status ("completed").
	migrateStatus string
	loaded        []byte
	// runState is query-status's status: what stop, cont and migrate
	// leave.
	runState string
}

func newFakeMachine() *fakeMachine {
	return &fakeMachine{
		done: make(chan struct{}), fail: map[string]error{}, version: 22, fds: map[string]*os.File{},
		stream: []byte("FAKE-QEMU-MIGRATION-STREAM\n" + strings.Repeat("guest memory and device state\n", 100)), migrateStatus: "completed",
		runState: "running",
	}
}

func (f *fakeMachine) ExecuteFD(_ context.Context, cmd string, args, out any, file *os.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	raw, _ := json.Marshal(args)
	f.calls = append(f.calls, cmd+" "+string(raw)+" +fd")
	if err := f.fail[cmd]; err != nil {
		return err
	}
	switch cmd {
	case "getfd":
		f.fds[args.(map[string]string)["fdname"]] = file
	case "add-fd":
		f.fds[fmt.Sprintf("set%v", args.(map[string]any)["fdset-id"])] = file
	}
	return nil
}

// migrate does what QEMU does with an fd: URI.
func (f *fakeMachine) migrate(cmd string, args any) error {
	uri := args.(map[string]any)["uri"].(string)
	name := strings.TrimPrefix(uri, "fd:")
	file, ok := f.fds[name]
	if !ok {
		return &QMPError{Command: cmd, Class: "GenericError", Desc: "File descriptor named '" + name + "' has not been found"}
	}
	delete(f.fds, name)
	if cmd == "migrate" {
		_, err := file.Write(f.stream)
		return err
	}
	raw, err := io.ReadAll(file)
	f.loaded = raw
	return err
}

func (f *fakeMachine) Execute(_ context.Context, cmd string, args, out any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := cmd
	if args != nil {
		raw, _ := json.Marshal(args)
		call += " " + string(raw)
	}
	f.calls = append(f.calls, call)
	if err := f.fail[cmd]; err != nil {
		return err
	}
	var reply any
	switch cmd {
	case "query-blockstats":
		reply = f.stats
	case "query-version":
		reply = map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": f.version}, "package": ""}
	case "query-migrate":
		reply = map[string]string{"status": f.migrateStatus, "error-desc": "fake failure"}
	case "query-status":
		reply = map[string]string{"status": f.runState}
	case "migrate", "migrate-incoming":
		if err := f.migrate(cmd, args); err != nil {
			return err
		}
		if cmd == "migrate" {
			f.runState = "postmigrate"
		}
		return nil
	case "stop":
		f.runState = "paused"
	case "cont":
		f.runState = "running"
	}
	if reply != nil {
		raw, _ := json.Marshal(reply)
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (f *fakeMachine) Done() <-chan struct{} { return f.done }
func (f *fakeMachine) ExitErr() error        { <-f.done; return f.err }
func (f *fakeMachine) Kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ended {
		f.ended, f.killed = true, true
		f.err = errors.New("killed")
		close(f.done)
	}
}

// exit ends the fake VM as a guest reboot would.
func (f *fakeMachine) exit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ended = true
	close(f.done)
}

func (f *fakeMachine) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeMachine) setBlock(id string, rd, wr, rdOps, wrOps uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s qmpBlockStats
	s.Device = blockNodeID(id)
	s.Stats.RdBytes, s.Stats.WrBytes, s.Stats.RdOps, s.Stats.WrOps = rd, wr, rdOps, wrOps
	f.stats = []qmpBlockStats{s}
}

// harness is a VMM with a fake machine and fake host files.
type harness struct {
	t       *testing.T
	v       *VMM
	m       *fakeMachine
	dir     string
	specs   []MachineSpec
	sysfs   string
	kernel  string
	rootImg string
	dataImg string
	now     time.Time
	opened  int // taps opened by OpenTap
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, m: newFakeMachine(), dir: t.TempDir(), now: time.Unix(1700000000, 0)}
	h.kernel = h.file("vmlinux")
	h.rootImg = h.file("root.ext4")
	h.dataImg = h.file("data.ext4")
	h.sysfs = filepath.Join(h.dir, "sys-class-net")
	cfg := Config{
		ID: "vm1", APISock: filepath.Join(h.dir, "api.sock"),
		Accel: FixedAccel(AccelTCG),
		Start: func(_ context.Context, spec MachineSpec) (Machine, error) {
			h.specs = append(h.specs, spec)
			return h.m, nil
		},
		LogOutput:      &strings.Builder{},
		VhostVsockPath: filepath.Join(h.dir, "no-vhost-vsock"),
		SysClassNet:    h.sysfs,
		MetricsPeriod:  time.Hour,
		Now:            func() time.Time { return h.now },
		OpenTap: func(name string) (*os.File, error) {
			if _, err := os.Stat(filepath.Join(h.sysfs, name)); err != nil {
				return nil, errors.New("no such device")
			}
			h.opened++
			return os.Open(filepath.Join(h.sysfs, name))
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	h.v = New(cfg)
	t.Cleanup(h.v.Close)
	return h
}

func (h *harness) file(name string) string {
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// tap creates a fake tap with counters in the fake sysfs.
func (h *harness) tap(name string, rxBytes, txBytes, rxPkts, txPkts uint64) {
	dir := filepath.Join(h.sysfs, name, "statistics")
	os.MkdirAll(dir, 0o755)
	for n, v := range map[string]uint64{"rx_bytes": rxBytes, "tx_bytes": txBytes, "rx_packets": rxPkts, "tx_packets": txPkts} {
		os.WriteFile(filepath.Join(dir, n), []byte(fmt.Sprintf("%d\n", v)), 0o644)
	}
}

// do sends one request and returns the status and the body.
func (h *harness) do(method, path, body string) (int, string) {
	h.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.v.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// ok sends a request that must succeed with 204.
func (h *harness) ok(method, path, body string) {
	h.t.Helper()
	if code, reply := h.do(method, path, body); code != http.StatusNoContent || reply != "" {
		h.t.Fatalf("%s %s %s: got %d %q, want 204 and no body", method, path, body, code, reply)
	}
}

// fault sends a request that must fail with 400 and a fault message
// containing want.
func (h *harness) fault(method, path, body, want string) {
	h.t.Helper()
	code, reply := h.do(method, path, body)
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if err := json.Unmarshal([]byte(reply), &f); err != nil || code != http.StatusBadRequest {
		h.t.Fatalf("%s %s %s: got %d %q, want 400 with a fault_message", method, path, body, code, reply)
	}
	if !strings.Contains(f.FaultMessage, want) {
		h.t.Errorf("%s %s %s: fault %q lacks %q", method, path, body, f.FaultMessage, want)
	}
}

func (h *harness) state() string {
	h.t.Helper()
	code, reply := h.do("GET", "/", "")
	var info map[string]string
	if code != 200 || json.Unmarshal([]byte(reply), &info) != nil {
		h.t.Fatalf("GET /: %d %q", code, reply)
	}
	return info["state"]
}

func (h *harness) configure() {
	h.t.Helper()
	h.tap("tap0", 0, 0, 0, 0)
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`)
	h.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k panic=1"}`, h.kernel))
	h.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":false,"cache_type":"Writeback"}`, h.dataImg))
	h.ok("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":true}`, h.rootImg))
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}`)
}

func TestDescribeBeforeStart(t *testing.T) {
	h := newHarness(t, nil)
	code, reply := h.do("GET", "/", "")
	if want := `{"app_name":"banger-vmm-qemu","id":"vm1","state":"Not started","vmm_version":"1.16.1"}`; code != 200 || reply != want {
		t.Errorf("got %d %s, want 200 %s", code, reply, want)
	}
	code, reply = h.do("GET", "/version", "")
	if want := `{"firecracker_version":"1.16.1"}`; code != 200 || reply != want {
		t.Errorf("GET /version: got %d %s, want 200 %s", code, reply, want)
	}
	code, reply = h.do("GET", "/machine-config", "")
	if want := `{"huge_pages":"None","mem_size_mib":128,"smt":false,"track_dirty_pages":false,"vcpu_count":1}`; code != 200 || reply != want {
		t.Errorf("GET /machine-config: got %d %s, want 200 %s", code, reply, want)
	}
}

// TestStartBuildsSpec checks what InstanceStart hands to the machine: the
// root drive first whatever the PUT order, root= appended from its
// read-only flag, the NIC, and Firecracker's state changes.
func TestStartBuildsSpec(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	// Re-PUTting a drive updates it in place.
	h.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false}`, h.dataImg))
	if got := h.state(); got != "Not started" {
		t.Fatalf("state %q", got)
	}
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got := h.state(); got != "Running" {
		t.Errorf("state after start: got %q, want Running", got)
	}
	want := MachineSpec{
		Accel: AccelTCG, VCPUs: 2, MemMiB: 512, Kernel: h.kernel,
		Cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda ro",
		Drives: []DriveSpec{
			{ID: "rootfs", Path: h.rootImg, ReadOnly: true, Cache: "Unsafe"},
			{ID: "data", Path: h.dataImg, Cache: "Unsafe"},
		},
		NICs:      []NICSpec{{ID: "eth0", Tap: "tap0", MAC: "06:00:AC:10:00:02", FD: 4}},
		QMPSocket: filepath.Join(h.dir, "api.sock.qmp"),
		RAMFD:     3,
	}
	if len(h.specs) != 1 {
		t.Fatalf("started %d machines", len(h.specs))
	}
	got := h.specs[0]
	// The guest memory is QEMU's descriptor 3, the tap the VMM opened
	// itself its 4.
	if len(got.Files) != 2 || got.Files[0] != h.v.ram || got.Files[1].Name() != filepath.Join(h.sysfs, "tap0") || h.opened != 1 {
		t.Errorf("files: got %v (opened %d taps), want the memory and the tap0 descriptor", got.Files, h.opened)
	}
	if st, err := h.v.ram.Stat(); err != nil || st.Size() != 512<<20 {
		t.Errorf("guest memory: %v, %v; want a 512 MiB memfd", st, err)
	}
	got.Files = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("spec:\n got %+v\nwant %+v", got, want)
	}
	// Starting twice is refused, as is any pre-boot call now.
	h.fault("PUT", "/actions", `{"action_type":"InstanceStart"}`, msgNotAfterBoot)
	for _, c := range [][2]string{
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, h.kernel)},
		{"/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true}`, h.rootImg)},
		{"/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"/logger", `{"level":"Info"}`},
		{"/metrics", fmt.Sprintf(`{"metrics_path":%q}`, filepath.Join(h.dir, "m"))},
		{"/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
	} {
		h.fault("PUT", c[0], c[1], msgNotAfterBoot)
	}
}

func TestPostBootActions(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	h.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	if got := h.state(); got != "Paused" {
		t.Errorf("state after pause: got %q", got)
	}
	h.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	if got := h.state(); got != "Running" {
		t.Errorf("state after resume: got %q", got)
	}
	h.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`) // no metrics configured: nothing to do
	want := []string{
		"query-version",
		`send-key {"keys":[{"data":"ctrl","type":"qcode"},{"data":"alt","type":"qcode"},{"data":"delete","type":"qcode"}]}`,
		"stop",
		"cont",
	}
	if got := h.m.recorded(); !reflect.DeepEqual(got, want) {
		t.Errorf("qmp calls:\n got %q\nwant %q", got, want)
	}
	// A failing QMP command is a 400 that says why.
	h.m.fail["stop"] = errors.New("qmp stop: GenericError: boom")
	h.fault("PATCH", "/vm", `{"state":"Paused"}`, "boom")
	if got := h.state(); got != "Running" {
		t.Errorf("state after a failed pause: got %q, want Running", got)
	}
	// The guest reboots: the machine ends cleanly and so does the VMM.
	h.m.exit()
	select {
	case <-h.v.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the machine ended")
	}
	if err := h.v.ExitErr(); err != nil {
		t.Errorf("ExitErr: %v, want nil for a guest-initiated end", err)
	}
}

func TestRefusedBeforeBoot(t *testing.T) {
	h := newHarness(t, nil)
	h.fault("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, msgNotBeforeBoot)
	h.fault("PUT", "/actions", `{"action_type":"FlushMetrics"}`, msgNotBeforeBoot)
	h.fault("PATCH", "/vm", `{"state":"Paused"}`, msgNotBeforeBoot)
	h.fault("PATCH", "/vm", `{"state":"Resumed"}`, msgNotBeforeBoot)
	h.fault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Cannot start microvm without kernel configuration.")
	if len(h.specs) != 0 {
		t.Errorf("machine started: %+v", h.specs)
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t, nil)
	h.tap("tap0", 0, 0, 0, 0)
	drive := func(extra string) string {
		return fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true%s}`, h.rootImg, extra)
	}
	tests := []struct {
		name, method, path, body, want string
	}{
		{"unknown field", "PUT", "/drives/rootfs", drive(`,"readonly":true`), "unknown field `readonly`"},
		{"unknown field in machine config", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"ht_enabled":false}`, "unknown field `ht_enabled`"},
		{"unknown field in action", "PUT", "/actions", `{"action_type":"InstanceStart","x":1}`, "unknown field `x`"},
		{"empty put", "PUT", "/machine-config", ``, "Empty PUT request."},
		{"blank patch", "PATCH", "/vm", "  \n", "Empty PATCH request."},
		{"get with body", "GET", "/", `{}`, "GET request cannot have a body."},
		{"not json", "PUT", "/metrics", `metrics_path=/x`, "deserializing the json body"},
		{"null body", "PUT", "/metrics", `null`, "deserializing the json body"},
		{"trailing data", "PUT", "/vm", `{"state":"Paused"} {}`, "Invalid request method and/or path: PUT /vm."},
		{"trailing data in action", "PUT", "/actions", `{"action_type":"InstanceStart"} x`, "trailing characters"},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"two","mem_size_mib":128}`, "deserializing the json body"},
		{"fractional vcpus", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":128}`, "deserializing the json body"},
		{"missing vcpu_count", "PUT", "/machine-config", `{"mem_size_mib":128}`, "missing field `vcpu_count`"},
		{"too many vcpus", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "number of vCPUs must be greater than 0, less than 32"},
		{"smt with an odd vcpu count", "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "must be 1 or an even number if SMT is enabled"},
		{"cpu template", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":128,"cpu_template":"T2"}`, "CPU templates are not available"},
		{"patch to odd with smt", "PATCH", "/machine-config", `{"vcpu_count":3,"smt":true}`, "must be 1 or an even number if SMT is enabled"},
		{"missing kernel", "PUT", "/boot-source", `{"boot_args":"x"}`, "missing field `kernel_image_path`"},
		{"kernel not there", "PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "kernel file cannot be opened"},
		{"initrd not there", "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":"/nonexistent/initrd"}`, h.kernel), "initrd file cannot be opened"},
		{"hyphen in drive id", "PUT", "/drives/root-fs", `{"drive_id":"root-fs","path_on_host":"/x","is_root_device":true}`, "Invalid drive id"},
		{"missing drive id", "PUT", "/drives/", `{"drive_id":"","is_root_device":true}`, "Missing drive id"},
		{"drive id mismatch", "PUT", "/drives/rootfs", `{"drive_id":"other","path_on_host":"/x","is_root_device":true}`, "does not match the id from the body"},
		{"missing drive_id", "PUT", "/drives/rootfs", `{"path_on_host":"/x","is_root_device":true}`, "missing field `drive_id`"},
		{"missing is_root_device", "PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q}`, h.rootImg), "missing field `is_root_device`"},
		{"drive file missing", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/nonexistent/root","is_root_device":true}`, "Unable to create the block device"},
		{"rate limiter without refill", "PUT", "/drives/rootfs", drive(`,"rate_limiter":{"bandwidth":{"size":1}}`), "missing field `refill_time`"},
		{"rate limiter unknown field", "PUT", "/drives/rootfs", drive(`,"rate_limiter":{"bytes":{"size":1,"refill_time":1}}`), "unknown field `bytes`"},
		{"rate limiter negative", "PUT", "/drives/rootfs", drive(`,"rate_limiter":{"ops":{"size":-1,"refill_time":1}}`), "invalid value"},
		{"vhost-user", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","socket":"/s","is_root_device":true}`, "vhost-user block devices are not supported"},
		{"bad cache type", "PUT", "/drives/rootfs", drive(`,"cache_type":"None"`), "unknown variant `None`"},
		{"bad nic id", "PUT", "/network-interfaces/eth-0", `{"iface_id":"eth-0","host_dev_name":"tap0"}`, "Invalid network interface id"},
		{"nic id mismatch", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "does not match the id from the body"},
		{"missing tap", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, "missing field `host_dev_name`"},
		{"tap not there", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap9"}`, "Open tap device failed"},
		{"bad mac", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00"}`, "invalid MAC address"},
		{"bad mtu", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":20}`, "Invalid MTU"},
		{"vsock unavailable", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`, "no-vhost-vsock is not available on this host"},
		{"vsock cid", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v.sock"}`, "Invalid guest CID"},
		{"vsock missing path", "PUT", "/vsock", `{"guest_cid":3}`, "missing field `uds_path`"},
		{"logger level", "PUT", "/logger", `{"level":"Verbose"}`, "unknown level"},
		{"metrics missing path", "PUT", "/metrics", `{}`, "missing field `metrics_path`"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
		{"missing action", "PUT", "/actions", `{}`, "missing field `action_type`"},
		{"unknown vm state", "PATCH", "/vm", `{"state":"Stopped"}`, "unknown variant `Stopped`"},
		{"unknown path", "GET", "/nope", ``, "Invalid request method and/or path: GET /nope."},
		{"wrong method", "DELETE", "/drives/rootfs", ``, "Invalid request method and/or path: DELETE /drives/rootfs."},
		{"mmds", "PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`, "MMDS is not available on banger-vmm-qemu"},
		{"mmds data", "GET", "/mmds", ``, "MMDS is not available on banger-vmm-qemu"},
		{"pmem", "PUT", "/pmem/p0", `{"id":"p0","path_on_host":"/p"}`, "virtio-pmem devices are not available"},
		{"serial", "PUT", "/serial", `{"serial_out_path":"/s"}`, "Serial output redirection is not available"},
		{"cpu config", "PUT", "/cpu-config", `{}`, "Custom CPU templates are not available"},
		{"hotplug", "PUT", "/hotplug/memory", `{"total_size_mib":1024}`, "Memory hotplug (virtio-mem) is not available"},
		{"hinting", "PATCH", "/balloon/hinting/start", `{}`, "free page hinting is not available"},
		{"balloon hinting", "PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true,"free_page_hinting":true}`, "free page hinting is not available"},
		{"balloon without deflate", "PUT", "/balloon", `{"amount_mib":1}`, "missing field `deflate_on_oom`"},
		{"balloon stats before config", "GET", "/balloon/statistics", ``, "balloon device is not configured"},
		{"entropy ops limit", "PUT", "/entropy", `{"rate_limiter":{"ops":{"size":1,"refill_time":1}}}`, "ops rate limit for the entropy device is not available"},
		{"patch drive before boot", "PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`, msgNotBeforeBoot},
		{"patch nic before boot", "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, msgNotBeforeBoot},
		{"oversized body", "PUT", "/boot-source", `{"kernel_image_path":"` + strings.Repeat("a", DefaultMaxPayload) + `"}`, "larger than the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.fault(tt.method, tt.path, tt.body, tt.want)
		})
	}
	h.t = t
	// Nothing was configured by the refused calls.
	if h.v.boot != nil || len(h.v.drives) != 0 || len(h.v.nics) != 0 || h.v.vsock != nil || h.v.metricsFile != nil {
		t.Errorf("refused calls changed the configuration: boot %v drives %v nics %v", h.v.boot, h.v.drives, h.v.nics)
	}
}

func TestConfigurationConflicts(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.tap("tap1", 0, 0, 0, 0)
	other := h.file("other.ext4")
	h.fault("PUT", "/drives/other", fmt.Sprintf(`{"drive_id":"other","path_on_host":%q,"is_root_device":true}`, other), "A root block device already exists!")
	h.fault("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "host device tap0 is already in use")
	h.fault("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"06:00:ac:10:00:02"}`, "guest MAC address")
	// Replacing the root drive under its own id is fine.
	h.ok("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false,"partuuid":"1234-01"}`, other))
	metrics := filepath.Join(h.dir, "m.json")
	h.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metrics))
	h.fault("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metrics), "Reinitialization of metrics not allowed.")
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got, want := h.specs[0].Cmdline, "console=ttyS0 reboot=k panic=1 root=PARTUUID=1234-01 rw"; got != want {
		t.Errorf("cmdline: got %q, want %q", got, want)
	}
}

// TestMetricsFlush checks the metrics file: Firecracker-shaped lines,
// counters as deltas since the previous flush, tap counters in the
// guest's view.
func TestMetricsFlush(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	metrics := filepath.Join(h.dir, "fc.metrics")
	h.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metrics))
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	// The host's tap received 1000 bytes (sent by the guest) and sent
	// 5000 (received by the guest).
	h.tap("tap0", 1000, 5000, 10, 50)
	h.m.setBlock("rootfs", 4096, 512, 4, 1)
	h.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	h.now = h.now.Add(time.Second)
	h.tap("tap0", 1500, 5000, 15, 50)
	h.m.setBlock("rootfs", 8192, 512, 6, 1)
	h.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	raw, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"block":{"read_bytes":4096,"write_bytes":512,"read_count":4,"write_count":1,"flush_count":0},"block_rootfs":{"read_bytes":4096,"write_bytes":512,"read_count":4,"write_count":1,"flush_count":0},"net":{"rx_bytes_count":5000,"tx_bytes_count":1000,"rx_packets_count":50,"tx_packets_count":10},"net_eth0":{"rx_bytes_count":5000,"tx_bytes_count":1000,"rx_packets_count":50,"tx_packets_count":10},"utc_timestamp_ms":1700000000000}
{"block":{"read_bytes":4096,"write_bytes":0,"read_count":2,"write_count":0,"flush_count":0},"block_rootfs":{"read_bytes":4096,"write_bytes":0,"read_count":2,"write_count":0,"flush_count":0},"net":{"rx_bytes_count":0,"tx_bytes_count":500,"rx_packets_count":0,"tx_packets_count":5},"net_eth0":{"rx_bytes_count":0,"tx_bytes_count":500,"rx_packets_count":0,"tx_packets_count":5},"utc_timestamp_ms":1700000001000}
`
	if string(raw) != want {
		t.Errorf("metrics file:\n got %s\nwant %s", raw, want)
	}
}

func TestMetricsPeriodic(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MetricsPeriod = 10 * time.Millisecond })
	h.configure()
	metrics := filepath.Join(h.dir, "fc.metrics")
	h.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metrics))
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		raw, _ := os.ReadFile(metrics)
		if strings.Count(string(raw), "\n") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no periodic flushes: %q", raw)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Close stops the flusher and kills the machine.
	h.v.Close()
	if !h.m.killed {
		t.Error("Close did not kill the machine")
	}
}

func TestLoggerGoesToFile(t *testing.T) {
	var stderr strings.Builder
	h := newHarness(t, func(c *Config) { c.LogOutput = &stderr })
	logPath := filepath.Join(h.dir, "vmm.log")
	h.ok("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"info","show_level":true,"show_log_origin":false}`, logPath))
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	raw, _ := os.ReadFile(logPath)
	if !strings.Contains(string(raw), `level=INFO msg="starting microvm" id=vm1 accel=tcg`) {
		t.Errorf("log file lacks the start line:\n%s", raw)
	}
	if strings.Contains(stderr.String(), "starting microvm") {
		t.Errorf("stderr got a line meant for the log file:\n%s", stderr.String())
	}
}

func TestStartFailureIsReported(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Start = func(context.Context, MachineSpec) (Machine, error) {
			return nil, errors.New("qemu: exit status 1: could not open tap0")
		}
	})
	h.configure()
	h.fault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Start microvm error: qemu: exit status 1: could not open tap0")
	if got := h.state(); got != "Not started" {
		t.Errorf("state after a failed start: got %q", got)
	}
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		body string
		ok   bool
	}{
		{`{"state":"Paused"}`, true},
		{" \n{\"state\":\"Paused\"}\n ", true},
		{`{"state":"Paused","x":1}`, false},
		{`{"state":"Paused"}{"state":"Paused"}`, false},
		{`["state"]`, false},
		{`null`, false},
		{`{"state":1}`, false},
		{`{"state":"Paused"`, false},
	}
	for _, tt := range tests {
		var v vmReq
		err := decodeStrict([]byte(tt.body), &v)
		if (err == nil) != tt.ok {
			t.Errorf("decodeStrict(%q): got %v, want ok=%v", tt.body, err, tt.ok)
		}
	}
}

// TestMachineConfigSMT follows Firecracker's rules for smt (what firectl
// sends unless told not to): accepted with 1 or an even number of vCPUs,
// presented to the guest as hyperthread pairs; PATCH merges, PUT resets.
func TestMachineConfigSMT(t *testing.T) {
	h := newHarness(t, nil)
	h.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"smt":true}`)
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":true,"track_dirty_pages":false}`)
	h.ok("PATCH", "/machine-config", `{"vcpu_count":4}`)
	code, reply := h.do("GET", "/machine-config", "")
	if want := `{"huge_pages":"None","mem_size_mib":256,"smt":true,"track_dirty_pages":false,"vcpu_count":4}`; code != 200 || reply != want {
		t.Errorf("after PATCH: got %d %s, want %s", code, reply, want)
	}
	h.fault("PATCH", "/machine-config", `{"vcpu_count":5}`, "must be 1 or an even number if SMT is enabled")
	h.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, h.kernel))
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if s := h.specs[0]; s.VCPUs != 4 || !s.SMT || s.MemMiB != 256 {
		t.Errorf("spec: %+v", s)
	}
	if args := strings.Join(QEMUArgs(h.specs[0]), " "); !strings.Contains(args, "-smp 4,sockets=1,cores=2,threads=2") {
		t.Errorf("qemu args lack the SMT topology: %s", args)
	}
	h.fault("PATCH", "/machine-config", `{"vcpu_count":2}`, msgNotAfterBoot)
	// A PUT resets smt to false.
	h2 := newHarness(t, nil)
	h2.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":true}`)
	h2.ok("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":256}`)
	if h2.v.smt || h2.v.vcpus != 3 {
		t.Errorf("PUT did not reset smt: %v %d", h2.v.smt, h2.v.vcpus)
	}
}
