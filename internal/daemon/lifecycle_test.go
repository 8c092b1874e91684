package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
	"banger/internal/proc"
	"banger/internal/storage"
)

// fakeBooter stands in for the VMM in unit tests: it "launches" a fake
// VMM process (fakeVMMs), or fails at the step named by failAt with fail.
type fakeBooter struct {
	vmms   *fakeVMMs
	fail   error
	failAt string // "launch" (the default), "configure", "start", "ready", or fakesnap_test.go's
}

func (fakeBooter) check() error { return nil }

func (b fakeBooter) failed(phase string) error {
	at := b.failAt
	if at == "" {
		at = "launch"
	}
	if b.fail != nil && at == phase {
		return b.fail
	}
	return nil
}

func (b fakeBooter) launch(ctx context.Context, s *startRun) error {
	if err := b.failed("launch"); err != nil {
		return err
	}
	pid, err := b.vmms.start(s.vm)
	if err != nil {
		return err
	}
	s.h.PID = pid
	if s.restore != nil {
		// In process, the fake VMM reads the saved files by path.
		s.restore.vmmState, s.restore.vmmMem = s.restore.state, s.restore.mem
	}
	return nil
}

func (b fakeBooter) kill(ctx context.Context, s *startRun) {
	if s.h.PID > 0 {
		b.vmms.exit(s.h.PID)
	}
	s.h.PID = 0
}

func (b fakeBooter) configure(ctx context.Context, s *startRun) error {
	if s.vm.Runtime.SSHHostKey == "" || !s.vm.Runtime.HostKeyInstalled {
		return fmt.Errorf("fake boot: vm %s has no host key on its system disk", s.vm.Name)
	}
	return b.failed("configure")
}

func (b fakeBooter) instanceStart(ctx context.Context, s *startRun) error {
	return b.failed("start")
}

func (b fakeBooter) waitReady(ctx context.Context, s *startRun) error {
	return b.failed("ready")
}

type testEnv struct {
	d    *Daemon
	os   *fakeos.OS
	vmms *fakeVMMs
	ctx  context.Context
	// owners records which uid each disk was given to.
	owners map[string]int
}

// newTestDaemon is a daemon on a fake host: commands go to fakeos, the VMM
// is fakeBooter. With dm set, the host has device-mapper.
func newTestDaemon(t *testing.T, dm bool) *testEnv {
	t.Helper()
	return newTestDaemonWith(t, dm, nil)
}

