package fakeos

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// nftRun feeds a script to nft -f -.
func nftRun(o *OS, script string) error {
	_, err := o.Runner().RunStdin(context.Background(), strings.NewReader(script), "nft", "-f", "-")
	return err
}

const nftBase = `add table bridge banger
add map bridge banger ports { type ifname : verdict ; }
add chain bridge banger prerouting { type filter hook prerouting priority -300 ; policy accept ; }
add rule bridge banger prerouting iifname vmap @ports
add chain bridge banger vm-a
add rule bridge banger vm-a ether saddr != 06:00:0a:00:00:02 drop
add element bridge banger ports { "tap0" : jump vm-a }
add table inet banger
add counter inet banger vm-a-denied
add set inet banger vm-a-allow { type ipv4_addr ; flags interval ; }
add set inet banger vm-a-dns { type ipv4_addr ; flags timeout ; }
add chain inet banger vm-a
add rule inet banger vm-a ip daddr @vm-a-allow accept
add rule inet banger vm-a ip daddr . meta l4proto != @vm-a-allow add @vm-a-allow { ip daddr } counter name "vm-a-denied" log prefix "banger:vm=a " group 7
add element inet banger vm-a-allow { 10.0.0.0/8, 192.168.1.1/32 }
`

func TestNftScriptState(t *testing.T) {
	o := New()
	if err := nftRun(o, nftBase); err != nil {
		t.Fatal(err)
	}
	got := o.String()
	for _, line := range []string{
		"nft bridge banger chain prerouting { type filter hook prerouting priority -300 ; policy accept ; }",
		"nft bridge banger rule prerouting iifname vmap @ports",
		`nft bridge banger map ports { type ifname : verdict ; } = tap0 : jump vm-a`,
		"nft inet banger rule vm-a ip daddr @vm-a-allow accept",
		`nft inet banger rule vm-a ip daddr . meta l4proto != @vm-a-allow add @vm-a-allow { ip daddr } counter name "vm-a-denied" log prefix "banger:vm=a " group 7`,
		"nft inet banger set vm-a-allow { type ipv4_addr ; flags interval ; } = 10.0.0.0/8, 192.168.1.1",
		"nft inet banger counter vm-a-denied packets 0",
	} {
		if !strings.Contains(got, line+"\n") {
			t.Errorf("state lacks %q:\n%s", line, got)
		}
	}
	// Re-adding what exists with the same definition is harmless.
	if err := nftRun(o, nftBase); err != nil {
		t.Errorf("second run of the same script: %v", err)
	}
}

func TestNftTransactionsAndRefusals(t *testing.T) {
	o := New()
	if err := nftRun(o, nftBase); err != nil {
		t.Fatal(err)
	}
	before := o.String()
	bad := []struct{ name, script string }{
		{"delete a chain a map element jumps to", "delete element bridge banger ports { \"tap0\" }\nflush chain bridge banger prerouting\ndelete chain bridge banger vm-a"},
		{"delete a chain with rules", "delete element bridge banger ports { \"tap0\" }\ndelete chain bridge banger vm-a"},
		{"delete a set a rule uses", "delete set inet banger vm-a-allow"},
		{"delete a counter a rule uses", "delete counter inet banger vm-a-denied"},
		{"delete a missing element", "delete element bridge banger ports { \"tap9\" }"},
		{"delete a missing chain", "delete chain inet banger vm-z"},
		{"map key with other data", "add chain bridge banger vm-b\nadd element bridge banger ports { \"tap0\" : jump vm-b }"},
		{"map element to a missing chain", "add element bridge banger ports { \"tap1\" : jump vm-z }"},
		{"rule with a missing set", "add rule inet banger vm-a ip daddr @nope accept"},
		{"rule in a missing chain", "add rule inet banger vm-z accept"},
		{"rule jumping to a missing chain", "add rule inet banger vm-a jump vm-z"},
		{"rule with a missing counter", `add rule inet banger vm-a counter name "nope" drop`},
		{"set redefined", "add set inet banger vm-a-allow { type ipv4_addr ; }"},
		{"overlapping interval", "add element inet banger vm-a-allow { 10.1.0.0/16 }"},
		{"missing table", "add chain inet other c"},
		// A good first line does not survive a bad second one.
		{"half a script", "add chain inet banger vm-b\nadd rule inet banger vm-b ip daddr @nope accept"},
	}
	for _, b := range bad {
		if err := nftRun(o, b.script); err == nil {
			t.Errorf("%s: accepted", b.name)
		}
		if got := o.String(); got != before {
			t.Errorf("%s: state changed by a failed script:\n%s", b.name, got)
		}
	}
	if u := o.Runner().Unexpected(); len(u) > 0 {
		t.Errorf("refusals counted as unknown commands: %q", u)
	}

	// The right order removes everything.
	if err := nftRun(o, `delete element bridge banger ports { "tap0" }
flush chain bridge banger vm-a
delete chain bridge banger vm-a
flush chain inet banger vm-a
delete chain inet banger vm-a
delete set inet banger vm-a-allow
delete set inet banger vm-a-dns
delete counter inet banger vm-a-denied
`); err != nil {
		t.Fatal(err)
	}
	if got := o.String(); strings.Contains(got, "vm-a") {
		t.Errorf("vm-a left:\n%s", got)
	}
}

