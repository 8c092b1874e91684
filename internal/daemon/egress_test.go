package daemon

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
	"banger/internal/network"
)

// inetRules returns the fake host's rules of a VM's inet chain.
func (e *testEnv) inetRules(vm model.VMRecord) string {
	var out []string
	prefix := "nft inet banger rule vm-" + model.ShortID(vm.ID) + " "
	for _, l := range strings.Split(e.os.String(), "\n") {
		if r, ok := strings.CutPrefix(l, prefix); ok {
			out = append(out, r)
		}
	}
	return strings.Join(out, "\n")
}

func TestEgressCreateAndSetLive(t *testing.T) {
	e := newTestDaemon(t, false)
	p, err := model.ParseEgress("allow=10.99.0.1,allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "lim", ImageName: "base", Egress: &p}, api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Spec.Egress.String(); got != "allow=10.99.0.1/32,allowed.test" {
		t.Errorf("created with egress %q", got)
	}
	vm := e.vm(t, "lim")
	short := model.ShortID(vm.ID)
	if got := e.inetRules(vm); !strings.Contains(got, "ip daddr @vm-"+short+"-allow ct mark set") || !strings.HasSuffix(got, "\ndrop") {
		t.Errorf("allow rules:\n%s", got)
	}
	if st := e.os.String(); !strings.Contains(st, "set vm-"+short+"-allow { type ipv4_addr ; flags interval ; } = 10.99.0.1\n") {
		t.Errorf("allow set:\n%s", st)
	}

	// Bad input changes nothing.
	before := e.os.String()
	for _, bad := range []model.EgressPolicy{{Mode: "closed"}, {Mode: model.EgressAllow}, {Mode: model.EgressAllow, Allow: []string{"10.0.0.1/8"}}, {Mode: model.EgressNone, Allow: []string{"x.test"}}} {
		bad := bad
		if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "lim", Egress: &bad}); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("set egress %+v: %v; want EINVALID", bad, err)
		}
	}
	if got := e.os.String(); got != before {
		t.Errorf("a refused set changed the host:\n%s", got)
	}
	if got := e.vm(t, "lim").Spec.Egress.String(); got != "allow=10.99.0.1/32,allowed.test" {
		t.Errorf("a refused set changed the spec: %q", got)
	}

	// Live: none, then open; the counter survives the changes.
	e.os.Nft["inet banger"].Counters["vm-"+short+"-denied"].Packets = 3
	none := model.EgressPolicy{Mode: model.EgressNone}
	v, err = e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "lim", Egress: &none})
	if err != nil {
		t.Fatal(err)
	}
	if v.Spec.Egress.String() != "none" || e.vm(t, "lim").Spec.Egress.String() != "none" {
		t.Errorf("after set none: view %q, stored %q", v.Spec.Egress, e.vm(t, "lim").Spec.Egress)
	}
	if got := e.inetRules(vm); !strings.HasPrefix(got, "ct direction reply accept\nip daddr . meta l4proto") {
		t.Errorf("none rules:\n%s", got)
	}
	st, err := e.d.VMStats(e.ctx, "lim")
	if err != nil || st.EgressDenied != 3 {
		t.Errorf("VMStats egress denied = %d, %v; want 3", st.EgressDenied, err)
	}
	open := model.EgressPolicy{Mode: model.EgressOpen}
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "lim", Egress: &open}); err != nil {
		t.Fatal(err)
	}
	// Open: no chain of its own; its guests element accepts.
	if got := e.inetRules(vm); got != "" || !strings.Contains(e.os.String(), `comment "vm-`+short+`" : accept`) {
		t.Errorf("open rules:\n%s\nhost:\n%s", got, e.os.String())
	}

	// Stopped: the policy is stored and the filter is gone; the next
	// start uses the new policy.
	if _, err := e.d.StopVM(e.ctx, "lim", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if st := e.os.String(); strings.Contains(st, short) {
		t.Errorf("filter left after stop:\n%s", st)
	}
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "lim", Egress: &none}); err != nil {
		t.Fatal(err)
	}
	if st := e.os.String(); strings.Contains(st, short) {
		t.Errorf("a set on a stopped VM made a filter:\n%s", st)
	}
	if _, err := e.d.StartVM(e.ctx, "lim", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if got := e.inetRules(vm); !strings.HasPrefix(got, "ct direction reply accept\nip daddr . meta l4proto") {
		t.Errorf("restart with none:\n%s", got)
	}
}

func TestEgressDefaultsAndRefusedCreate(t *testing.T) {
	e := newTestDaemon(t, false)
	v := e.create(t, "plain", false)
	if v.Spec.Egress.Mode != model.EgressOpen {
		t.Errorf("default egress %+v", v.Spec.Egress)
	}
	bad := model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"exa mple.com"}}
	if _, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "bad", ImageName: "base", Egress: &bad, NoStart: true}, api.NoProgress); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("create with bad egress: %v", err)
	}
	if _, err := e.d.store.GetVM(e.ctx, "bad"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("a refused create left a row: %v", err)
	}
	// A VM stored before egress policies existed shows as open.
	old := e.vm(t, "plain")
	old.Spec.Egress = model.EgressPolicy{}
	if err := e.d.store.UpdateVM(e.ctx, old); err != nil {
		t.Fatal(err)
	}
	if v, err := e.d.GetVM(e.ctx, "plain"); err != nil || v.Spec.Egress.Mode != model.EgressOpen {
		t.Errorf("old row shows egress %+v, %v", v.Spec.Egress, err)
	}
	// The config's default applies to new VMs.
	e.d.cfg.VMDefaults.Egress = model.EgressPolicy{Mode: model.EgressNone}
	if v := e.create(t, "closed", false); v.Spec.Egress.Mode != model.EgressNone {
		t.Errorf("vm_defaults.egress not applied: %+v", v.Spec.Egress)
	}
}