// newTestDaemonWith is newTestDaemon with tweak applied to the
// configuration and storage options before the daemon is made.
func newTestDaemonWith(t *testing.T, dm bool, tweak func(dir string, cfg *model.DaemonConfig, sopts *storage.Options)) *testEnv {
	t.Helper()
	o := fakeos.New()
	t.Cleanup(func() {
		if u := o.Runner().Unexpected(); len(u) > 0 {
			t.Errorf("commands the fake does not know: %q", u)
		}
	})
	// A short dir: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "bgd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	vmms := newFakeVMMs(filepath.Join(dir, "proc"), "/bin/true")
	os.MkdirAll(vmms.root, 0o755)
	cfg := model.DaemonConfig{
		FirecrackerBin: "/bin/true",
		StateDir:       filepath.Join(dir, "state"), BridgeName: "br-fc", BridgeIP: "172.16.0.1", CIDR: "24",
		TapPoolSize: 2, DefaultDNS: "1.1.1.1", DNSDomain: "banger", DNSListen: "off",
		StatsPollInterval: time.Hour, StaleSweepInterval: time.Hour, BootTimeout: time.Minute, StopTimeout: time.Second,
		SSHKeyPath: filepath.Join(dir, "key"),
		VMDefaults: model.VMDefaultsOverride{VCPUCount: 1, MemoryMiB: 256, SystemOverlaySizeByte: 64 << 20, WorkDiskSizeBytes: 64 << 20},
	}
	// Disks are given to each VM's uid; without root, the test records it.
	// Resumes run side by side (a fork's children): the map is shared.
	owners := map[string]int{}
	var ownersMu sync.Mutex
	sopts := storage.Options{Strategy: storage.StrategyCopy, Chown: func(f *os.File, uid, _ int) error {
		ownersMu.Lock()
		defer ownersMu.Unlock()
		owners[f.Name()] = uid
		return nil
	}}
	if dm {
		// dm nodes are files of the test, with an ext4 superblock as the
		// fake e2fsprogs want it.
		devs := filepath.Join(dir, "dev")
		os.MkdirAll(devs, 0o755)
		sopts.OpenDevice = func(p string, flag int, perm os.FileMode) (*os.File, error) {
			if name, ok := strings.CutPrefix(p, "/dev/mapper/"); ok {
				if o.DM[name] == nil {
					return nil, os.ErrNotExist
				}
				p = filepath.Join(devs, name)
				if _, err := os.Stat(p); err != nil {
					os.WriteFile(p, make([]byte, 64<<10), 0o600)
					fakeos.WriteExt4Magic(p)
				}
			}
			return os.OpenFile(p, flag, perm)
		}
		sopts.Strategy = storage.StrategyDMSnapshot
		sopts.Exists = func(p string) bool {
			switch {
			case p == "/dev/mapper/control", p == "/sys/class/misc/device-mapper":
				return true
			case strings.HasPrefix(p, "/dev/mapper/"):
				return o.DM[strings.TrimPrefix(p, "/dev/mapper/")] != nil
			}
			_, err := os.Stat(p)
			return err == nil
		}
	}
	if tweak != nil {
		tweak(dir, &cfg, &sopts)
	}
	ctx := context.Background()
	d, err := New(ctx, Options{
		Config: cfg, Logger: slog.New(slog.DiscardHandler), Runner: o.Runner(), Storage: sopts,
		Proc: proc.Reader{Root: vmms.root}, OpenProc: vmms.open,
		VMMClient: func(sock string, _ int) *firecracker.Client { return firecracker.NewClient(sock) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	d.boot = fakeBooter{vmms: vmms}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// An image whose rootfs the fake e2fsprogs take for ext4, in the
	// state dir like every image's files.
	imgID := strings.Repeat("a", 64)
	imgDir := d.layout.imageDir(imgID)
	os.MkdirAll(imgDir, 0o700)
	rootfs := filepath.Join(imgDir, "rootfs.ext4")
	if err := os.WriteFile(rootfs, make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fakeos.WriteExt4Magic(rootfs); err != nil {
		t.Fatal(err)
	}
	now := model.Now()
	img := model.Image{ID: imgID, Name: "base", ArtifactDir: imgDir, RootfsPath: rootfs, KernelPath: filepath.Join(imgDir, "vmlinux"), CreatedAt: now, UpdatedAt: now}
	if err := d.store.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	return &testEnv{d: d, os: o, vmms: vmms, ctx: ctx, owners: owners}
}

// baseFilter are the lines of the fake host's state that banger's base
// packet filter makes (network.EnsureFilter); its sets and map are
// printed with their elements, which are per VM.
var baseFilter = []string{
	`nft bridge banger chain guest`,
	`nft bridge banger rule guest arp htype != 1 drop`,
	`nft bridge banger rule guest arp ptype != ip drop`,
	`nft bridge banger rule guest arp hlen != 6 drop`,
	`nft bridge banger rule guest arp plen != 4 drop`,
	`nft bridge banger rule guest iifname . ether saddr . arp saddr ip != @ident drop`,
	`nft bridge banger rule guest iifname . arp saddr ether . arp saddr ip != @ident drop`,
	`nft bridge banger rule guest ether type arp accept`,
	`nft bridge banger rule guest iifname . ether saddr . ip saddr != @ident drop`,
	`nft bridge banger rule guest udp sport 67 drop`,
	`nft bridge banger rule guest ether type ip accept`,
	`nft bridge banger rule guest drop`,
	`nft bridge banger chain prerouting { type filter hook prerouting priority -300 ; policy accept ; }`,
	`nft bridge banger rule prerouting iifname "bgtap*" jump guest`,
	`nft bridge banger rule prerouting iifname @taps jump guest`,
	`nft inet banger chain forward { type filter hook forward priority -10 ; policy accept ; }`,
	`nft inet banger rule forward iifname "br-fc" oifname "br-fc" drop`,
	`nft inet banger rule forward iifname "br-fc" ip saddr vmap @guests`,
	`nft inet banger rule forward iifname "br-fc" drop`,
	`nft inet banger chain guest-in`,
	`nft inet banger rule guest-in ct state established,related accept`,
	`nft inet banger rule guest-in ip daddr 172.16.0.1 udp dport 53 accept`,
	`nft inet banger rule guest-in ip daddr 172.16.0.1 tcp dport 53 accept`,
	`nft inet banger rule guest-in drop`,
	`nft inet banger chain input { type filter hook input priority -10 ; policy accept ; }`,
	`nft inet banger rule input iifname "br-fc" jump guest-in`,
}

// Empty sets and map of the base filter.
const (
	emptyTaps   = `nft bridge banger set taps { type ifname ; }`
	emptyIdent  = `nft bridge banger set ident { type ifname . ether_addr . ipv4_addr ; }`
	emptyGuests = `nft inet banger map guests { type ipv4_addr : verdict ; }`
)

// hostState is the fake host's state with temp paths made stable, and the
// base filter, when all of it is there, as one last line "nft base
// filter" (empty maps included, so a VM's map elements show).
func (e *testEnv) hostState() string {
	s := strings.ReplaceAll(e.os.String(), e.d.cfg.StateDir, "$STATE")
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	base := map[string]bool{emptyTaps: true, emptyIdent: true, emptyGuests: true}
	for _, l := range baseFilter {
		base[l] = true
	}
	var kept []string
	found := 0
	for _, l := range lines {
		if base[l] {
			found++
			continue
		}
		kept = append(kept, l)
	}
	if found >= len(baseFilter) {
		kept = append(kept, "nft base filter")
	} else if found > 0 {
		kept = append(kept, fmt.Sprintf("nft base filter: only %d of its %d lines", found, len(baseFilter)))
	}
	return strings.Join(kept, "\n") + "\n"
}

// vmFilter is the fake host's state of a running VM's filter with egress
// open, on its tap and address, in the order the fake prints: its
// elements of the base sets and map, nothing else.
func vmFilter(short, tap, ip, mac string) (bridge, inet string) {
	c := ` comment "vm-` + short + `"`
	b := "nft bridge banger set ident { type ifname . ether_addr . ipv4_addr ; } = " + tap + " . " + mac + " . " + ip + c + "\n" +
		"nft bridge banger set taps { type ifname ; } = " + tap + c + "\n"
	i := "nft inet banger map guests { type ipv4_addr : verdict ; } = " + ip + c + " : accept\n"
	return b, i
}

func (e *testEnv) create(t *testing.T, name string, nat bool) model.VMRecord {
	t.Helper()
	v, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: name, ImageName: "base", NATEnabled: nat, NoStart: true}, api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	return v.VMRecord
}

func (e *testEnv) vm(t *testing.T, name string) model.VMRecord {
	t.Helper()
	vm, err := e.d.store.GetVM(e.ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func want(t *testing.T, step, got, want string) {
	t.Helper()
	if strings.TrimSpace(got) != strings.TrimSpace(want) {
		t.Errorf("%s: host state\n--- got\n%s\n--- want\n%s", step, got, want)
	}
}

const idleHost = `
link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
nft base filter
`

// hostWith is the fake host's state with exactly these taps and no rules
// or devices, after NAT has turned ip_forward on.
func hostWith(taps ...string) string {
	var b strings.Builder
	b.WriteString("\n")
	for _, t := range taps {
		b.WriteString("link " + t + " tap master=br-fc up isolated\n")
	}
	b.WriteString("link br-fc bridge up 172.16.0.1/24\nsysctl net.ipv4.ip_forward=1\nnft base filter\n")
	return b.String()
}

func TestStartStopKillNATOnTheFakeHostDM(t *testing.T) {
	e := newTestDaemon(t, true)
	want(t, "daemon started", e.hostState(), idleHost)

	dev := e.create(t, "dev", true)
	short := model.ShortID(dev.ID)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	rules := `rule filter/FORWARD -s 172.16.0.2/32 -i br-fc -m comment --comment "banger:vm=` + short + `:tap=bgtap0:ip=172.16.0.2" -j ACCEPT
rule filter/FORWARD -d 172.16.0.2/32 -o br-fc -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "banger:vm=` + short + `:tap=bgtap0:ip=172.16.0.2" -j ACCEPT
rule nat/POSTROUTING -s 172.16.0.2/32 ! -o br-fc -m comment --comment "banger:vm=` + short + `:tap=bgtap0:ip=172.16.0.2" -j MASQUERADE
`
	devices := `loop /dev/loop0 ` + "$STATE/images/aaaaaaaaaaaa/rootfs.ext4" + ` ro
loop /dev/loop1 $STATE/vms/` + short + `/system.img
dm banger-` + short + ` 0 65536 snapshot /dev/loop0 /dev/loop1 P 8
`
	// The running VM holds bgtap0; the pool was refilled to two idle taps.
	// Its filter: the tap sends only as the VM; egress open.
	bridgeFilter, inetFilter := vmFilter(short, "bgtap0", "172.16.0.2", "06:00:ac:10:00:02")
	running := `
link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
` + rules + `sysctl net.ipv4.ip_forward=1
` + devices + bridgeFilter + inetFilter + "nft base filter\n"
	got := strings.ReplaceAll(e.hostState(), filepath.Dir(e.d.cfg.StateDir), "$STATE/..")
	want(t, "started with nat", got, running)
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateRunning || vm.Runtime.TapDevice != "bgtap0" || vm.Runtime.OverlayStrategy != "dm-snapshot" {
		t.Errorf("after start: state %s tap %q strategy %q", vm.State, vm.Runtime.TapDevice, vm.Runtime.OverlayStrategy)
	}
	if p, _ := e.d.net.Pool(); strings.Join(p, ",") != "bgtap1,bgtap2" {
		t.Errorf("free pool %v; want [bgtap1 bgtap2]", p)
	}

	// NAT off and on again, live.
	off := false
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "dev", NATEnabled: &off}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.hostState(), "\nrule ") {
		t.Errorf("nat off left rules:\n%s", e.hostState())
	}
	on := true
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "dev", NATEnabled: &on}); err != nil {
		t.Fatal(err)
	}
	got = strings.ReplaceAll(e.hostState(), filepath.Dir(e.d.cfg.StateDir), "$STATE/..")
	want(t, "nat on again", got, running)

	// Stop: rules, dm and loops go; the pool is full, so the VM's tap is
	// deleted rather than kept.
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	want(t, "stopped", e.hostState(), hostWith("bgtap1", "bgtap2"))
	vm = e.vm(t, "dev")
	if vm.State != model.VMStateStopped || vm.Runtime.TapDevice != "" {
		t.Errorf("after stop: state %s tap %q", vm.State, vm.Runtime.TapDevice)
	}
	if _, err := os.Stat(handlesPath(vm.Runtime.VMDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("handles.json left after stop: %v", err)
	}

	// Start again and kill: the same cleanup.
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.KillVM(e.ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	// The second run took bgtap1 and refilled with bgtap0.
	want(t, "killed", e.hostState(), hostWith("bgtap0", "bgtap2"))

	// rm leaves nothing, not even the VM dir.
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.Runtime.VMDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vm dir left after rm: %v", err)
	}
}

func TestStartCopyStrategyAndSecondVMGetsNextTap(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "one", false)
	e.create(t, "two", false)
	e.create(t, "three", false)
	for _, n := range []string{"one", "two", "three"} {
		if _, err := e.d.StartVM(e.ctx, n, api.NoProgress); err != nil {
			t.Fatal(err)
		}
	}
	// Each start takes an idle tap and refills the pool: three in use,
	// two idle; no rules without NAT.
	if got, w := e.vm(t, "three").Runtime.TapDevice, "bgtap2"; got != w {
		t.Errorf("third tap %q; want %q", got, w)
	}
	if got := e.hostState(); !strings.HasPrefix(got, `link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link bgtap3 tap master=br-fc up isolated
link bgtap4 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`) || !strings.Contains(got, "nft bridge banger set taps { type ifname ; } = bgtap0 comment \"vm-") ||
		strings.Count(got, " : accept") != 3 || !strings.HasSuffix(got, "nft base filter\n") {
		t.Errorf("three running: host state\n%s", got)
	}
	if got := e.vm(t, "one").Runtime.OverlayStrategy; got != "copy" {
		t.Errorf("strategy %q", got)
	}
	for _, n := range []string{"one", "two", "three"} {
		if _, err := e.d.StopVM(e.ctx, n, api.NoProgress); err != nil {
			t.Fatal(err)
		}
	}
	// The pool keeps two idle taps; released ones beyond it are deleted.
	want(t, "all stopped", e.hostState(), strings.Replace(hostWith("bgtap3", "bgtap4"), "ip_forward=1", "ip_forward=0", 1))
}

func TestFailedStartUndoesEverything(t *testing.T) {
	e := newTestDaemon(t, true)
	e.create(t, "bad", true)
	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("vmm exploded"), failAt: "configure"}
	_, err := e.d.StartVM(e.ctx, "bad", api.NoProgress)
	if err == nil || !strings.Contains(err.Error(), "vmm exploded") {
		t.Fatalf("start error %v", err)
	}
	// Only ip_forward (a host setting, not a leak) differs from idle:
	// the failure came after the VMM launch and the capabilities, both
	// undone, and the undone start gave its tap back before any refill.
	want(t, "after failed start", e.hostState(), strings.Replace(idleHost, "ip_forward=0", "ip_forward=1", 1))
	e.vmms.mu.Lock()
	if len(e.vmms.proc) == 0 {
		t.Error("the failed start launched no vmm; it failed at configure")
	}
	for pid, v := range e.vmms.proc {
		select {
		case <-v.exited:
		default:
			t.Errorf("fake vmm %d still runs after the failed start", pid)
		}
	}
	e.vmms.mu.Unlock()
	vm := e.vm(t, "bad")
	if vm.State != model.VMStateError || !strings.Contains(vm.Runtime.LastError, "vmm exploded") || vm.Runtime.TapDevice != "" {
		t.Errorf("after failed start: state %s error %q tap %q", vm.State, vm.Runtime.LastError, vm.Runtime.TapDevice)
	}
	// It starts fine once the cause is gone.
	e.d.boot = fakeBooter{vmms: e.vmms}
	if _, err := e.d.StartVM(e.ctx, "bad", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if vm := e.vm(t, "bad"); vm.State != model.VMStateRunning || vm.Runtime.LastError != "" {
		t.Errorf("restart after failure: %s %q", vm.State, vm.Runtime.LastError)
	}
}

// TestFailedCapabilityUndoesAll makes NAT fail while the filter starts
// beside it: the start fails with NAT's error, and the filter, the VMM
// and the tap are all undone.
func TestFailedCapabilityUndoesAll(t *testing.T) {
	e := newTestDaemon(t, true)
	e.create(t, "bad", true)
	// A failure is retried once after a listing; both attempts fail.
	e.os.Fail["iptables-restore"] = "iptables-restore: line 2 failed"
	e.os.Fail["iptables-restore -w"] = "iptables-restore: line 2 failed"
	_, err := e.d.StartVM(e.ctx, "bad", api.NoProgress)
	if err == nil || !strings.Contains(err.Error(), "nat: ") || !strings.Contains(err.Error(), "line 2 failed") {
		t.Fatalf("start error %v", err)
	}
	want(t, "after the failed capability", e.hostState(), strings.Replace(idleHost, "ip_forward=0", "ip_forward=1", 1))
	e.vmms.mu.Lock()
	for pid, v := range e.vmms.proc {
		select {
		case <-v.exited:
		default:
			t.Errorf("fake vmm %d still runs after the failed start", pid)
		}
	}
	e.vmms.mu.Unlock()
	if _, err := e.d.StartVM(e.ctx, "bad", api.NoProgress); err != nil {
		t.Fatalf("start once iptables works: %v", err)
	}
}

// TestNATCleanupFallsBackToRuntimeTapDevice is the seed's scenario: the
// handle cache and handles.json are lost, and NAT teardown still finds the
// tap through Runtime.TapDevice.
func TestNATCleanupFallsBackToRuntimeTapDevice(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	e.d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	if _, ok := e.d.handles.get(vm.ID); ok {
		t.Fatal("cache not cleared")
	}
	nat := natCapability{net: e.d.net}
	e.os.Runner().Reset()
	if err := nat.cleanup(e.ctx, vm, vmHandles{}); err != nil {
		t.Fatal(err)
	}
	// The three rules go in one iptables-restore transaction.
	restores := 0
	for _, c := range e.os.Runner().Calls() {
		if strings.HasPrefix(c, "iptables-restore ") {
			restores++
		}
	}
	if restores != 1 {
		t.Errorf("cleanup ran %d iptables-restore; want 1\n%s", restores, strings.Join(e.os.Runner().Calls(), "\n"))
	}
	if strings.Contains(e.hostState(), "\nrule ") {
		t.Errorf("rules left:\n%s", e.hostState())
	}

	// With neither the cache nor Runtime.TapDevice there is no tap to
	// name, and cleanup declines instead of guessing.
	vm.Runtime.TapDevice = ""
	e.os.Runner().Reset()
	if err := nat.cleanup(e.ctx, vm, vmHandles{}); err != nil {
		t.Fatal(err)
	}
	if n := len(e.os.Runner().Calls()); n != 0 {
		t.Errorf("cleanup without any tap ran %d commands", n)
	}
}

// TestStopAfterHandleLossUsesRuntimeTap: a daemon that lost its cache
// (restart) and handles.json still releases the tap and removes the rules.
func TestStopAfterHandleLossUsesRuntimeTap(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	e.d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	want(t, "stopped after handle loss", e.hostState(), hostWith("bgtap1", "bgtap2"))
}

func TestReconcileCleansDeadRunningVMAndOrphans(t *testing.T) {
	e := newTestDaemon(t, false)
	e.d.noWatch = true
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	// The VMM dies unwatched; a stray dir exists.
	e.vmms.exit(e.pid(t, "dev"))
	stray := filepath.Join(e.d.layout.vmsDir(), "stray")
	os.MkdirAll(stray, 0o700)
	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateStopped || vm.Runtime.TapDevice != "" || vm.Runtime.LastError == "" {
		t.Errorf("after reconcile: %s tap %q err %q", vm.State, vm.Runtime.TapDevice, vm.Runtime.LastError)
	}
	want(t, "reconciled", e.hostState(), hostWith("bgtap1", "bgtap2"))
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stray dir kept: %v", err)
	}
}

