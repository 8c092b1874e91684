package network

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

var testCfg = Config{BridgeName: "br-fc", BridgeIP: "172.16.0.1", CIDR: "24", TapPrefix: "bgtap", DNSDomain: "banger"}

func TestBaseScript(t *testing.T) {
	want := `add table bridge banger
add map bridge banger ports { type ifname : verdict ; }
add chain bridge banger prerouting { type filter hook prerouting priority -300 ; policy accept ; }
flush chain bridge banger prerouting
add rule bridge banger prerouting iifname vmap @ports
add rule bridge banger prerouting iifname "bgtap*" drop
add table inet banger
add map inet banger guests { type ipv4_addr : verdict ; }
add chain inet banger guest-in
add chain inet banger input { type filter hook input priority -10 ; policy accept ; }
add chain inet banger forward { type filter hook forward priority -10 ; policy accept ; }
flush chain inet banger input
flush chain inet banger forward
flush chain inet banger guest-in
add rule inet banger input iifname "br-fc" jump guest-in
add rule inet banger guest-in ct state established,related accept
add rule inet banger guest-in ip daddr 172.16.0.1 udp dport 53 accept
add rule inet banger guest-in ip daddr 172.16.0.1 tcp dport 53 accept
add rule inet banger guest-in drop
add rule inet banger forward iifname "br-fc" oifname "br-fc" drop
add rule inet banger forward iifname "br-fc" ip saddr vmap @guests
add rule inet banger forward iifname "br-fc" drop
`
	if got := baseScript(testCfg); got != want {
		t.Errorf("baseScript:\n%s\nwant:\n%s", got, want)
	}
}

func TestEgressRules(t *testing.T) {
	f := Filter{VMID: "abc", GuestIP: "172.16.0.2"}
	deny := `ip daddr . meta l4proto . th dport . th sport != @vm-abc-seen add @vm-abc-seen { ip daddr . meta l4proto . th dport . th sport } counter name "vm-abc-denied" log prefix "banger:vm=abc " group 7`
	allow := model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.0.0.0/8"}}
	mark := "0x" + hex32(egressMark(allow))
	tests := []struct {
		name   string
		policy model.EgressPolicy
		group  int
		want   []string
	}{
		{"empty is open", model.EgressPolicy{}, 7, []string{"accept"}},
		{"open", model.EgressPolicy{Mode: model.EgressOpen}, 7, []string{"accept"}},
		{"none", model.EgressPolicy{Mode: model.EgressNone}, 7, []string{"ct direction reply accept", deny, "drop"}},
		{"none without logging", model.EgressPolicy{Mode: model.EgressNone}, 0, []string{"ct direction reply accept", strings.TrimSuffix(deny, ` log prefix "banger:vm=abc " group 7`), "drop"}},
		{"allow", allow, 7, []string{
			"ct direction reply accept",
			"ct state established,related ct mark " + mark + " accept",
			"ip daddr @vm-abc-allow ct mark set " + mark + " accept",
			"ip daddr @vm-abc-dns ct mark set " + mark + " accept",
			deny, "drop",
		}},
	}
	for _, tt := range tests {
		f.Egress = tt.policy
		if got := egressRules(f, "abc", tt.group); !slices.Equal(got, tt.want) {
			t.Errorf("%s:\n%s\nwant:\n%s", tt.name, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
		}
	}
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b)
}

func TestEgressMark(t *testing.T) {
	a := model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.0.0.0/8"}}
	b := model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.0.0.0/8", "x.test"}}
	if egressMark(a) == egressMark(b) {
		t.Error("two policies share a mark: a change would keep connections the new one forbids")
	}
	again := model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.0.0.0/8"}}
	if egressMark(a) != egressMark(again) || egressMark(a) == 0 {
		t.Error("the mark must be stable and never 0")
	}
}

