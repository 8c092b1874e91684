package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"banger/internal/model"
)

// recorded is one request seen by the fake API server.
type recorded struct {
	Method, Path string
	Body         string
	Chunked      bool
	HasLength    bool
}

// fakeAPI is an HTTP server on a unix socket that records requests and
// answers 204 (200 with instance info for GET /), or the reply set for a
// path.
type fakeAPI struct {
	sock string
	mu   sync.Mutex
	reqs []recorded
	// fail maps "METHOD path" to a status and body to answer instead.
	fail map[string][2]string
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	f := &fakeAPI{sock: filepath.Join(t.TempDir(), "api.sock"), fail: map[string][2]string{}}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{
		Method: r.Method, Path: r.URL.Path, Body: string(body),
		Chunked:   len(r.TransferEncoding) > 0,
		HasLength: r.Header.Get("Content-Length") != "" || r.ContentLength >= 0,
	})
	fail, failing := f.fail[r.Method+" "+r.URL.Path]
	f.mu.Unlock()
	if failing {
		w.WriteHeader(atoi(fail[0]))
		io.WriteString(w, fail[1])
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"app_name":"Firecracker","id":"vm1","state":"Not started","vmm_version":"1.16.1"}`)
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/vm/config" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"balloon":null,"drives":[{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"/dev/fd/4","rate_limiter":null,"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/dev/fd/3","boot_args":"console=ttyS0"},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":2,"mem_size_mib":2048,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap-fc-3","guest_mac":"06:00:ac:10:00:02","rx_rate_limiter":null,"tx_rate_limiter":null}],"vsock":null,"entropy":null}`)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// must returns v, panicking on err: the test's fixtures must be valid.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestClientSendsSpecValidBodies drives every client call with bodies
// built by the constructors, optional fields set and unset, through a
// client whose Check validates each request against the official spec,
// and checks what reached the server.
func TestClientSendsSpecValidBodies(t *testing.T) {
	f := newFakeAPI(t)
	c := newCheckedClient(t, f.sock)
	ctx := context.Background()
	logger := must(NewLogger("/run/vm/fc.log", "Info"))
	loggerDefault := must(NewLogger("/run/vm/fc.log", ""))
	metrics := must(NewMetrics("/run/vm/fc.metrics"))
	mc := must(NewMachineConfig(2, 2048))
	boot := must(NewBootSource("/img/vmlinux", "", "console=ttyS0 reboot=k panic=1"))
	bootInitrd := must(NewBootSource("/img/vmlinuz", "/img/initrd.img", ""))
	root := must(NewDrive("rootfs", "/run/vm/root.ext4", true, true))
	work := must(NewDrive("work_1", "/run/vm/work.ext4", false, false))
	work.CacheType = CacheWriteback
	nic := must(NewNetworkInterface("eth0", "tap-fc-3", "06:00:AC:10:00:02"))
	nicNoMAC := must(NewNetworkInterface("eth1", "tap-fc-4", ""))
	nicNoMAC.MTU = 1400
	vsock := must(NewVsock(3, "/run/vm/v.sock"))
	snapCreate := must(NewSnapshotCreate("/run/vm/vmm/snap.state", "/run/vm/vmm/snap.mem"))
	snapLoad := must(NewSnapshotLoad("/run/vm/vmm/snap.state", "/run/vm/vmm/snap.mem", true, map[string]string{"eth1": "tap-fc-9", "eth0": "tap-fc-8"}))
	snapLoadPaused := must(NewSnapshotLoad("/s", "/m", false, nil))

	steps := []struct {
		name string
		call func() error
		want recorded
	}{
		{"logger", func() error { return c.PutLogger(ctx, logger) }, recorded{Method: "PUT", Path: "/logger", Body: `{"log_path":"/run/vm/fc.log","level":"Info","show_level":true,"show_log_origin":false}`}},
		{"logger default level", func() error { return c.PutLogger(ctx, loggerDefault) }, recorded{Method: "PUT", Path: "/logger", Body: `{"log_path":"/run/vm/fc.log","show_level":true,"show_log_origin":false}`}},
		{"metrics", func() error { return c.PutMetrics(ctx, metrics) }, recorded{Method: "PUT", Path: "/metrics", Body: `{"metrics_path":"/run/vm/fc.metrics"}`}},
		{"machine", func() error { return c.PutMachineConfig(ctx, mc) }, recorded{Method: "PUT", Path: "/machine-config", Body: `{"vcpu_count":2,"mem_size_mib":2048,"smt":false,"track_dirty_pages":false}`}},
		{"boot", func() error { return c.PutBootSource(ctx, boot) }, recorded{Method: "PUT", Path: "/boot-source", Body: `{"kernel_image_path":"/img/vmlinux","boot_args":"console=ttyS0 reboot=k panic=1"}`}},
		{"boot initrd", func() error { return c.PutBootSource(ctx, bootInitrd) }, recorded{Method: "PUT", Path: "/boot-source", Body: `{"kernel_image_path":"/img/vmlinuz","initrd_path":"/img/initrd.img"}`}},
		{"root drive", func() error { return c.PutDrive(ctx, root) }, recorded{Method: "PUT", Path: "/drives/rootfs", Body: `{"drive_id":"rootfs","path_on_host":"/run/vm/root.ext4","is_root_device":true,"is_read_only":true}`}},
		{"work drive", func() error { return c.PutDrive(ctx, work) }, recorded{Method: "PUT", Path: "/drives/work_1", Body: `{"drive_id":"work_1","path_on_host":"/run/vm/work.ext4","is_root_device":false,"is_read_only":false,"cache_type":"Writeback"}`}},
		{"nic", func() error { return c.PutNetworkInterface(ctx, nic) }, recorded{Method: "PUT", Path: "/network-interfaces/eth0", Body: `{"iface_id":"eth0","host_dev_name":"tap-fc-3","guest_mac":"06:00:AC:10:00:02"}`}},
		{"nic mtu", func() error { return c.PutNetworkInterface(ctx, nicNoMAC) }, recorded{Method: "PUT", Path: "/network-interfaces/eth1", Body: `{"iface_id":"eth1","host_dev_name":"tap-fc-4","mtu":1400}`}},
		{"vsock", func() error { return c.PutVsock(ctx, vsock) }, recorded{Method: "PUT", Path: "/vsock", Body: `{"guest_cid":3,"uds_path":"/run/vm/v.sock"}`}},
		{"start", func() error { return c.InstanceStart(ctx) }, recorded{Method: "PUT", Path: "/actions", Body: `{"action_type":"InstanceStart"}`}},
		{"flush", func() error { return c.FlushMetrics(ctx) }, recorded{Method: "PUT", Path: "/actions", Body: `{"action_type":"FlushMetrics"}`}},
		{"cad", func() error { return c.SendCtrlAltDel(ctx) }, recorded{Method: "PUT", Path: "/actions", Body: `{"action_type":"SendCtrlAltDel"}`}},
		{"pause", func() error { return c.Pause(ctx) }, recorded{Method: "PATCH", Path: "/vm", Body: `{"state":"Paused"}`}},
		{"resume", func() error { return c.Resume(ctx) }, recorded{Method: "PATCH", Path: "/vm", Body: `{"state":"Resumed"}`}},
		{"describe", func() error { _, err := c.Describe(ctx); return err }, recorded{Method: "GET", Path: "/", Body: ""}},
		{"snapshot create", func() error { return c.CreateSnapshot(ctx, snapCreate) }, recorded{Method: "PUT", Path: "/snapshot/create", Body: `{"snapshot_type":"Full","snapshot_path":"/run/vm/vmm/snap.state","mem_file_path":"/run/vm/vmm/snap.mem"}`}},
		{"snapshot load", func() error { return c.LoadSnapshot(ctx, snapLoad) }, recorded{Method: "PUT", Path: "/snapshot/load", Body: `{"snapshot_path":"/run/vm/vmm/snap.state","mem_backend":{"backend_type":"File","backend_path":"/run/vm/vmm/snap.mem"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-fc-8"},{"iface_id":"eth1","host_dev_name":"tap-fc-9"}]}`}},
		{"snapshot load paused", func() error { return c.LoadSnapshot(ctx, snapLoadPaused) }, recorded{Method: "PUT", Path: "/snapshot/load", Body: `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}`}},
		{"vm config", func() error { _, err := c.VMConfig(ctx); return err }, recorded{Method: "GET", Path: "/vm/config", Body: ""}},
	}
	for i, s := range steps {
		if err := s.call(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		reqs := f.requests()
		if len(reqs) != i+1 {
			t.Fatalf("%s: server saw %d requests, want %d", s.name, len(reqs), i+1)
		}
		got := reqs[i]
		if got.Method != s.want.Method || got.Path != s.want.Path || got.Body != s.want.Body {
			t.Errorf("%s: got %s %s %s, want %s %s %s", s.name, got.Method, got.Path, got.Body, s.want.Method, s.want.Path, s.want.Body)
		}
		if got.Chunked {
			t.Errorf("%s: body was chunked; Firecracker reads bodies only by Content-Length", s.name)
		}
		// The server side checks the spec once more, independently of
		// the client's hook.
		if err := loadSpec(t).Check(got.Method, got.Path, []byte(got.Body)); err != nil {
			t.Errorf("%s: server received a body the spec refuses: %v", s.name, err)
		}
	}
	info, err := c.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info, (InstanceInfo{AppName: "Firecracker", ID: "vm1", State: StateNotStarted, VMMVersion: "1.16.1"}); got != want {
		t.Errorf("Describe: got %+v, want %+v", got, want)
	}
	vc, err := c.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vc.MachineConfig == nil || vc.MachineConfig.VCPUCount != 2 || len(vc.Drives) != 1 || vc.Drives[0].PathOnHost != "/dev/fd/4" ||
		len(vc.NetworkInterfaces) != 1 || vc.NetworkInterfaces[0].HostDevName != "tap-fc-3" || vc.BootSource == nil {
		t.Errorf("VMConfig: got %+v", vc)
	}
}

// TestCheckReplyRefuses shows the reply validator refusing replies the
// spec does not allow, so the integration tests' replies are checked.
func TestCheckReplyRefuses(t *testing.T) {
	v := loadSpec(t)
	bad := []struct{ path, body string }{
		{"/", `{"app_name":"x","id":"vm1","state":"Booting","vmm_version":"1"}`},
		{"/", `{"app_name":"x","id":"vm1","state":"Running"}`},
		{"/vm/config", `{"machine-config":{"vcpu_count":0,"mem_size_mib":1}}`},
		{"/vm/config", `{"drives":[{"drive_id":"r","is_root_device":true,"cache_type":"Sometimes"}]}`},
		{"/machine-config", `{"vcpu_count":1}`},
	}
	for _, b := range bad {
		if err := v.CheckReply("GET", b.path, 200, []byte(b.body)); err == nil {
			t.Errorf("GET %s reply %s accepted", b.path, b.body)
		}
	}
	if err := v.CheckReply("GET", "/vm/config", 200, []byte(`{"drives":[],"network-interfaces":[],"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false}}`)); err != nil {
		t.Errorf("valid reply refused: %v", err)
	}
}

// TestSpecRefuses shows that the spec, as loaded for the tests, refuses
// what Firecracker refuses: unknown fields, missing required fields, out
// of range values and unknown paths.
func TestSpecRefuses(t *testing.T) {
	v := loadSpec(t)
	tests := []struct {
		name, method, path, body string
	}{
		{"unknown field in drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":true,"readonly":true}`},
		{"unknown field in machine config", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"ht_enabled":false}`},
		{"unknown field in boot source", "PUT", "/boot-source", `{"kernel_image_path":"/k","root":"/dev/vda"}`},
		{"unknown field in nic", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","allow_mmds_requests":true}`},
		{"unknown field in action", "PUT", "/actions", `{"action_type":"InstanceStart","now":true}`},
		{"missing is_root_device", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_read_only":true}`},
		{"missing drive_id", "PUT", "/drives/rootfs", `{"path_on_host":"/r","is_root_device":true}`},
		{"missing vcpu_count", "PUT", "/machine-config", `{"mem_size_mib":128}`},
		{"missing kernel", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`},
		{"missing host_dev_name", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
		{"missing metrics_path", "PUT", "/metrics", `{}`},
		{"missing uds_path", "PUT", "/vsock", `{"guest_cid":3}`},
		{"vcpu_count too high", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`},
		{"guest cid too low", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`},
		{"unknown vm state", "PATCH", "/vm", `{"state":"Stopped"}`},
		{"unknown cache type", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"cache_type":"None"}`},
		{"wrong type", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":"yes"}`},
		{"empty body", "PUT", "/actions", ``},
		{"unknown path", "PUT", "/reboot", `{}`},
		{"wrong method", "DELETE", "/drives/rootfs", ``},
		{"body on get", "GET", "/", `{}`},
		{"snapshot create without memory", "PUT", "/snapshot/create", `{"snapshot_path":"/s"}`},
		{"snapshot create unknown type", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`},
		{"snapshot create unknown field", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","version":"1.0"}`},
		{"snapshot load without state", "PUT", "/snapshot/load", `{"mem_backend":{"backend_type":"File","backend_path":"/m"}}`},
		{"snapshot load unknown backend", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}`},
		{"snapshot load backend without path", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File"}}`},
		{"snapshot load unknown field", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","resume":true}`},
		{"snapshot load override without tap", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[{"iface_id":"eth0"}]}`},
		{"vm config with body", "GET", "/vm/config", `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := v.Check(tt.method, tt.path, []byte(tt.body)); err == nil {
				t.Errorf("spec accepted %s %s %s", tt.method, tt.path, tt.body)
			}
		})
	}
	// The same bodies without the defect pass, so the refusals above are
	// about the defect and not about something else.
	ok := []struct{ method, path, body string }{
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":true}`},
		{"PUT", "/machine-config", `{"vcpu_count":32,"mem_size_mib":128}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"GET", "/", ``},
		{"PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Diff"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`},
		{"GET", "/vm/config", ``},
	}
	for _, o := range ok {
		if err := v.Check(o.method, o.path, []byte(o.body)); err != nil {
			t.Errorf("spec refused valid %s %s %s: %v", o.method, o.path, o.body, err)
		}
	}
}

// TestCheckStopsRequest shows that a body refused by Check never reaches
// the server.
func TestCheckStopsRequest(t *testing.T) {
	f := newFakeAPI(t)
	c := newCheckedClient(t, f.sock)
	bad := MachineConfig{VCPUCount: 64, MemSizeMiB: 128} // bypasses NewMachineConfig
	err := c.PutMachineConfig(context.Background(), bad)
	if !errors.Is(err, errSpec) {
		t.Fatalf("got %v, want a spec refusal", err)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestClientRefusesBadIDs(t *testing.T) {
	f := newFakeAPI(t)
	c := newCheckedClient(t, f.sock)
	ctx := context.Background()
	for _, id := range []string{"root-fs", "", "a/b", "ä", "eth0 "} {
		if err := c.PutDrive(ctx, Drive{DriveID: id, PathOnHost: "/r", IsRootDevice: true}); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("PutDrive(%q): got %v, want EINVALID", id, err)
		}
		if err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: id, HostDevName: "tap0"}); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("PutNetworkInterface(%q): got %v, want EINVALID", id, err)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestClientSurfacesFaultMessage(t *testing.T) {
	f := newFakeAPI(t)
	f.fail["PUT /actions"] = [2]string{"400", `{"fault_message":"Start microvm error: Cannot start microvm without kernel configuration."}`}
	f.fail["PUT /boot-source"] = [2]string{"500", `oops`}
	c := newCheckedClient(t, f.sock)
	err := c.InstanceStart(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("got %T %v, want *APIError", err, err)
	}
	if got, want := *ae, (APIError{Method: "PUT", Path: "/actions", Status: 400, FaultMessage: "Start microvm error: Cannot start microvm without kernel configuration."}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for _, part := range []string{"PUT", "/actions", "400", "Cannot start microvm"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q lacks %q", err, part)
		}
	}
	err = c.PutBootSource(context.Background(), BootSource{KernelImagePath: "/k"})
	if !errors.As(err, &ae) || ae.Status != 500 || ae.FaultMessage != "oops" {
		t.Errorf("got %v, want status 500 with the raw body", err)
	}
}

func TestConstructorsRefuse(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"vcpus 0", second(NewMachineConfig(0, 128))},
		{"vcpus 33", second(NewMachineConfig(33, 128))},
		{"mem 0", second(NewMachineConfig(1, 0))},
		{"no kernel", second(NewBootSource("", "", ""))},
		{"drive id with hyphen", second(NewDrive("root-fs", "/r", true, false))},
		{"drive without path", second(NewDrive("rootfs", "", true, false))},
		{"nic id with dot", second(NewNetworkInterface("eth.0", "tap0", ""))},
		{"nic without tap", second(NewNetworkInterface("eth0", "", ""))},
		{"bad mac", second(NewNetworkInterface("eth0", "tap0", "06:00:AC:10:00"))},
		{"cid 2", second(NewVsock(2, "/v"))},
		{"vsock without path", second(NewVsock(3, ""))},
		{"logger level", second(NewLogger("/l", "Verbose"))},
		{"logger path", second(NewLogger("", "Info"))},
		{"metrics path", second(NewMetrics(""))},
		{"snapshot without memory path", second(NewSnapshotCreate("/s", ""))},
		{"snapshot into one file", second(NewSnapshotCreate("/s", "/s"))},
		{"load without state path", second(NewSnapshotLoad("", "/m", false, nil))},
		{"load override bad id", second(NewSnapshotLoad("/s", "/m", false, map[string]string{"eth-0": "tap0"}))},
		{"load override bad tap", second(NewSnapshotLoad("/s", "/m", false, map[string]string{"eth0": "tap/0"}))},
	}
	for _, tt := range tests {
		if got := model.ErrorCode(tt.err); got != model.EINVALID {
			t.Errorf("%s: got %q (%v), want EINVALID", tt.name, got, tt.err)
		}
	}
}

func second[T any](_ T, err error) error { return err }
