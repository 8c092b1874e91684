package qemuvmm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestStateFileRoundTrip(t *testing.T) {
	st := snapshotState{
		ID: newSnapshotID(), VMMVersion: Version, QEMUVersion: "7.2.22", Accel: AccelTCG,
		MemFileSize: 4096 + 2048<<20 + 100, RAMSize: 2048 << 20, StreamLength: 100, RAMCRC: 0xdeadbeef, RAMBytes: 8192,
		VCPUs: 2, MemMiB: 2048, Kernel: "/dev/fd/3", KernelELF: true, Cmdline: "console=ttyS0 root=/dev/vda rw",
		Drives: []snapshotDrive{{ID: "rootfs", Path: "/dev/fd/4", Root: true, Cache: "Writeback", Size: 1 << 30}},
		NICs:   []snapshotNIC{{ID: "eth0", Tap: "tap-fc-3", MAC: "06:00:ac:10:00:02"}},
	}
	raw, err := encodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("banger-vmm-qemu-snapshot v2\n{")) {
		t.Errorf("state file starts %q", raw[:40])
	}
	got, err := decodeState(raw)
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v, %v\nwant %+v", got, err, st)
	}
	damaged := bytes.Replace(raw, []byte(`"mem_size_mib":2048`), []byte(`"mem_size_mib":4096`), 1)
	bad := map[string]struct {
		raw  []byte
		want string
	}{
		"empty":         {nil, "not a banger-vmm-qemu snapshot"},
		"firecracker's": {[]byte("\x00\x01\x02binary vmstate"), "not a banger-vmm-qemu snapshot"},
		"other version": {bytes.Replace(raw, []byte(" v2\n"), []byte(" v1\n"), 1), "snapshot format version 1: this banger-vmm-qemu 0.1.0 reads version 2"},
		"damaged":       {damaged, "CRC mismatch"},
		"cut short":     {raw[:len(raw)/2], "incomplete"},
		"no crc":        {raw[:bytes.LastIndex(raw, []byte("crc32c"))], "incomplete"},
	}
	for name, b := range bad {
		if _, err := decodeState(b.raw); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: got %v, want %q", name, err, b.want)
		}
	}
	hdr, _ := memHeader(st)
	if err := checkMemHeader(hdr, st); err != nil {
		t.Errorf("own header: %v", err)
	}
	other := st
	other.ID = newSnapshotID()
	if err := checkMemHeader(hdr, other); err == nil || !strings.Contains(err.Error(), "another snapshot") {
		t.Errorf("other id: got %v", err)
	}
	other = st
	other.RAMSize = 1024 << 20
	if err := checkMemHeader(hdr, other); err == nil || !strings.Contains(err.Error(), "layout") {
		t.Errorf("other layout: got %v", err)
	}
	if err := checkMemHeader([]byte("QEVM\x00\x00\x00\x03"), st); err == nil {
		t.Error("a bare QEMU stream passed as a memory file")
	}
	// A layout that does not add up is refused.
	bad2 := st
	bad2.MemFileSize++
	raw, _ = encodeState(bad2)
	if _, err := decodeState(raw); err == nil {
		t.Error("a state file whose memory layout does not add up was accepted")
	}
}

// guestPage is what the tests' "guest" writes into its memory, at
// guestPageOff (two pages, across an extent boundary of nothing).
var (
	guestPage    = append(bytes.Repeat([]byte("guest memory"), 500), make([]byte, 2*ramPage-6000)...)
	guestPageOff = int64(8 << 20)
)

// writeGuestMemory writes guestPage into the VM's memfd, as the guest
// would through QEMU's shared mapping.
func writeGuestMemory(t *testing.T, h *harness) {
	t.Helper()
	if _, err := h.v.ram.WriteAt(guestPage, guestPageOff); err != nil {
		t.Fatal(err)
	}
	// A page of zeros the guest touched is left out of the image.
	if _, err := h.v.ram.WriteAt(make([]byte, ramPage), 1<<20); err != nil {
		t.Fatal(err)
	}
}

// snapshotFixture is a paused VM (fake machine) with two drives and a NIC,
// ready to be snapshotted.
func snapshotFixture(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, nil)
	os.WriteFile(h.kernel, append([]byte("\x7fELF"), make([]byte, 60)...), 0o644)
	h.configure()
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":32}`)
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	writeGuestMemory(t, h)
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	return h
}

