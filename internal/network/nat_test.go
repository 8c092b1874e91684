package network

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

const (
	vm1 = "1111111111111111111111111111111111111111111111111111111111111111"
	vm2 = "2222222222222222222222222222222222222222222222222222222222222222"
	vm3 = "3333333333333333333333333333333333333333333333333333333333333333"
)

// natRulesText is the state one VM's NAT adds to an empty host.
func natRulesText(short, tap, ip string) (forward, postrouting string) {
	tag := fmt.Sprintf(`"banger:vm=%s:tap=%s:ip=%s"`, short, tap, ip)
	forward = fmt.Sprintf("rule filter/FORWARD -s %s/32 -i br-fc -m comment --comment %s -j ACCEPT\n", ip, tag) +
		fmt.Sprintf("rule filter/FORWARD -d %s/32 -o br-fc -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment %s -j ACCEPT\n", ip, tag)
	postrouting = fmt.Sprintf("rule nat/POSTROUTING -s %s/32 ! -o br-fc -m comment --comment %s -j MASQUERADE\n", ip, tag)
	return forward, postrouting
}

func TestNATEnableDisable(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	// A Docker-like host: FORWARD jumps to Docker's chains first.
	o.Rules["filter/DOCKER-USER"] = nil
	o.Rules["filter/FORWARD"] = []string{"-j DOCKER-USER", "-j DOCKER-FORWARD"}
	m := newTestManager(t, o, 0)
	n1 := NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap0"}

	must(t, m.EnableNAT(ctx, n1))
	fwd, post := natRulesText("111111111111", "bgtap0", "172.16.0.2")
	docker := "rule filter/FORWARD -j DOCKER-USER\nrule filter/FORWARD -j DOCKER-FORWARD\n"
	wantState(t, o, fwd+docker+post+"sysctl net.ipv4.ip_forward=1\n")

	// Enabling again changes nothing and inserts nothing.
	o.Runner().Reset()
	must(t, m.EnableNAT(ctx, n1))
	wantState(t, o, fwd+docker+post+"sysctl net.ipv4.ip_forward=1\n")
	if c := o.Runner().Calls(); len(c) != 0 {
		t.Errorf("second EnableNAT ran %q; want nothing (the rules are known)", c)
	}

	// Disabling needs the tap the rules were made with: another tap
	// matches nothing.
	must(t, m.DisableNAT(ctx, NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap7"}))
	wantState(t, o, fwd+docker+post+"sysctl net.ipv4.ip_forward=1\n")
	o.Runner().Reset()
	must(t, m.DisableNAT(ctx, n1))
	wantState(t, o, docker+"sysctl net.ipv4.ip_forward=1\n")
	if c := o.Runner().Calls(); len(c) != 1 || c[0] != "iptables-restore -w --noflush" {
		t.Errorf("DisableNAT ran %q; want one iptables-restore", c)
	}
	// Disabling what is gone is not an error.
	must(t, m.DisableNAT(ctx, n1))
	wantState(t, o, docker+"sysctl net.ipv4.ip_forward=1\n")
}

func TestNATListAndRepair(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	n1 := NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap0"}
	n2 := NAT{VMID: vm2, GuestIP: "172.16.0.3", Tap: "bgtap1"}
	must(t, m.EnableNAT(ctx, n2))
	must(t, m.EnableNAT(ctx, n1))
	list, err := m.ListNAT(ctx)
	must(t, err)
	want := "[{111111111111 172.16.0.2 bgtap0 false} {222222222222 172.16.0.3 bgtap1 false}]"
	if got := fmt.Sprint(list); got != want {
		t.Errorf("ListNAT = %s, want %s", got, want)
	}

	// Someone deletes one of vm1's rules by hand: ListNAT says the set
	// is partial and EnableNAT completes it.
	tag := "banger:vm=111111111111:tap=bgtap0:ip=172.16.0.2"
	if _, err := o.Runner().Run(ctx, "iptables", "-t", "filter", "-D", "FORWARD", "-s", "172.16.0.2/32", "-i", "br-fc", "-m", "comment", "--comment", tag, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	list, err = m.ListNAT(ctx)
	must(t, err)
	if len(list) != 2 || !list[0].Partial || list[1].Partial {
		t.Errorf("ListNAT after a manual delete = %+v, want vm1 partial", list)
	}
	must(t, m.EnableNAT(ctx, n1))
	list, err = m.ListNAT(ctx)
	must(t, err)
	if got := fmt.Sprint(list); got != want {
		t.Errorf("ListNAT after repair = %s, want %s", got, want)
	}
}

func TestRemoveOrphanRules(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	o.Rules["filter/FORWARD"] = []string{`-m comment --comment "not banger" -j ACCEPT`, `-m comment --comment "banger:nonsense" -j ACCEPT`}
	m := newTestManager(t, o, 0)
	for i, id := range []string{vm1, vm2, vm3} {
		must(t, m.EnableNAT(ctx, NAT{VMID: id, GuestIP: fmt.Sprintf("172.16.0.%d", i+2), Tap: fmt.Sprintf("bgtap%d", i)}))
	}
	// Keep vm2, by full ID; its rules stay, vm1's and vm3's go.
	removed, err := m.RemoveOrphanRules(ctx, []string{vm2})
	must(t, err)
	if got, want := fmt.Sprint(removed), "[{111111111111 172.16.0.2 bgtap0 false} {333333333333 172.16.0.4 bgtap2 false}]"; got != want {
		t.Errorf("removed %s, want %s", got, want)
	}
	fwd, post := natRulesText("222222222222", "bgtap1", "172.16.0.3")
	wantState(t, o, fwd+
		"rule filter/FORWARD -m comment --comment \"not banger\" -j ACCEPT\n"+
		"rule filter/FORWARD -m comment --comment \"banger:nonsense\" -j ACCEPT\n"+
		post+"sysctl net.ipv4.ip_forward=1\n")
	// Short IDs keep too; nothing left to remove.
	removed, err = m.RemoveOrphanRules(ctx, []string{model.ShortID(vm2)})
	if err != nil || len(removed) != 0 {
		t.Errorf("second RemoveOrphanRules = %v, %v; want nothing", removed, err)
	}
	// Keeping nobody removes the rest.
	_, err = m.RemoveOrphanRules(ctx, nil)
	must(t, err)
	list, err := m.ListNAT(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("ListNAT after removing all = %v, %v", list, err)
	}
}

func TestNATInvalid(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	for _, n := range []NAT{
		{VMID: "", GuestIP: "172.16.0.2", Tap: "bgtap0"},
		{VMID: "a:b", GuestIP: "172.16.0.2", Tap: "bgtap0"},
		{VMID: vm1, GuestIP: "172.16.0.300", Tap: "bgtap0"},
		{VMID: vm1, GuestIP: "::1", Tap: "bgtap0"},
		{VMID: vm1, GuestIP: "172.16.0.2", Tap: ""},
		{VMID: vm1, GuestIP: "172.16.0.2", Tap: "tap:0"},
		{VMID: vm1, GuestIP: "172.16.0.2", Tap: `x"y`},
	} {
		if err := m.EnableNAT(ctx, n); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("EnableNAT(%+v) = %v, want EINVALID", n, err)
		}
		if err := m.DisableNAT(ctx, n); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("DisableNAT(%+v) = %v, want EINVALID", n, err)
		}
	}
	if len(o.Runner().Calls()) != 0 {
		t.Errorf("invalid input ran commands: %q", o.Runner().Calls())
	}
}

func TestNATCommandFailure(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	o.Fail["iptables-restore"] = "iptables-restore: line 3 failed"
	n := NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap0"}
	if err := m.EnableNAT(ctx, n); err == nil || !strings.Contains(err.Error(), "line 3 failed") {
		t.Errorf("EnableNAT = %v, want the iptables-restore failure", err)
	}
	// The transaction left nothing half done; a retry makes the set.
	wantState(t, o, "sysctl net.ipv4.ip_forward=1\n")
	must(t, m.EnableNAT(ctx, n))
	list, err := m.ListNAT(ctx)
	must(t, err)
	if len(list) != 1 || list[0].Partial {
		t.Errorf("ListNAT = %+v, want one complete set", list)
	}
	before := o.String()
	// A failure lists the rules and tries once more: one failure is
	// survived, a second is returned.
	o.Fail["iptables-restore"] = "iptables-restore: line 2 failed"
	o.Fail["iptables-restore -w"] = "iptables-restore: line 2 failed"
	if err := m.DisableNAT(ctx, n); err == nil {
		t.Error("DisableNAT with a failing iptables-restore: want error")
	}
	wantState(t, o, before)
	// A Manager that knows no rules yet lists them first.
	m2 := newTestManager(t, o, 0)
	o.Fail["iptables -w -t nat -S"] = "iptables: broken"
	if err := m2.DisableNAT(ctx, n); err == nil {
		t.Error("DisableNAT with a failing list: want error")
	}
	must(t, m2.DisableNAT(ctx, n))
	wantState(t, o, "sysctl net.ipv4.ip_forward=1\n")
	o.Fail["sysctl -w"] = "sysctl: permission denied"
	o.Sysctl["net.ipv4.ip_forward"] = "0"
	if err := m.EnsureIPForward(ctx); err == nil {
		t.Error("EnsureIPForward with a failing sysctl: want error")
	}
}

// TestNATStaleCopy checks a copy of the rules made stale behind banger's
// back: a rule deleted by hand makes the delete transaction fail, and
// the rules are listed and the change planned once more.
func TestNATStaleCopy(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	n1 := NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap0"}
	must(t, m.EnableNAT(ctx, n1))
	o.Rules["nat/POSTROUTING"] = nil
	o.Runner().Reset()
	must(t, m.DisableNAT(ctx, n1))
	wantState(t, o, "sysctl net.ipv4.ip_forward=1\n")
	want := []string{"iptables-restore -w --noflush", "iptables -w -t filter -S FORWARD", "iptables -w -t nat -S POSTROUTING", "iptables-restore -w --noflush"}
	if got := o.Runner().Calls(); !slices.Equal(got, want) {
		t.Errorf("commands:\n%q\nwant %q", got, want)
	}
}

func TestRestoreScript(t *testing.T) {
	n := NAT{VMID: vm1, GuestIP: "172.16.0.2", Tap: "bgtap0"}
	rs := natRules(n, "br-fc")
	got := restoreScript([]ruleOp{{Insert: true, Rule: rs[0]}, {Insert: true, Rule: rs[1]}, {Rule: rs[2]}})
	tag := "banger:vm=111111111111:tap=bgtap0:ip=172.16.0.2"
	want := "*nat\n-I POSTROUTING 1 -s 172.16.0.2/32 ! -o br-fc -m comment --comment " + tag + " -j MASQUERADE\nCOMMIT\n" +
		"*filter\n-I FORWARD 1 -d 172.16.0.2/32 -o br-fc -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment " + tag + " -j ACCEPT\n" +
		"-D FORWARD -s 172.16.0.2/32 -i br-fc -m comment --comment " + tag + " -j ACCEPT\nCOMMIT\n"
	if got != want {
		t.Errorf("restoreScript:\n%s\nwant:\n%s", got, want)
	}
}
