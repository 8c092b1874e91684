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
add set bridge banger taps { type ifname ; }
add set bridge banger ident { type ifname . ether_addr . ipv4_addr ; }
add chain bridge banger prerouting { type filter hook prerouting priority -300 ; policy accept ; }
add chain bridge banger guest
flush chain bridge banger prerouting
flush chain bridge banger guest
add rule bridge banger prerouting iifname "bgtap*" jump guest
add rule bridge banger prerouting iifname @taps jump guest
add rule bridge banger guest arp htype != 1 drop
add rule bridge banger guest arp ptype != ip drop
add rule bridge banger guest arp hlen != 6 drop
add rule bridge banger guest arp plen != 4 drop
add rule bridge banger guest iifname . ether saddr . arp saddr ip != @ident drop
add rule bridge banger guest iifname . arp saddr ether . arp saddr ip != @ident drop
add rule bridge banger guest ether type arp accept
add rule bridge banger guest iifname . ether saddr . ip saddr != @ident drop
add rule bridge banger guest udp sport 67 drop
add rule bridge banger guest ether type ip accept
add rule bridge banger guest drop
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

// Real `nft -j list table` output of nftables 1.0.6, for parsing: the
// base, VM abc (egress allow=10.0.0.0/8, its own chain) and VM def
// (egress open, elements only).
const realBridgeJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "bridge", "name": "banger", "handle": 5}}, {"set": {"family": "bridge", "name": "taps", "table": "banger", "type": "ifname", "handle": 1, "elem": [{"elem": {"val": "bgtap0", "comment": "vm-abc"}}, {"elem": {"val": "bgtap1", "comment": "vm-def"}}]}}, {"set": {"family": "bridge", "name": "ident", "table": "banger", "type": ["ifname", "ether_addr", "ipv4_addr"], "handle": 2, "elem": [{"elem": {"val": {"concat": ["bgtap0", "06:00:ac:10:00:02", "172.16.0.2"]}, "comment": "vm-abc"}}, {"elem": {"val": {"concat": ["bgtap1", "06:00:ac:10:00:03", "172.16.0.3"]}, "comment": "vm-def"}}]}}, {"chain": {"family": "bridge", "table": "banger", "name": "prerouting", "handle": 3, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}, {"chain": {"family": "bridge", "table": "banger", "name": "guest", "handle": 4}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bgtap*"}}, {"jump": {"target": "guest"}}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 6, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@taps"}}, {"jump": {"target": "guest"}}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 7, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "htype"}}, "right": 1}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 8, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "ptype"}}, "right": "ip"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 9, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "hlen"}}, "right": 6}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 10, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "arp", "field": "plen"}}, "right": 4}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 11, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ether", "field": "saddr"}}, {"payload": {"protocol": "arp", "field": "saddr ip"}}]}, "right": "@ident"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 12, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "arp", "field": "saddr ether"}}, {"payload": {"protocol": "arp", "field": "saddr ip"}}]}, "right": "@ident"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": "arp"}}, {"accept": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 14, "expr": [{"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"payload": {"protocol": "ether", "field": "saddr"}}, {"payload": {"protocol": "ip", "field": "saddr"}}]}, "right": "@ident"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 15, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "sport"}}, "right": 67}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 16, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": "ip"}}, {"accept": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "guest", "handle": 17, "expr": [{"drop": null}]}}]}`

const realInetJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "banger", "handle": 6}}, {"counter": {"family": "inet", "name": "vm-abc-denied", "table": "banger", "handle": 13, "packets": 0, "bytes": 0}}, {"map": {"family": "inet", "name": "guests", "table": "banger", "type": "ipv4_addr", "handle": 1, "map": "verdict", "elem": [[{"elem": {"val": "172.16.0.2", "comment": "vm-abc"}}, {"jump": {"target": "vm-abc"}}], [{"elem": {"val": "172.16.0.3", "comment": "vm-def"}}, {"accept": null}]]}}, {"set": {"family": "inet", "name": "vm-abc-allow", "table": "banger", "type": "ipv4_addr", "handle": 14, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}}, {"set": {"family": "inet", "name": "vm-abc-dns", "table": "banger", "type": "ipv4_addr", "handle": 15, "flags": ["timeout"]}}, {"set": {"family": "inet", "name": "vm-abc-seen", "table": "banger", "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"], "handle": 16, "size": 4096, "flags": ["timeout"], "timeout": 60}}, {"chain": {"family": "inet", "table": "banger", "name": "guest-in", "handle": 2}}, {"chain": {"family": "inet", "table": "banger", "name": "input", "handle": 3, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "banger", "name": "forward", "handle": 4, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}}, {"chain": {"family": "inet", "table": "banger", "name": "vm-abc", "handle": 17}}, {"rule": {"family": "inet", "table": "banger", "chain": "guest-in", "handle": 6, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "guest-in", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.16.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "guest-in", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.16.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "guest-in", "handle": 9, "expr": [{"drop": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-fc"}}, {"jump": {"target": "guest-in"}}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "forward", "handle": 10, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-fc"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-fc"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "forward", "handle": 11, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-fc"}}, {"vmap": {"key": {"payload": {"protocol": "ip", "field": "saddr"}}, "data": "@guests"}}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "forward", "handle": 12, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-fc"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 18, "expr": [{"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 19, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": 4149595165}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 20, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@vm-abc-allow"}}, {"mangle": {"key": {"ct": {"key": "mark"}}, "value": 4149595165}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 21, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@vm-abc-dns"}}, {"mangle": {"key": {"ct": {"key": "mark"}}, "value": 4149595165}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 22, "expr": [{"match": {"op": "!=", "left": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}, {"payload": {"protocol": "th", "field": "sport"}}]}, "right": "@vm-abc-seen"}}, {"set": {"op": "add", "elem": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}, {"payload": {"protocol": "th", "field": "sport"}}]}, "set": "@vm-abc-seen"}}, {"counter": "vm-abc-denied"}]}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 23, "expr": [{"drop": null}]}}]}`