func (h *harness) snapshot(dir string) (state, mem string) {
	h.t.Helper()
	state, mem = filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	h.ok("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, state, mem))
	return state, mem
}

func TestSnapshotCreate(t *testing.T) {
	h := newHarness(t, nil)
	h.configure()
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":32}`)
	dir := t.TempDir()
	state, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	body := fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem)
	h.fault("PUT", "/snapshot/create", body, msgNotBeforeBoot)
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	writeGuestMemory(t, h)
	h.fault("PUT", "/snapshot/create", body, "must be paused first")
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	for _, c := range []struct{ body, want string }{
		{fmt.Sprintf(`{"snapshot_type":"Diff","snapshot_path":%q,"mem_file_path":%q}`, state, mem), "Diff snapshots are not supported by banger-vmm-qemu"},
		{fmt.Sprintf(`{"snapshot_type":"Incremental","snapshot_path":%q,"mem_file_path":%q}`, state, mem), "unknown variant `Incremental`"},
		{fmt.Sprintf(`{"snapshot_path":%q}`, state), "missing field `mem_file_path`"},
		{fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, state), "must be different files"},
		{fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"version":"1.0"}`, state, mem), "unknown field `version`"},
		{fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, filepath.Join(dir, "missing", "vm.mem")), "Create snapshot error"},
	} {
		h.fault("PUT", "/snapshot/create", c.body, c.want)
	}
	// A failed migration leaves no file.
	h.m.migrateStatus = "failed"
	h.fault("PUT", "/snapshot/create", body, "migration failed: fake failure")
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a failed snapshot left %v", entries)
	}
	h.m.migrateStatus = "completed"
	h.ok("PUT", "/snapshot/create", body)
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("snapshot dir holds %v, want the two files only", entries)
	}
	st, err := readState(state)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(mem)
	streamOff := memHeaderLen + st.RAMSize
	if int64(len(raw)) != st.MemFileSize || !bytes.Equal(raw[streamOff:], h.m.stream) || checkMemHeader(raw, st) != nil {
		t.Errorf("memory file: %d bytes (state says %d), header ok %v", len(raw), st.MemFileSize, checkMemHeader(raw, st) == nil)
	}
	// The guest's pages sit at their offsets in the image; zero pages
	// are holes.
	if !bytes.Equal(raw[memHeaderLen+guestPageOff:memHeaderLen+guestPageOff+int64(len(guestPage))], guestPage) || st.RAMBytes != 2*ramPage {
		t.Errorf("memory image: %d non-zero bytes saved, want the two pages written", st.RAMBytes)
	}
	want := snapshotState{
		ID: st.ID, VMMVersion: Version, QEMUVersion: "7.2.22", Created: h.now.UTC(), Accel: AccelTCG, MemFileSize: st.MemFileSize,
		RAMSize: 32 << 20, StreamLength: int64(len(h.m.stream)), RAMCRC: st.RAMCRC, RAMBytes: 2 * ramPage,
		VCPUs: 2, MemMiB: 32, Kernel: h.kernel, Cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda ro",
		Drives: []snapshotDrive{
			{ID: "data", Path: h.dataImg, Cache: "Writeback", Size: 1},
			{ID: "rootfs", Path: h.rootImg, Root: true, ReadOnly: true, Cache: "Unsafe", Size: 1},
		},
		NICs: []snapshotNIC{{ID: "eth0", Tap: "tap0", MAC: "06:00:AC:10:00:02"}},
	}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("state:\n got %+v\nwant %+v", st, want)
	}
	for _, c := range []string{`migrate-set-capabilities {"capabilities":[{"capability":"x-ignore-shared","state":true}]}`, `getfd {"fdname":"banger-snapshot"} +fd`, `migrate {"uri":"fd:banger-snapshot"}`} {
		if !strings.Contains(strings.Join(h.m.recorded(), "\n"), c) {
			t.Errorf("qmp calls lack %q: %q", c, h.m.recorded())
		}
	}
	if got := h.state(); got != "Paused" {
		t.Errorf("state after the snapshot: %q, want Paused", got)
	}
	// A second snapshot replaces both files; QEMU, left in postmigrate by
	// the first, is let run for a moment so that it migrates again.
	n := len(h.m.recorded())
	h.ok("PUT", "/snapshot/create", body)
	if st2, err := readState(state); err != nil || st2.ID == st.ID {
		t.Errorf("second snapshot: %+v, %v", st2, err)
	}
	if got := strings.Join(h.m.recorded()[n:n+3], " "); got != "query-status cont stop" {
		t.Errorf("before the second migration: %q", got)
	}
}

// TestSnapshotLoad loads a snapshot into a fresh VMM with another tap:
// the same machine is rebuilt, the stream fed to the new QEMU, the VM
// paused until resumed; GET /vm/config shows what was restored.
func TestSnapshotLoad(t *testing.T) {
	src := snapshotFixture(t)
	state, mem := src.snapshot(t.TempDir())
	h := newHarness(t, nil)
	h.tap("tap1", 0, 0, 0, 0)
	h.ok("PUT", "/logger", fmt.Sprintf(`{"log_path":%q}`, filepath.Join(h.dir, "vmm.log")))
	h.ok("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`, state, mem))
	if got := h.state(); got != "Paused" {
		t.Fatalf("state after load: %q, want Paused", got)
	}
	if len(h.specs) != 1 {
		t.Fatalf("started %d machines", len(h.specs))
	}
	spec := h.specs[0]
	if !spec.Incoming || spec.Cmdline != "console=ttyS0 reboot=k panic=1 root=/dev/vda ro" || spec.VCPUs != 2 || spec.MemMiB != 32 {
		t.Errorf("spec: %+v", spec)
	}
	// The guest memory came back, in the memfd QEMU maps (descriptor
	// 3); the ELF kernel was replaced by the stand-in, so no kernel file
	// is needed.
	got := make([]byte, len(guestPage))
	h.v.ram.ReadAt(got, guestPageOff)
	if spec.RAMFD != 3 || spec.Files[0] != h.v.ram || !bytes.Equal(got, guestPage) {
		t.Errorf("guest memory: fd %d, content restored %v", spec.RAMFD, bytes.Equal(got, guestPage))
	}
	if spec.Kernel != "/dev/fd/4" {
		t.Errorf("kernel %q, want the stand-in at /dev/fd/4", spec.Kernel)
	}
	if len(spec.Drives) != 2 || spec.Drives[0].ID != "rootfs" || spec.Drives[0].Path != src.rootImg || !spec.Drives[0].ReadOnly || spec.Drives[1].Cache != "Writeback" {
		t.Errorf("drives: %+v", spec.Drives)
	}
	if len(spec.NICs) != 1 || spec.NICs[0].Tap != "tap1" || spec.NICs[0].MAC != "06:00:AC:10:00:02" {
		t.Errorf("nics: %+v", spec.NICs)
	}
	if !bytes.Equal(h.m.loaded, src.m.stream) {
		t.Errorf("the new QEMU read %d bytes, not the saved stream", len(h.m.loaded))
	}
	code, reply := h.do("GET", "/vm/config", "")
	var cfg struct {
		Boot    map[string]any   `json:"boot-source"`
		Machine map[string]any   `json:"machine-config"`
		Drives  []map[string]any `json:"drives"`
		NICs    []map[string]any `json:"network-interfaces"`
	}
	if code != 200 || json.Unmarshal([]byte(reply), &cfg) != nil || cfg.Boot["kernel_image_path"] != "" ||
		cfg.Machine["vcpu_count"] != 2.0 || len(cfg.Drives) != 2 || cfg.NICs[0]["host_dev_name"] != "tap1" {
		t.Errorf("GET /vm/config: %d %s", code, reply)
	}
	// Restored, the VM takes no configuration and no second load.
	h.fault("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, msgNotAfterBoot)
	h.fault("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem), msgNotAfterBoot)
	h.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	if got := h.state(); got != "Running" {
		t.Errorf("state after resume: %q", got)
	}
}

func TestSnapshotLoadResumes(t *testing.T) {
	src := snapshotFixture(t)
	state, mem := src.snapshot(t.TempDir())
	h := newHarness(t, nil)
	h.tap("tap0", 0, 0, 0, 0)
	h.ok("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`, state, mem))
	if got := h.state(); got != "Running" {
		t.Errorf("state: %q, want Running", got)
	}
	if calls := h.m.recorded(); calls[len(calls)-1] != "cont" {
		t.Errorf("last qmp call %q, want cont", calls[len(calls)-1])
	}
}

// TestSnapshotLoadRefused sends loads that must fail with a clear 400;
// after each the VMM is still fresh, and a good load works at the end.
func TestSnapshotLoadRefused(t *testing.T) {
	src := snapshotFixture(t)
	dir := t.TempDir()
	state, mem := src.snapshot(dir)
	_, otherMem := src.snapshot(t.TempDir())
	stateRaw, _ := os.ReadFile(state)
	memRaw, _ := os.ReadFile(mem)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		return p
	}
	truncated := write("truncated.mem", memRaw[:len(memRaw)-10])
	damagedRaw := append([]byte(nil), memRaw...)
	damagedRaw[memHeaderLen+int(guestPageOff)+5] ^= 0xff
	damaged := write("damaged.mem", damagedRaw)
	v2 := write("v2.snap", bytes.Replace(stateRaw, []byte(" v2\n"), []byte(" v3\n"), 1))
	partialState := write("partial.snap", stateRaw[:len(stateRaw)/3])
	h := newHarness(t, nil)
	h.tap("tap0", 0, 0, 0, 0)
	load := func(s, m string, extra string) string {
		return fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}%s}`, s, m, extra)
	}
	tests := []struct{ name, body, want string }{
		{"truncated memory", load(state, truncated, ""), "is partial or altered"},
		{"empty memory", load(state, write("empty.mem", nil), ""), "is partial"},
		{"damaged memory", load(state, damaged, ""), "memory file is damaged"},
		{"memory of another snapshot", load(state, otherMem, ""), "belongs to another snapshot"},
		{"other format version", load(v2, mem, ""), "snapshot format version 3"},
		{"partial state", load(partialState, mem, ""), "incomplete"},
		{"not a state file", load(mem, mem, ""), "not a banger-vmm-qemu snapshot"},
		{"missing state", load(filepath.Join(dir, "nope"), mem, ""), "no such file"},
		{"unknown override", load(state, mem, `,"network_overrides":[{"iface_id":"eth9","host_dev_name":"tap0"}]`), "no such interface"},
		{"override tap missing", load(state, mem, `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap7"}]`), "open tap tap7"},
		{"override twice", load(state, mem, `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap0"},{"iface_id":"eth0","host_dev_name":"tap0"}]`), "overridden twice"},
		{"uffd", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":"/uffd.sock"}}`, state), "Uffd memory backend is not supported"},
		{"both memory fields", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, state, mem, mem), "either `mem_backend` or `mem_file_path` exclusively"},
		{"no memory field", fmt.Sprintf(`{"snapshot_path":%q}`, state), "either `mem_backend` or `mem_file_path` is required"},
		{"clock_realtime", load(state, mem, `,"clock_realtime":true`), "clock_realtime is not supported"},
		{"unknown field", load(state, mem, `,"resume":true`), "unknown field `resume`"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.fault("PUT", "/snapshot/load", tt.body, tt.want)
		})
	}
	h.t = t
	// Drives changed under the snapshot.
	os.WriteFile(src.dataImg, []byte("grown"), 0o644)
	h.fault("PUT", "/snapshot/load", load(state, mem, ""), "drive data: "+src.dataImg+" is 5 bytes, the snapshot was taken with 1")
	os.Remove(src.dataImg)
	h.fault("PUT", "/snapshot/load", load(state, mem, ""), "drive data")
	os.WriteFile(src.dataImg, []byte("x"), 0o644)
	// Another QEMU version: the new QEMU is killed.
	h.m.version = 23
	h.fault("PUT", "/snapshot/load", load(state, mem, ""), "taken with QEMU 7.2.22 and this host runs QEMU 7.2.23")
	if !h.m.killed {
		t.Error("the QEMU of a refused load is still running")
	}
	if len(h.v.drives) != 0 || len(h.v.nics) != 0 || h.v.boot != nil || h.v.configured || h.state() != "Not started" {
		t.Fatalf("refused loads left configuration: drives %v nics %v", h.v.drives, h.v.nics)
	}
	h.m = newFakeMachine()
	h.ok("PUT", "/snapshot/load", load(state, mem, ""))

	// A VMM with any boot-specific configuration refuses a load.
	h2 := newHarness(t, nil)
	h2.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
	h2.fault("PUT", "/snapshot/load", load(state, mem, ""), "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
}