// TestHostKeyMadeByTheDaemon: the daemon makes the VM's host key, puts
// it on the system disk before the first boot with debugfs running as the
// VM's uid, gives the disks to that uid, and installs the key again on a
// fresh system disk after reset-system, without a new key.
func TestHostKeyMadeByTheDaemon(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	const uid = defaultVMMUIDBase + 2 // 172.16.0.2 in 172.16.0.0/24
	if vm.Runtime.VMMUID != uid || !vm.Runtime.HostKeyInstalled || !strings.HasPrefix(vm.Runtime.SSHHostKey, "ssh-ed25519 ") {
		t.Fatalf("runtime: uid %d installed %v key %q", vm.Runtime.VMMUID, vm.Runtime.HostKeyInstalled, vm.Runtime.SSHHostKey)
	}
	if got := strings.TrimSpace(e.os.HostKeys[vm.Runtime.SystemOverlay]); got != vm.Runtime.SSHHostKey {
		t.Errorf("key on the system disk %q; want %q", got, vm.Runtime.SSHHostKey)
	}
	for _, p := range []string{vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath} {
		if e.owners[p] != uid {
			t.Errorf("%s given to uid %d; want %d", p, e.owners[p], uid)
		}
	}
	n := 0
	for _, c := range e.os.Runner().Calls() {
		if strings.Contains(c, "debugfs ") {
			n++
			if !strings.HasPrefix(c, fmt.Sprintf("[as %d:%d, fd 3=", uid, uid)) {
				t.Errorf("not run as the VM's uid: %s", c)
			}
		}
	}
	if n == 0 {
		t.Fatal("debugfs never ran")
	}
	fi, err := os.Stat(hostKeyPath(vm.Runtime.VMDir))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key file: %v %v", fi, err)
	}
	key := vm.Runtime.SSHHostKey

	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.ResetSystem(e.ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if vm := e.vm(t, "dev"); vm.Runtime.HostKeyInstalled {
		t.Error("a fresh system disk is marked as having the host key")
	}
	delete(e.os.HostKeys, vm.Runtime.SystemOverlay)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm = e.vm(t, "dev")
	if vm.Runtime.SSHHostKey != key || strings.TrimSpace(e.os.HostKeys[vm.Runtime.SystemOverlay]) != key {
		t.Errorf("after reset-system: key %q, on disk %q; want the same key %q", vm.Runtime.SSHHostKey, e.os.HostKeys[vm.Runtime.SystemOverlay], key)
	}
}