func TestMergePrefixes(t *testing.T) {
	p := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct{ in, want []netip.Prefix }{
		{p("10.1.0.0/16", "10.0.0.0/8", "10.1.2.3/32"), p("10.0.0.0/8")},
		{p("192.168.1.0/24", "10.0.0.1/32", "192.168.0.0/24"), p("10.0.0.1/32", "192.168.0.0/24", "192.168.1.0/24")},
		{p("0.0.0.0/0", "1.2.3.4/32"), p("0.0.0.0/0")},
		{nil, nil},
	}
	for _, tt := range tests {
		if got := mergePrefixes(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("mergePrefixes(%v) = %v; want %v", tt.in, got, tt.want)
		}
	}
}

func TestFilterValidateRefusesHostileValues(t *testing.T) {
	good := Filter{VMID: "0123456789abcdef", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:AC:10:00:02"}
	if f, err := good.validate(); err != nil || f.GuestMAC != "06:00:ac:10:00:02" || f.Egress.Mode != model.EgressOpen {
		t.Fatalf("good filter: %+v %v", f, err)
	}
	bad := []func(*Filter){
		func(f *Filter) { f.VMID = "" },
		func(f *Filter) { f.VMID = "abc; flush ruleset" },
		func(f *Filter) { f.Tap = `bgtap0" accept` },
		func(f *Filter) { f.Tap = "" },
		func(f *Filter) { f.GuestIP = "172.16.0.2 accept" },
		func(f *Filter) { f.GuestIP = "::1" },
		func(f *Filter) { f.GuestMAC = "06:00:ac:10:00:02 accept" },
		func(f *Filter) { f.GuestMAC = "06:00:ac:10:00:02:00:00:00:00" },
		func(f *Filter) {
			f.Egress = model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"1.2.3.4 } ; flush ruleset ; {"}}
		},
		func(f *Filter) { f.Egress = model.EgressPolicy{Mode: "all"} },
	}
	for i, mutate := range bad {
		f := good
		mutate(&f)
		if _, err := f.validate(); err == nil || model.ErrorCode(err) != model.EINVALID {
			t.Errorf("bad filter %d (%+v): %v; want EINVALID", i, f, err)
		}
	}
}

// Real `nft -j list table` output of nftables 1.0.6, for parsing.
const realBridgeJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "bridge", "name": "banger", "handle": 1}}, {"map": {"family": "bridge", "name": "ports", "table": "banger", "type": "ifname", "handle": 2, "map": "verdict", "elem": [["bgtap0", {"jump": {"target": "vm-abc"}}], ["bgtap5", {"jump": {"target": "vm-a"}}]]}}, {"chain": {"family": "bridge", "table": "banger", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-a", "handle": 14}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-b", "handle": 15}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-abc", "handle": 16}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 3, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@ports"}}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bgtap*"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "vm-abc", "handle": 17, "expr": [{"drop": null}]}}]}`

const realInetJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "banger", "handle": 2}}, {"counter": {"family": "inet", "name": "vm-abc-denied", "table": "banger", "handle": 1, "packets": 4, "bytes": 240}}, {"set": {"family": "inet", "name": "vm-abc-dns", "table": "banger", "type": "ipv4_addr", "handle": 3, "flags": ["timeout"], "elem": [{"elem": {"val": "10.99.0.7", "timeout": 300, "expires": 299}}]}}, {"set": {"family": "inet", "name": "vm-abc-seen", "table": "banger", "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"], "handle": 4, "size": 4096, "flags": ["timeout"], "timeout": 60}}, {"set": {"family": "inet", "name": "vm-abc-allow", "table": "banger", "type": "ipv4_addr", "handle": 11, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}}, {"map": {"family": "inet", "name": "guests", "table": "banger", "type": "ipv4_addr", "handle": 14, "map": "verdict", "elem": [["172.16.0.2", {"jump": {"target": "vm-abc"}}]]}}, {"chain": {"family": "inet", "table": "banger", "name": "vm-abc", "handle": 12}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@vm-abc-allow"}}, {"accept": null}]}}]}`

func realState(t *testing.T) nftState {
	t.Helper()
	st := newNftState()
	for _, doc := range []string{realBridgeJSON, realInetJSON} {
		if err := parseNftState(&st, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestParseNftStateAndInfos(t *testing.T) {
	st := realState(t)
	if !st.tables["bridge"] || !st.tables["inet"] {
		t.Errorf("tables %v", st.tables)
	}
	if st.chains["bridge/prerouting"] != 2 || st.chains["bridge/vm-abc"] != 1 || st.chains["bridge/vm-b"] != 0 || st.chains["inet/vm-abc"] != 1 {
		t.Errorf("chains %v", st.chains)
	}
	wantElems := []mapElem{
		{"bridge", "ports", "bgtap0", "vm-abc"},
		{"bridge", "ports", "bgtap5", "vm-a"},
		{"inet", "guests", "172.16.0.2", "vm-abc"},
	}
	if !slices.Equal(st.elems, wantElems) {
		t.Errorf("elems %v", st.elems)
	}
	got := filterInfos(st)
	want := []FilterInfo{
		{VMID: "a", Tap: "bgtap5", Partial: true},
		{VMID: "abc", Tap: "bgtap0", GuestIP: "172.16.0.2", Denied: 4},
		{VMID: "b", Partial: true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("filterInfos:\n%+v\nwant\n%+v", got, want)
	}
	if err := parseNftState(&st, []byte("Error: not json")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestRemoveAndEnableScripts(t *testing.T) {
	st := realState(t)
	wantRemove := `delete element bridge banger ports { "bgtap0" }
delete element inet banger guests { 172.16.0.2 }
flush chain bridge banger vm-abc
delete chain bridge banger vm-abc
flush chain inet banger vm-abc
delete chain inet banger vm-abc
delete set inet banger vm-abc-allow
delete set inet banger vm-abc-dns
delete set inet banger vm-abc-seen
delete counter inet banger vm-abc-denied
`
	if got := removeScript(st, "abc"); got != wantRemove {
		t.Errorf("removeScript:\n%s\nwant:\n%s", got, wantRemove)
	}
	if got := removeScript(st, "zzz"); got != "" {
		t.Errorf("removeScript of a VM with nothing: %q", got)
	}

	// vm "new" takes bgtap5, which vm-a's stale element still names.
	f := Filter{VMID: "new", Tap: "bgtap5", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:03",
		Egress: model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.1.0.0/16", "10.0.0.0/8", "x.test", "192.168.0.1/32"}}}
	got := enableScript(st, f, 0)
	mark := "0x" + hex32(egressMark(f.Egress))
	want := `delete element bridge banger ports { "bgtap5" }
add chain bridge banger vm-new
add rule bridge banger vm-new ether saddr != 06:00:ac:10:00:03 drop
add rule bridge banger vm-new arp htype != 1 drop
add rule bridge banger vm-new arp ptype != ip drop
add rule bridge banger vm-new arp hlen != 6 drop
add rule bridge banger vm-new arp plen != 4 drop
add rule bridge banger vm-new arp saddr ether != 06:00:ac:10:00:03 drop
add rule bridge banger vm-new arp saddr ip != 172.16.0.3 drop
add rule bridge banger vm-new ether type arp accept
add rule bridge banger vm-new ip saddr != 172.16.0.3 drop
add rule bridge banger vm-new udp sport 67 drop
add rule bridge banger vm-new ether type ip accept
add rule bridge banger vm-new drop
add element bridge banger ports { "bgtap5" : jump vm-new }
add counter inet banger vm-new-denied
add set inet banger vm-new-allow { type ipv4_addr ; flags interval ; }
add set inet banger vm-new-dns { type ipv4_addr ; flags timeout ; }
add set inet banger vm-new-seen { type ipv4_addr . inet_proto . inet_service . inet_service ; flags dynamic,timeout ; timeout 1m ; size 4096 ; }
add chain inet banger vm-new
add rule inet banger vm-new ct direction reply accept
add rule inet banger vm-new ct state established,related ct mark ` + mark + ` accept
add rule inet banger vm-new ip daddr @vm-new-allow ct mark set ` + mark + ` accept
add rule inet banger vm-new ip daddr @vm-new-dns ct mark set ` + mark + ` accept
add rule inet banger vm-new ip daddr . meta l4proto . th dport . th sport != @vm-new-seen add @vm-new-seen { ip daddr . meta l4proto . th dport . th sport } counter name "vm-new-denied"
add rule inet banger vm-new drop
add element inet banger vm-new-allow { 10.0.0.0/8, 192.168.0.1/32 }
add element inet banger guests { 172.16.0.3 : jump vm-new }
`
	if got != want {
		t.Errorf("enableScript:\n%s\nwant:\n%s", got, want)
	}

	// Rebuilding abc keeps its counter and replaces the rest.
	f = Filter{VMID: "abc", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02", Egress: model.EgressPolicy{Mode: model.EgressOpen}}
	got = enableScript(st, f, 0)
	if !strings.HasPrefix(got, strings.TrimSuffix(wantRemove, "delete counter inet banger vm-abc-denied\n")+"add chain bridge banger vm-abc\n") {
		t.Errorf("rebuild does not start by removing all but the counter:\n%s", got)
	}
	if strings.Count(got, "vm-abc-denied") != 1 {
		t.Errorf("rebuild touches the counter more than by adding it:\n%s", got)
	}
}

func TestAllowResolvedScript(t *testing.T) {
	a := netip.MustParseAddr
	got := allowResolvedScript("abc", []ResolvedAddr{
		{a("10.99.0.3"), 300}, {a("10.99.0.2"), 0}, {a("10.99.0.3"), 600}, {a("::1"), 60}, {a("10.99.0.4"), 1 << 30},
	})
	want := `add element inet banger vm-abc-dns { 10.99.0.2, 10.99.0.3, 10.99.0.4 }
delete element inet banger vm-abc-dns { 10.99.0.2, 10.99.0.3, 10.99.0.4 }
add element inet banger vm-abc-dns { 10.99.0.2 timeout 10s, 10.99.0.3 timeout 600s, 10.99.0.4 timeout 86400s }
`
	if got != want {
		t.Errorf("allowResolvedScript:\n%s\nwant:\n%s", got, want)
	}
	if got := allowResolvedScript("abc", []ResolvedAddr{{a("::1"), 60}}); got != "" {
		t.Errorf("IPv6 only: %q", got)
	}
}

// TestFilterOnFakeHost drives the Manager's filter against the fake nft:
// base, two VMs, a live policy change, resolved addresses, orphans.
func TestFilterOnFakeHost(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	m.cfg.EgressLogGroup = 9
	if _, ok, err := m.FilterStatus(ctx); err != nil || ok {
		t.Errorf("base whole on an empty host: %v %v", ok, err)
	}
	must(t, m.EnsureFilter(ctx))
	must(t, m.EnsureFilter(ctx))
	if _, ok, err := m.FilterStatus(ctx); err != nil || !ok {
		t.Errorf("base not whole after EnsureFilter: %v %v", ok, err)
	}
	fwd := o.Nft["inet banger"].Chains["forward"]
	saved := fwd.Rules
	fwd.Rules = saved[:2]
	if _, ok, _ := m.FilterStatus(ctx); ok {
		t.Error("base whole with a rule missing")
	}
	fwd.Rules = saved
	base := o.String()
	if !strings.Contains(base, "nft inet banger rule forward iifname \"br-fc\" ip saddr vmap @guests\n") {
		t.Fatalf("base filter:\n%s", base)
	}

	id1, id2 := "111111111111aaaa", "222222222222bbbb"
	f1 := Filter{VMID: id1, Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"}
	f2 := Filter{VMID: id2, Tap: "bgtap1", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:03", Egress: model.EgressPolicy{Mode: model.EgressNone}}
	must(t, m.EnableFilter(ctx, f1))
	must(t, m.EnableFilter(ctx, f2))
	st := o.String()
	for _, line := range []string{
		`nft bridge banger map ports { type ifname : verdict ; } = bgtap0 : jump vm-111111111111, bgtap1 : jump vm-222222222222`,
		`nft inet banger map guests { type ipv4_addr : verdict ; } = 172.16.0.2 : jump vm-111111111111, 172.16.0.3 : jump vm-222222222222`,
		`nft inet banger rule vm-111111111111 accept`,
		`nft inet banger rule vm-222222222222 ip daddr . meta l4proto . th dport . th sport != @vm-222222222222-seen add @vm-222222222222-seen { ip daddr . meta l4proto . th dport . th sport } counter name "vm-222222222222-denied" log prefix "banger:vm=222222222222 " group 9`,
		`nft bridge banger rule vm-222222222222 ip saddr != 172.16.0.3 drop`,
	} {
		if !strings.Contains(st, line+"\n") {
			t.Errorf("state lacks %q:\n%s", line, st)
		}
	}
	infos, err := m.ListFilters(ctx)
	must(t, err)
	if len(infos) != 2 || infos[0].Partial || infos[1].Partial || infos[0].Tap != "bgtap0" || infos[1].GuestIP != "172.16.0.3" {
		t.Errorf("ListFilters = %+v", infos)
	}

	// A live change to allow: the chain is rebuilt, the counter kept.
	o.Nft["inet banger"].Counters["vm-222222222222-denied"].Packets = 5
	f2.Egress = model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.99.0.1", "allowed.test"}}
	must(t, m.EnableFilter(ctx, f2))
	if n, err := m.DeniedCount(ctx, id2); err != nil || n != 5 {
		t.Errorf("DeniedCount after a policy change = %d, %v; want 5", n, err)
	}
	st = o.String()
	if !strings.Contains(st, "nft inet banger set vm-222222222222-allow { type ipv4_addr ; flags interval ; } = 10.99.0.1\n") {
		t.Errorf("allow set:\n%s", st)
	}
	must(t, m.AllowResolved(ctx, id2, []ResolvedAddr{{netip.MustParseAddr("10.99.0.2"), 30}}))
	must(t, m.AllowResolved(ctx, id2, []ResolvedAddr{{netip.MustParseAddr("10.99.0.2"), 120}}))
	if st := o.String(); !strings.Contains(st, "vm-222222222222-dns { type ipv4_addr ; flags timeout ; } = 10.99.0.2 timeout 120s\n") {
		t.Errorf("dns set:\n%s", st)
	}
	if err := m.AllowResolved(ctx, "333333333333", []ResolvedAddr{{netip.MustParseAddr("10.99.0.2"), 30}}); err == nil {
		t.Error("AllowResolved for a VM without a filter succeeded")
	}

	// Orphans: only vm1 is kept; vm2 goes, vm1 stays whole.
	removed, err := m.RemoveOrphanFilters(ctx, []string{id1})
	must(t, err)
	if !slices.Equal(removed, []string{"222222222222"}) {
		t.Errorf("RemoveOrphanFilters = %v", removed)
	}
	if st := o.String(); strings.Contains(st, "222222222222") || !strings.Contains(st, "vm-111111111111") {
		t.Errorf("after orphan removal:\n%s", st)
	}
	must(t, m.DisableFilter(ctx, id1))
	must(t, m.DisableFilter(ctx, id1))
	if got := o.String(); got != base {
		t.Errorf("after disabling everything:\n%s\nwant the base:\n%s", got, base)
	}
	if n, err := m.DeniedCount(ctx, id1); err != nil || n != 0 {
		t.Errorf("DeniedCount without a filter = %d, %v", n, err)
	}

	// EnableFilter on a host whose tables were removed makes the base too.
	o.Nft = map[string]*fakeos.NftTable{}
	must(t, m.EnableFilter(ctx, f1))
	if infos, err := m.ListFilters(ctx); err != nil || len(infos) != 1 || infos[0].Partial {
		t.Errorf("filter after the tables vanished: %+v %v", infos, err)
	}
	if err := m.EnableFilter(ctx, Filter{VMID: "x y", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"}); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("hostile id: %v", err)
	}
}

// TestFilterStateKept checks that the tables are listed once and then
// kept: a start's EnableFilter and a stop's DisableFilter each run one
// `nft -f -`, and the host ends as it would with a listing before each
// change. A copy made stale behind banger's back costs a listing and a
// retry, never a wrong filter.
func TestFilterStateKept(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	must(t, m.EnsureFilter(ctx))
	f1 := Filter{VMID: "111111111111aaaa", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"}
	f2 := Filter{VMID: "222222222222bbbb", Tap: "bgtap1", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:03", Egress: model.EgressPolicy{Mode: model.EgressNone}}
	must(t, m.EnableFilter(ctx, f1)) // lists: nothing is known yet
	o.Runner().Reset()
	must(t, m.EnableFilter(ctx, f2))
	must(t, m.DisableFilter(ctx, f1.VMID))
	// f2 moves to f1's old tap and IP: the copy knows no element is left
	// on them, and the change is made from it.
	f2.Tap, f2.GuestIP = f1.Tap, f1.GuestIP
	must(t, m.EnableFilter(ctx, f2))
	want := []string{"nft -f -", "nft -f -", "nft -f -"}
	if got := o.Runner().Calls(); !slices.Equal(got, want) {
		t.Errorf("commands with the state kept:\n%q\nwant %q", got, want)
	}
	kept := o.String()

	// The same changes, each after a listing, leave the same host.
	o2 := fakeos.New()
	m2 := newTestManager(t, o2, 0)
	must(t, m2.EnsureFilter(ctx))
	for _, step := range []func() error{
		func() error {
			return m2.EnableFilter(ctx, Filter{VMID: "111111111111aaaa", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"})
		},
		func() error {
			return m2.EnableFilter(ctx, Filter{VMID: "222222222222bbbb", Tap: "bgtap1", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:03", Egress: f2.Egress})
		},
		func() error { return m2.DisableFilter(ctx, "111111111111aaaa") },
		func() error { return m2.EnableFilter(ctx, f2) },
	} {
		m2.nft = nil
		must(t, step())
	}
	if got := o2.String(); got != kept {
		t.Errorf("host with the state kept:\n%s\nwith a listing before each change:\n%s", kept, got)
	}

	// Behind banger's back the VM's chain loses its rules and the ports
	// map its element: the kept copy is stale, the first script fails,
	// and the change is made again from a fresh listing.
	delete(o.Nft["bridge banger"].Chains, "vm-222222222222")
	o.Nft = map[string]*fakeos.NftTable{}
	o.Runner().Reset()
	must(t, m.EnableFilter(ctx, f2))
	calls := o.Runner().Calls()
	if len(calls) < 3 || calls[0] != "nft -f -" || calls[1] != "nft -j list tables" || calls[len(calls)-1] != "nft -f -" {
		t.Errorf("commands after the tables vanished: %q", calls)
	}
	if infos, err := m.ListFilters(ctx); err != nil || len(infos) != 1 || infos[0].Partial || infos[0].Tap != "bgtap0" {
		t.Errorf("filter after a stale copy: %+v %v", infos, err)
	}
	if _, ok, err := m.FilterStatus(ctx); err != nil || !ok {
		t.Errorf("base after a stale copy: %v %v", ok, err)
	}
}