func TestNftTimeoutElements(t *testing.T) {
	o := New()
	if err := nftRun(o, nftBase); err != nil {
		t.Fatal(err)
	}
	if err := nftRun(o, "add element inet banger vm-a-dns { 1.2.3.4 timeout 30s }"); err != nil {
		t.Fatal(err)
	}
	// A plain add keeps the old timeout, as older kernels do; delete and
	// add in one script replaces it.
	if err := nftRun(o, "add element inet banger vm-a-dns { 1.2.3.4 timeout 90s }"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(o.String(), "= 1.2.3.4 timeout 30s\n") {
		t.Errorf("timeout changed by a plain add:\n%s", o)
	}
	if err := nftRun(o, "add element inet banger vm-a-dns { 1.2.3.4 }\ndelete element inet banger vm-a-dns { 1.2.3.4 }\nadd element inet banger vm-a-dns { 1.2.3.4 timeout 90s }"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(o.String(), "= 1.2.3.4 timeout 90s\n") {
		t.Errorf("timeout not replaced:\n%s", o)
	}
	if err := nftRun(o, "add element inet banger vm-a-allow { 1.2.3.4 timeout 9s }"); err == nil {
		t.Error("timeout accepted on a set without the timeout flag")
	}
}

func TestNftListJSON(t *testing.T) {
	o := New()
	ctx := context.Background()
	out, err := o.Runner().Run(ctx, "nft", "-j", "list", "tables")
	if err != nil || !strings.Contains(string(out), `"nftables"`) {
		t.Fatalf("list tables on an empty host: %s %v", out, err)
	}
	if _, err := o.Runner().Run(ctx, "nft", "-j", "list", "table", "inet", "banger"); err == nil {
		t.Error("listing a missing table succeeded")
	}
	if err := nftRun(o, nftBase); err != nil {
		t.Fatal(err)
	}
	o.Nft["inet banger"].Counters["vm-a-denied"].Packets = 3
	for _, fam := range []string{"bridge", "inet"} {
		out, err := o.Runner().Run(ctx, "nft", "-j", "list", "table", fam, "banger")
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		kinds := map[string]int{}
		for _, obj := range doc.Nftables {
			for k := range obj {
				kinds[k]++
			}
		}
		switch fam {
		case "bridge":
			if kinds["map"] != 1 || kinds["chain"] != 2 || kinds["rule"] != 2 || !strings.Contains(string(out), `["tap0",{"jump":{"target":"vm-a"}}]`) {
				t.Errorf("bridge listing %v:\n%s", kinds, out)
			}
		case "inet":
			if kinds["set"] != 2 || kinds["counter"] != 1 || kinds["chain"] != 1 || kinds["rule"] != 2 || !strings.Contains(string(out), `"packets":3`) {
				t.Errorf("inet listing %v:\n%s", kinds, out)
			}
		}
	}
	if _, err := o.Runner().Run(ctx, "nft", "list", "ruleset"); err == nil {
		t.Error("an unknown nft command succeeded")
	}
	if u := o.Runner().Unexpected(); len(u) != 1 {
		t.Errorf("unexpected commands %q; want the one unknown", u)
	}
}

func TestIsolatedPort(t *testing.T) {
	o := New()
	runSteps(t, o, []step{
		{cmd: "ip link add br0 type bridge"},
		{cmd: "ip tuntap add dev t0 mode tap"},
		{cmd: "ip link set dev t0 type bridge_slave isolated on", wantErr: true}, // not a port yet
		{cmd: "ip link set dev t0 master br0 up"},
		{cmd: "ip link set dev t0 type bridge_slave isolated on"},
		{cmd: "ip link set dev nope type bridge_slave isolated on", wantErr: true},
	})
	if !strings.Contains(o.String(), "link t0 tap master=br0 up isolated\n") {
		t.Errorf("state:\n%s", o)
	}
	out, err := o.Runner().Run(context.Background(), "ip", "-j", "-d", "link", "show", "dev", "t0")
	if err != nil || !strings.Contains(string(out), `"isolated":true`) {
		t.Errorf("ip -j -d link show: %s %v", out, err)
	}
	// Leaving the bridge drops the flag.
	runSteps(t, o, []step{{cmd: "ip link set dev t0 nomaster"}, {cmd: "ip link set dev t0 master br0"}})
	if strings.Contains(o.String(), "isolated") {
		t.Errorf("isolation survived leaving the bridge:\n%s", o)
	}
}