// Real `nft -j list table` output of nftables 1.0.6 for the tables of
// an older banger (a verdict map of taps and a chain per VM in the
// bridge table, no comments), for parsing and migration.
const legacyBridgeJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "bridge", "name": "banger", "handle": 1}}, {"map": {"family": "bridge", "name": "ports", "table": "banger", "type": "ifname", "handle": 2, "map": "verdict", "elem": [["bgtap0", {"jump": {"target": "vm-abc"}}], ["bgtap5", {"jump": {"target": "vm-a"}}]]}}, {"chain": {"family": "bridge", "table": "banger", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-a", "handle": 14}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-b", "handle": 15}}, {"chain": {"family": "bridge", "table": "banger", "name": "vm-abc", "handle": 16}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 3, "expr": [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@ports"}}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "prerouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bgtap*"}}, {"drop": null}]}}, {"rule": {"family": "bridge", "table": "banger", "chain": "vm-abc", "handle": 17, "expr": [{"drop": null}]}}]}`

const legacyInetJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "banger", "handle": 2}}, {"counter": {"family": "inet", "name": "vm-abc-denied", "table": "banger", "handle": 1, "packets": 4, "bytes": 240}}, {"set": {"family": "inet", "name": "vm-abc-dns", "table": "banger", "type": "ipv4_addr", "handle": 3, "flags": ["timeout"], "elem": [{"elem": {"val": "10.99.0.7", "timeout": 300, "expires": 299}}]}}, {"set": {"family": "inet", "name": "vm-abc-seen", "table": "banger", "type": ["ipv4_addr", "inet_proto", "inet_service", "inet_service"], "handle": 4, "size": 4096, "flags": ["timeout"], "timeout": 60}}, {"set": {"family": "inet", "name": "vm-abc-allow", "table": "banger", "type": "ipv4_addr", "handle": 11, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}}, {"map": {"family": "inet", "name": "guests", "table": "banger", "type": "ipv4_addr", "handle": 14, "map": "verdict", "elem": [["172.16.0.2", {"jump": {"target": "vm-abc"}}]]}}, {"chain": {"family": "inet", "table": "banger", "name": "vm-abc", "handle": 12}}, {"rule": {"family": "inet", "table": "banger", "chain": "vm-abc", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@vm-abc-allow"}}, {"accept": null}]}}]}`

func legacyState(t *testing.T) nftState {
	t.Helper()
	st := newNftState()
	for _, doc := range []string{legacyBridgeJSON, legacyInetJSON} {
		if err := parseNftState(&st, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

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
	if !st.tables["bridge"] || !st.tables["inet"] || !baseWhole(st) {
		t.Errorf("tables %v, base whole %v", st.tables, baseWhole(st))
	}
	if st.chains["bridge/guest"] != 11 || st.chains["inet/vm-abc"] != 6 || !st.sets["bridge/ident"] || !st.sets["inet/vm-abc-seen"] {
		t.Errorf("chains %v sets %v", st.chains, st.sets)
	}
	wantElems := []setElem{
		{"bridge", "ident", "bgtap0 . 06:00:ac:10:00:02 . 172.16.0.2", "", "abc"},
		{"bridge", "ident", "bgtap1 . 06:00:ac:10:00:03 . 172.16.0.3", "", "def"},
		{"bridge", "taps", "bgtap0", "", "abc"},
		{"bridge", "taps", "bgtap1", "", "def"},
		{"inet", "guests", "172.16.0.2", "jump vm-abc", "abc"},
		{"inet", "guests", "172.16.0.3", "accept", "def"},
	}
	if !slices.Equal(st.elems, wantElems) {
		t.Errorf("elems\n%v\nwant\n%v", st.elems, wantElems)
	}
	got := filterInfos(st)
	want := []FilterInfo{
		{VMID: "abc", Tap: "bgtap0", GuestIP: "172.16.0.2"},
		{VMID: "def", Tap: "bgtap1", GuestIP: "172.16.0.3"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("filterInfos:\n%+v\nwant\n%+v", got, want)
	}
	// A VM that lost one element, or an open VM that kept sets of its
	// own, is partial.
	for _, cut := range []func(*nftState){
		func(st *nftState) { st.elems = slices.Delete(st.elems, 1, 2) },
		func(st *nftState) { st.sets["inet/vm-def-dns"] = true },
	} {
		st := realState(t)
		cut(&st)
		if fi := filterInfos(st); len(fi) != 2 || !fi[1].Partial || fi[0].Partial {
			t.Errorf("after a cut: %+v", fi)
		}
	}

	// An older banger's tables: every VM is partial (reconcile rebuilds
	// the live ones in the new layout) and the base is not whole.
	st = legacyState(t)
	wantLegacy := []setElem{
		{"bridge", "ports", "bgtap0", "jump vm-abc", ""},
		{"bridge", "ports", "bgtap5", "jump vm-a", ""},
		{"inet", "guests", "172.16.0.2", "jump vm-abc", ""},
	}
	if !slices.Equal(st.elems, wantLegacy) {
		t.Errorf("legacy elems %v", st.elems)
	}
	got = filterInfos(st)
	want = []FilterInfo{
		{VMID: "a", Partial: true},
		{VMID: "abc", GuestIP: "172.16.0.2", Partial: true, Denied: 4},
		{VMID: "b", Partial: true},
	}
	if !slices.Equal(got, want) || baseWhole(st) {
		t.Errorf("legacy filterInfos:\n%+v\nwant\n%+v", got, want)
	}
	if err := parseNftState(&st, []byte("Error: not json")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestRemoveAndEnableOps(t *testing.T) {
	st := realState(t)
	wantRemove := `delete element bridge banger ident { "bgtap0" . 06:00:ac:10:00:02 . 172.16.0.2 }
delete element bridge banger taps { "bgtap0" }
delete element inet banger guests { 172.16.0.2 }
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
	// An open VM's stop is elements only.
	if op := removeOp(st, "def"); !op.elementsOnly() || len(op.dels) != 3 {
		t.Errorf("removeOp of an open VM: %+v", op)
	}

	// An open VM "new" starts on bgtap1 with def's old IP: def's stale
	// elements on that tap and IP go; the change is elements only.
	f := Filter{VMID: "new", Tap: "bgtap1", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:09"}
	op := enableOp(st, f, 0)
	if !op.elementsOnly() {
		t.Errorf("open start is not elements only: %+v", op)
	}
	want := `delete element bridge banger ident { "bgtap1" . 06:00:ac:10:00:03 . 172.16.0.3 }
delete element bridge banger taps { "bgtap1" }
delete element inet banger guests { 172.16.0.3 }
add element bridge banger taps { "bgtap1" comment "vm-new" }
add element bridge banger ident { "bgtap1" . 06:00:ac:10:00:09 . 172.16.0.3 comment "vm-new" }
add element inet banger guests { 172.16.0.3 comment "vm-new" : accept }
`
	if got := op.script(); got != want {
		t.Errorf("enableOp open:\n%s\nwant:\n%s", got, want)
	}

	// An allow VM gets its own chain and sets, made before its element
	// jumps to them.
	f = Filter{VMID: "new", Tap: "bgtap5", GuestIP: "172.16.0.5", GuestMAC: "06:00:ac:10:00:05",
		Egress: model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.1.0.0/16", "10.0.0.0/8", "x.test", "192.168.0.1/32"}}}
	mark := "0x" + hex32(egressMark(f.Egress))
	want = `add counter inet banger vm-new-denied
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
add element bridge banger taps { "bgtap5" comment "vm-new" }
add element bridge banger ident { "bgtap5" . 06:00:ac:10:00:05 . 172.16.0.5 comment "vm-new" }
add element inet banger guests { 172.16.0.5 comment "vm-new" : jump vm-new }
`
	if got := enableOp(st, f, 0).script(); got != want {
		t.Errorf("enableOp allow:\n%s\nwant:\n%s", got, want)
	}

	// abc turning open: its chain and sets go, its counter stays.
	f = Filter{VMID: "abc", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02", Egress: model.EgressPolicy{Mode: model.EgressOpen}}
	got := enableOp(st, f, 0).script()
	if !strings.HasPrefix(got, strings.TrimSuffix(wantRemove, "delete counter inet banger vm-abc-denied\n")) {
		t.Errorf("rebuild does not start by removing all but the counter:\n%s", got)
	}
	if strings.Contains(got, "vm-abc-denied") || !strings.HasSuffix(got, `add element inet banger guests { 172.16.0.2 comment "vm-abc" : accept }`+"\n") {
		t.Errorf("abc turning open:\n%s", got)
	}

	// A VM of an older banger, rebuilt: its map element and bridge chain
	// go with the rest.
	got = enableOp(legacyState(t), Filter{VMID: "abc", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"}, 0).script()
	for _, line := range []string{`delete element bridge banger ports { "bgtap0" }`, "delete chain bridge banger vm-abc", "delete chain inet banger vm-abc"} {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("legacy rebuild lacks %q:\n%s", line, got)
		}
	}
}

func TestElemKeyBytes(t *testing.T) {
	ifname := func(s string) []byte { b := make([]byte, 16); copy(b, s); return b }
	tests := []struct {
		e    setElem
		want []byte
	}{
		{setElem{Family: "bridge", Set: "taps", Key: "bgtap7"}, ifname("bgtap7")},
		{setElem{Family: "inet", Set: "guests", Key: "172.16.0.9"}, []byte{172, 16, 0, 9}},
		{setElem{Family: "bridge", Set: "ident", Key: "bgtap7 . 06:00:ac:10:00:09 . 172.16.0.9"},
			append(ifname("bgtap7"), 6, 0, 0xac, 0x10, 0, 9, 0, 0, 172, 16, 0, 9)},
	}
	for _, tt := range tests {
		if got, err := elemKeyBytes(tt.e); err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("elemKeyBytes(%+v) = %v, %v; want %v", tt.e, got, err, tt.want)
		}
	}
	for _, bad := range []setElem{
		{Family: "bridge", Set: "taps", Key: "a-name-much-too-long"},
		{Family: "bridge", Set: "taps", Key: `bgtap0" accept`},
		{Family: "inet", Set: "guests", Key: "::1"},
		{Family: "bridge", Set: "ident", Key: "bgtap7 . 06:00:ac:10:00:09"},
		{Family: "bridge", Set: "ident", Key: "bgtap7 . 06:00:ac:10:00:09:00:00 . 172.16.0.9"},
		{Family: "inet", Set: "vm-abc-dns", Key: "10.0.0.1"},
	} {
		if _, err := elemKeyBytes(bad); err == nil {
			t.Errorf("elemKeyBytes(%+v) accepted", bad)
		}
	}
	if _, _, err := nlElem(setElem{Family: "inet", Set: "guests", Key: "172.16.0.9", Verdict: "drop everything"}); err == nil {
		t.Error("nlElem accepted an unknown verdict")
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
		`nft bridge banger set taps { type ifname ; } = bgtap0 comment "vm-111111111111", bgtap1 comment "vm-222222222222"`,
		`nft bridge banger set ident { type ifname . ether_addr . ipv4_addr ; } = bgtap0 . 06:00:ac:10:00:02 . 172.16.0.2 comment "vm-111111111111", bgtap1 . 06:00:ac:10:00:03 . 172.16.0.3 comment "vm-222222222222"`,
		`nft inet banger map guests { type ipv4_addr : verdict ; } = 172.16.0.2 comment "vm-111111111111" : accept, 172.16.0.3 comment "vm-222222222222" : jump vm-222222222222`,
		`nft inet banger rule vm-222222222222 ip daddr . meta l4proto . th dport . th sport != @vm-222222222222-seen add @vm-222222222222-seen { ip daddr . meta l4proto . th dport . th sport } counter name "vm-222222222222-denied" log prefix "banger:vm=222222222222 " group 9`,
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
	if st := o.String(); strings.Contains(st, "222222222222") || !strings.Contains(st, `"vm-111111111111"`) {
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

// fakeNetlink is the elemWriter of unit tests: it applies a change to
// the fake host's tables as one netlink batch would, with no process,
// after encoding every element as the netlink writer does.
type fakeNetlink struct {
	o       *fakeos.OS
	batches int
}

func (f *fakeNetlink) apply(_ context.Context, dels, adds []setElem) error {
	for _, e := range append(append([]setElem(nil), dels...), adds...) {
		if _, _, err := nlElem(e); err != nil {
			return err
		}
	}
	f.batches++
	return f.o.NftNetlink(filterOp{dels: dels, adds: adds}.script())
}

// TestFilterStateKept checks that the tables are listed once and then
// kept: a start's EnableFilter and a stop's DisableFilter each make one
// change, an open VM's through the elemWriter (no process at all), any
// other as one `nft -f -`, and the host ends as it would with a listing
// before each change. A copy made stale behind banger's back costs a
// listing and a retry, never a wrong filter.
func TestFilterStateKept(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 0)
	nl := &fakeNetlink{o: o}
	m.elems = nl
	must(t, m.EnsureFilter(ctx))
	f1 := Filter{VMID: "111111111111aaaa", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"}
	f2 := Filter{VMID: "222222222222bbbb", Tap: "bgtap1", GuestIP: "172.16.0.3", GuestMAC: "06:00:ac:10:00:03", Egress: model.EgressPolicy{Mode: model.EgressNone}}
	f3 := Filter{VMID: "333333333333cccc", Tap: "bgtap2", GuestIP: "172.16.0.4", GuestMAC: "06:00:ac:10:00:04"}
	must(t, m.EnableFilter(ctx, f1)) // lists: nothing is known yet
	o.Runner().Reset()
	nl.batches = 0
	must(t, m.EnableFilter(ctx, f3))
	must(t, m.DisableFilter(ctx, f3.VMID))
	if calls := o.Runner().Calls(); len(calls) != 0 || nl.batches != 2 {
		t.Errorf("an open VM's start and stop ran %q and %d netlink batches; want none and 2", calls, nl.batches)
	}
	must(t, m.EnableFilter(ctx, f2))
	must(t, m.DisableFilter(ctx, f1.VMID))
	// f2 moves to f1's old tap and IP: the copy knows no element is left
	// on them, and the change is made from it.
	f2.Tap, f2.GuestIP = f1.Tap, f1.GuestIP
	must(t, m.EnableFilter(ctx, f2))
	want := []string{"nft -f -", "nft -f -"}
	if got := o.Runner().Calls(); !slices.Equal(got, want) || nl.batches != 3 {
		t.Errorf("commands with the state kept:\n%q (%d batches)\nwant %q (3 batches)", got, nl.batches, want)
	}
	kept := o.String()

	// The same changes, each after a listing and all as nft scripts,
	// leave the same host.
	o2 := fakeos.New()
	m2 := newTestManager(t, o2, 0)
	must(t, m2.EnsureFilter(ctx))
	for _, step := range []func() error{
		func() error {
			return m2.EnableFilter(ctx, Filter{VMID: "111111111111aaaa", Tap: "bgtap0", GuestIP: "172.16.0.2", GuestMAC: "06:00:ac:10:00:02"})
		},
		func() error { return m2.EnableFilter(ctx, f3) },
		func() error { return m2.DisableFilter(ctx, f3.VMID) },
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

	// Behind banger's back an open VM's element goes: the kept copy is
	// stale, the netlink batch that deletes it fails, and the change is
	// made again from a fresh listing.
	must(t, m.EnableFilter(ctx, f3))
	delete(o.Nft["bridge banger"].Sets["taps"].Elems, "bgtap2")
	o.Runner().Reset()
	nl.batches = 0
	f3.Egress = model.EgressPolicy{Mode: model.EgressOpen}
	must(t, m.EnableFilter(ctx, f3))
	if calls := o.Runner().Calls(); len(calls) != 3 || calls[0] != "nft -j list tables" || nl.batches != 2 {
		t.Errorf("commands after an element vanished: %q, %d batches", calls, nl.batches)
	}
	must(t, m.DisableFilter(ctx, f3.VMID))

	// The tables vanish: the kept copy is stale, the first script fails,
	// and the change is made again from a fresh listing.
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