func TestReconcileRemovesOrphanFilters(t *testing.T) {
	e := newTestDaemon(t, false)
	// A filter left by a VM that no longer exists (a crash mid-rm).
	stray := `add element bridge banger taps { "bgtap7" comment "vm-0123456789ab" }
add element bridge banger ident { "bgtap7" . 06:00:ac:10:00:09 . 172.16.0.9 comment "vm-0123456789ab" }
add chain inet banger vm-0123456789ab
add rule inet banger vm-0123456789ab drop
add element inet banger guests { 172.16.0.9 comment "vm-0123456789ab" : jump vm-0123456789ab }
add counter inet banger vm-0123456789ab-denied
`
	if _, err := e.os.Runner().RunStdin(context.Background(), strings.NewReader(stray), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	want(t, "orphan filter removed", e.hostState(), idleHost)

	// A flushed ruleset (a firewall reload) gets the base back.
	e.os.Nft = map[string]*fakeos.NftTable{}
	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	want(t, "base filter remade", e.hostState(), idleHost)
}

func TestPlanFilters(t *testing.T) {
	alive := obsVM("alive", model.VMStateRunning, false)
	whole := obsVM("whole", model.VMStateRunning, false)
	busy := obsVM("busy", model.VMStateCreated, false)
	dead := obsVM("dead", model.VMStateRunning, false)
	stopped := obsVM("stopped", model.VMStateStopped, false)
	got := planFilters([]vmObservation{
		{VM: alive, PID: 1},
		{VM: whole, PID: 2, FilterFull: true},
		{VM: busy, Busy: true},
		{VM: dead},
		{VM: stopped, FilterFull: true},
	})
	want := filterPlan{Keep: []string{alive.ID, whole.ID, busy.ID}, Restore: []string{alive.ID}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("planFilters = %+v; want %+v", got, want)
	}
}

func TestDeniedLog(t *testing.T) {
	l := newDeniedLog()
	if first, full := l.note("a", "10.0.0.1:80/tcp"); !first || full {
		t.Error("first destination not reported")
	}
	if first, _ := l.note("a", "10.0.0.1:80/tcp"); first {
		t.Error("second report of the same destination")
	}
	if first, _ := l.note("b", "10.0.0.1:80/tcp"); !first {
		t.Error("another VM's destination was taken as seen")
	}
	for i := 1; i < maxLoggedDestinations; i++ {
		if first, full := l.note("a", fmt.Sprintf("10.0.1.%d:80/tcp", i)); !first || full {
			t.Fatalf("destination %d: %v %v", i, first, full)
		}
	}
	if first, full := l.note("a", "10.0.2.1:80/tcp"); first || !full {
		t.Errorf("one past the limit: first %v full %v; want the one 'full' report", first, full)
	}
	if first, full := l.note("a", "10.0.2.2:80/tcp"); first || full {
		t.Error("reported beyond the limit")
	}
	l.forget("a")
	if first, _ := l.note("a", "10.0.0.1:80/tcp"); !first {
		t.Error("a new run did not start over")
	}
	var nilLog *deniedLog
	nilLog.forget("a")
}

func TestGuestNameserver(t *testing.T) {
	tests := []struct {
		listen string
		dns    bool
		want   string
	}{
		{"", true, "172.16.0.1"},
		{"172.16.0.1:53", true, "172.16.0.1"},
		{"0.0.0.0:53", true, "172.16.0.1"},
		{"127.0.0.1:53", true, "9.9.9.9"},
		{"172.16.0.1:5353", true, "9.9.9.9"},
		{"off", false, "9.9.9.9"},
	}
	for _, tt := range tests {
		d := &Daemon{cfg: model.DaemonConfig{BridgeIP: "172.16.0.1", DefaultDNS: "9.9.9.9", DNSListen: tt.listen}}
		if tt.dns {
			srv, err := network.NewDNSServer("banger", nil)
			if err != nil {
				t.Fatal(err)
			}
			d.dns = srv
		}
		if got := d.guestNameserver(); got != tt.want {
			t.Errorf("dns_listen %q: nameserver %s; want %s", tt.listen, got, tt.want)
		}
	}
}

// TestFilterPlanKeepsVMsCreatedMeanwhile: a VM whose row appeared after
// reconcile read the rows may be starting with its filter made; reconcile
// must not take it for an orphan.
func TestFilterPlanKeepsVMsCreatedMeanwhile(t *testing.T) {
	e := newTestDaemon(t, false)
	v, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "fresh", ImageName: "base"}, api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	chain := `comment "vm-` + model.ShortID(v.ID) + `"`
	observe := func() hostObservation {
		infos, base, err := e.d.net.FilterStatus(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return hostObservation{Filters: infos, FilterBase: base, FiltersSeen: true}
	}
	if err := e.d.applyFilterPlan(e.ctx, filterPlan{}, nil, observe()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.os.String(), chain) {
		t.Fatal("the filter of a VM reconcile had not seen was removed")
	}
	// Seen, and not live: an orphan.
	if err := e.d.applyFilterPlan(e.ctx, filterPlan{}, []vmObservation{{VM: v.VMRecord}}, observe()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.os.String(), chain) {
		t.Error("the filter of a VM reconcile saw as not live was kept")
	}
}
