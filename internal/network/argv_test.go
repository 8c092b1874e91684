package network

import (
	"slices"
	"strings"
	"testing"
)

func TestIPArgv(t *testing.T) {
	tests := []struct {
		name string
		got  []string
		want string
	}{
		{"list", listLinksArgv(), "-j -d addr show"},
		{"bridge", addBridgeArgv("br-fc"), "link add br-fc type bridge"},
		{"addr", addAddrArgv("br-fc", "172.16.0.1/24"), "addr add 172.16.0.1/24 dev br-fc"},
		{"up", linkUpArgv("br-fc"), "link set dev br-fc up"},
		{"tap", addTapArgv("bgtap3"), "tuntap add dev bgtap3 mode tap"},
		{"master", setMasterArgv("bgtap3", "br-fc"), "link set dev bgtap3 master br-fc up"},
		{"del", delLinkArgv("bgtap3"), "link del dev bgtap3"},
		{"isolate", isolateArgv("bgtap3"), "link set dev bgtap3 type bridge_slave isolated on"},
	}
	for _, tt := range tests {
		if got := strings.Join(tt.got, " "); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestNATArgv(t *testing.T) {
	n := NAT{VMID: "0123456789abcdef0123", GuestIP: "172.16.0.2", Tap: "bgtap0"}
	rules := natRules(n, "br-fc")
	tag := "banger:vm=0123456789ab:tap=bgtap0:ip=172.16.0.2"
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{"check masquerade", checkRuleArgv(rules[0]),
			[]string{"-w", "-t", "nat", "-C", "POSTROUTING", "-s", "172.16.0.2/32", "!", "-o", "br-fc", "-m", "comment", "--comment", tag, "-j", "MASQUERADE"}},
		{"insert inbound", insertRuleArgv(rules[1]),
			[]string{"-w", "-t", "filter", "-I", "FORWARD", "1", "-d", "172.16.0.2/32", "-o", "br-fc", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-m", "comment", "--comment", tag, "-j", "ACCEPT"}},
		{"delete outbound", deleteRuleArgv(rules[2]),
			[]string{"-w", "-t", "filter", "-D", "FORWARD", "-s", "172.16.0.2/32", "-i", "br-fc", "-m", "comment", "--comment", tag, "-j", "ACCEPT"}},
		{"list", listRulesArgv("nat", "POSTROUTING"), []string{"-w", "-t", "nat", "-S", "POSTROUTING"}},
	}
	for _, tt := range tests {
		if !slices.Equal(tt.got, tt.want) {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestTag(t *testing.T) {
	tests := []struct {
		in     NAT
		want   string
		parsed NAT
	}{
		{NAT{VMID: "0123456789abcdef", GuestIP: "172.16.0.2", Tap: "bgtap0"}, "banger:vm=0123456789ab:tap=bgtap0:ip=172.16.0.2",
			NAT{VMID: "0123456789ab", GuestIP: "172.16.0.2", Tap: "bgtap0"}},
		{NAT{VMID: "short", GuestIP: "10.0.0.9", Tap: "bgtap12"}, "banger:vm=short:tap=bgtap12:ip=10.0.0.9",
			NAT{VMID: "short", GuestIP: "10.0.0.9", Tap: "bgtap12"}},
	}
	for _, tt := range tests {
		got := natTag(tt.in)
		if got != tt.want {
			t.Errorf("natTag(%+v) = %q, want %q", tt.in, got, tt.want)
		}
		back, ok := parseTag(got)
		if !ok || back != tt.parsed {
			t.Errorf("parseTag(%q) = %+v, %v; want %+v", got, back, ok, tt.parsed)
		}
	}
	for _, bad := range []string{"", "docker", "banger:", "banger:tap=bgtap0", "xbanger:vm=a"} {
		if n, ok := parseTag(bad); ok {
			t.Errorf("parseTag(%q) = %+v, want not ours", bad, n)
		}
	}
}

func TestSplitRuleLine(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A FORWARD -s 10.0.0.2/32 -i br -j ACCEPT`, []string{"-A", "FORWARD", "-s", "10.0.0.2/32", "-i", "br", "-j", "ACCEPT"}},
		{`-A POSTROUTING ! -o br -m comment --comment "banger:vm=a:tap=b" -j MASQUERADE`,
			[]string{"-A", "POSTROUTING", "!", "-o", "br", "-m", "comment", "--comment", "banger:vm=a:tap=b", "-j", "MASQUERADE"}},
		{`-A X -m comment --comment "a \"b\" c\\d" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", `a "b" c\d`, "-j", "ACCEPT"}},
		{`-A X -m comment --comment "" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", "", "-j", "ACCEPT"}},
		{"", nil},
	}
	for _, tt := range tests {
		if got := splitRuleLine(tt.line); !slices.Equal(got, tt.want) {
			t.Errorf("splitRuleLine(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestParseRules(t *testing.T) {
	out := "-P FORWARD DROP\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n" +
		`-A FORWARD -s 172.16.0.2/32 -i br-fc -m comment --comment "banger:vm=abc:tap=bgtap0:ip=172.16.0.2" -j ACCEPT` + "\n"
	got := parseRules("filter", out)
	if len(got) != 2 || got[0].Chain != "FORWARD" || ruleComment(got[0].Spec) != "" ||
		ruleComment(got[1].Spec) != "banger:vm=abc:tap=bgtap0:ip=172.16.0.2" {
		t.Errorf("parseRules = %+v", got)
	}
}

// ipOutput is `ip -j -d addr show` from iproute2 6.1, cut down.
const ipOutput = `[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536,"operstate":"DOWN","addr_info":[]},
{"ifindex":2,"ifname":"brx","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"operstate":"DOWN","linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":0}},"addr_info":[{"family":"inet","local":"10.9.0.1","prefixlen":24,"scope":"global","label":"brx"},{"family":"inet6","local":"fe80::9899:f7ff:fe51:926f","prefixlen":64,"scope":"link"}]},
{"ifindex":3,"ifname":"bgtap0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"master":"brx","operstate":"DOWN","linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"vnet_hdr":false,"multi_queue":false,"persist":true},"info_slave_kind":"bridge","info_slave_data":{"state":"disabled"}},"addr_info":[]},
{"ifindex":4,"ifname":"bgtap1","flags":["BROADCAST","MULTICAST"],"operstate":"DOWN","linkinfo":{"info_kind":"tun","info_data":{"type":"tun"}}},
{"ifindex":5,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UP"}]`

func TestParseLinks(t *testing.T) {
	links, err := parseLinks([]byte(ipOutput))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range links {
		got = append(got, strings.TrimSpace(l.Name+" "+l.Kind+" master="+l.Master+" up="+boolStr(l.Up)+" "+strings.Join(l.Addrs, ",")))
	}
	want := []string{
		"lo  master= up=false",
		"brx bridge master= up=true 10.9.0.1/24",
		"bgtap0 tap master=brx up=true",
		"bgtap1 tun master= up=false",
		"eth0  master= up=true",
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseLinks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := parseLinks([]byte("Device \"x\" does not exist.")); err == nil {
		t.Error("parseLinks of garbage: want error")
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestConfigValidate(t *testing.T) {
	good := Config{BridgeName: "br-fc", BridgeIP: "172.16.0.1", CIDR: "24", TapPoolSize: 4}
	tests := []struct {
		name   string
		mutate func(*Config)
		ok     bool
	}{
		{"defaults", func(*Config) {}, true},
		{"bridge name too long", func(c *Config) { c.BridgeName = "a-very-long-bridge" }, false},
		{"bridge name with colon", func(c *Config) { c.BridgeName = "br:0" }, false},
		{"tap prefix too long", func(c *Config) { c.TapPrefix = "abcdefghijkl" }, false},
		{"tap prefix with slash", func(c *Config) { c.TapPrefix = "a/b" }, false},
		{"bad ip", func(c *Config) { c.BridgeIP = "nope" }, false},
		{"bad cidr", func(c *Config) { c.CIDR = "33" }, false},
		{"negative pool", func(c *Config) { c.TapPoolSize = -1 }, false},
	}
	for _, tt := range tests {
		c := good
		tt.mutate(&c)
		m, err := New(c, nil, nil)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err == nil && m.Config().TapPrefix != DefaultTapPrefix {
			t.Errorf("%s: tap prefix %q, want the default", tt.name, m.Config().TapPrefix)
		}
	}
}
