package fakeos

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"banger/internal/hostexec"
)

// step is one command and whether it should succeed.
type step struct {
	cmd     string
	wantErr bool
	wantOut string // compared when not empty
}

func runSteps(t *testing.T, o *OS, steps []step) {
	t.Helper()
	ctx := context.Background()
	for _, s := range steps {
		argv := splitArgs(s.cmd)
		out, err := o.Runner().Run(ctx, argv[0], argv[1:]...)
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: err = %v, want error %v", s.cmd, err, s.wantErr)
		}
		if s.wantOut != "" && string(out) != s.wantOut {
			t.Fatalf("%s: output\n%s\nwant\n%s", s.cmd, out, s.wantOut)
		}
	}
}

// splitArgs splits on spaces, keeping single-quoted words whole.
func splitArgs(s string) []string {
	var words []string
	for i, part := range strings.Split(s, "'") {
		if i%2 == 1 {
			words = append(words, part)
			continue
		}
		words = append(words, strings.Fields(part)...)
	}
	return words
}

func TestIPLinks(t *testing.T) {
	o := New()
	runSteps(t, o, []step{
		{cmd: "ip link add br0 type bridge"},
		{cmd: "ip link add br0 type bridge", wantErr: true},
		{cmd: "ip addr add 10.0.0.1/24 dev br0"},
		{cmd: "ip addr add 10.0.0.1/24 dev br0", wantErr: true},
		{cmd: "ip addr add 10.0.0.1/24 dev nope", wantErr: true},
		{cmd: "ip link set dev br0 up"},
		{cmd: "ip tuntap add dev t0 mode tap"},
		{cmd: "ip tuntap add dev t0 mode tap", wantErr: true},
		{cmd: "ip tuntap add dev t1 mode tap"},
		{cmd: "ip tuntap add dev t2 mode tap"},
		{cmd: "ip link set dev t0 master br0 up"},
		{cmd: "ip link set dev t1 master br0"},
		{cmd: "ip link set dev t1 master nope up", wantErr: true},
		{cmd: "ip link set dev t1 master t2", wantErr: true},
		{cmd: "ip link set dev nope up", wantErr: true},
		{cmd: "ip link del dev t2"},
		{cmd: "ip link del dev t2", wantErr: true},
		{cmd: "ip tuntap del dev t2 mode tap"}, // like the real one: a missing device is fine
		{cmd: "ip tuntap del dev br0 mode tap", wantErr: true},
	})
	want := "link br0 bridge up 10.0.0.1/24\n" +
		"link t0 tap master=br0 up\n" +
		"link t1 tap master=br0\n" +
		"sysctl net.ipv4.ip_forward=0\n"
	if got := o.String(); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
	runSteps(t, o, []step{{cmd: "ip link del br0"}})
	want = "link t0 tap up\nlink t1 tap\nsysctl net.ipv4.ip_forward=0\n"
	if got := o.String(); got != want {
		t.Errorf("after deleting the bridge:\n%s\nwant:\n%s", got, want)
	}
}

func TestIPShowJSON(t *testing.T) {
	o := New()
	runSteps(t, o, []step{
		{cmd: "ip link add br0 type bridge"},
		{cmd: "ip addr add 10.0.0.1/24 dev br0"},
		{cmd: "ip tuntap add dev t0 mode tap"},
		{cmd: "ip link set dev t0 master br0 up"},
	})
	out, err := o.Runner().Run(context.Background(), "ip", "-j", "-d", "addr", "show")
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		IfName   string   `json:"ifname"`
		Flags    []string `json:"flags"`
		Master   string   `json:"master"`
		LinkInfo *struct {
			InfoKind string `json:"info_kind"`
			InfoData struct {
				Type string `json:"type"`
			} `json:"info_data"`
		} `json:"linkinfo"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var got []string
	for _, l := range links {
		s := l.IfName + " " + strings.Join(l.Flags, ",") + " master=" + l.Master
		if l.LinkInfo != nil {
			s += " kind=" + l.LinkInfo.InfoKind + "/" + l.LinkInfo.InfoData.Type
		}
		for _, a := range l.AddrInfo {
			s += " " + a.Local
		}
		got = append(got, s)
	}
	want := []string{
		"lo LOOPBACK,UP master=",
		"br0 BROADCAST,MULTICAST master= kind=bridge/ 10.0.0.1",
		"t0 BROADCAST,MULTICAST,UP master=br0 kind=tun/tap",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ip -j -d addr show:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	runSteps(t, o, []step{
		{cmd: "ip -j link show dev nope", wantErr: true},
		{cmd: "ip link show", wantErr: true}, // only JSON is implemented
	})
}

func TestIPTables(t *testing.T) {
	o := New()
	tag := "'banger:vm=abc:tap=t0'"
	runSteps(t, o, []step{
		{cmd: "iptables -w -t nat -A POSTROUTING -s 10.0.0.2 ! -o br0 -m comment --comment " + tag + " -j MASQUERADE"},
		{cmd: "iptables -w -t nat -C POSTROUTING -s 10.0.0.2/32 ! -o br0 -m comment --comment " + tag + " -j MASQUERADE"},
		// The same rule with the options in another order is the same rule.
		{cmd: "iptables -w -t nat -C POSTROUTING ! -o br0 -s 10.0.0.2/32 -m comment --comment " + tag + " -j MASQUERADE"},
		// Another comment is another rule.
		{cmd: "iptables -w -t nat -C POSTROUTING -s 10.0.0.2/32 ! -o br0 -m comment --comment 'banger:vm=abc:tap=t1' -j MASQUERADE", wantErr: true},
		{cmd: "iptables -w -t nat -D POSTROUTING -s 10.0.0.2/32 ! -o br0 -m comment --comment 'banger:vm=abc:tap=t1' -j MASQUERADE", wantErr: true},
		{cmd: "iptables -A FORWARD -j DROP"},
		{cmd: "iptables -w -I FORWARD 1 -i br0 -s 10.0.0.2/32 -j ACCEPT"},
		{cmd: "iptables -w -I FORWARD 2 -o br0 -d 10.0.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"},
		{cmd: "iptables -w -I FORWARD 9 -j ACCEPT", wantErr: true},
		{cmd: "iptables -w -t nope -S", wantErr: true},
		{cmd: "iptables -w -S NOPE", wantErr: true},
		{cmd: "iptables -w -A FORWARD --frobnicate 1 -j ACCEPT", wantErr: true},
		{cmd: "iptables -w -L", wantErr: true},
	})
	want := "rule filter/FORWARD -s 10.0.0.2/32 -i br0 -j ACCEPT\n" +
		"rule filter/FORWARD -d 10.0.0.2/32 -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n" +
		"rule filter/FORWARD -j DROP\n" +
		`rule nat/POSTROUTING -s 10.0.0.2/32 ! -o br0 -m comment --comment "banger:vm=abc:tap=t0" -j MASQUERADE` + "\n" +
		"sysctl net.ipv4.ip_forward=0\n"
	if got := o.String(); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
	runSteps(t, o, []step{
		{cmd: "iptables -w -t nat -S POSTROUTING", wantOut: "-P POSTROUTING ACCEPT\n" +
			`-A POSTROUTING -s 10.0.0.2/32 ! -o br0 -m comment --comment "banger:vm=abc:tap=t0" -j MASQUERADE` + "\n"},
		{cmd: "iptables -w -D FORWARD -j DROP"},
		{cmd: "iptables -w -D FORWARD -j DROP", wantErr: true},
		{cmd: "iptables -w -S", wantOut: "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n" +
			"-A FORWARD -s 10.0.0.2/32 -i br0 -j ACCEPT\n" +
			"-A FORWARD -d 10.0.0.2/32 -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"},
	})
	if u := o.Runner().Unexpected(); len(u) != 2 || !strings.Contains(u[0], "--frobnicate") || !strings.Contains(u[1], "-L") {
		t.Errorf("unexpected = %q, want the --frobnicate and -L commands", u)
	}
}

func TestIPTablesCommentQuoting(t *testing.T) {
	o := New()
	ctx := context.Background()
	if _, err := o.Runner().Run(ctx, "iptables", "-A", "FORWARD", "-m", "comment", "--comment", `a "b" c\d`, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	out, err := o.Runner().Run(ctx, "iptables", "-S", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	want := "-P FORWARD ACCEPT\n" + `-A FORWARD -m comment --comment "a \"b\" c\\d" -j ACCEPT` + "\n"
	if string(out) != want {
		t.Errorf("got %s want %s", out, want)
	}
}

func TestSysctl(t *testing.T) {
	o := New()
	runSteps(t, o, []step{
		{cmd: "sysctl -n net.ipv4.ip_forward", wantOut: "0\n"},
		{cmd: "sysctl -w net.ipv4.ip_forward=1", wantOut: "net.ipv4.ip_forward = 1\n"},
		{cmd: "sysctl net.ipv4.ip_forward", wantOut: "net.ipv4.ip_forward = 1\n"},
		{cmd: "sysctl -n net.ipv4.nope", wantErr: true},
		{cmd: "sysctl -w net.ipv4.nope=1", wantErr: true},
		{cmd: "sysctl -a", wantErr: true},
	})
	if got, want := o.String(), "sysctl net.ipv4.ip_forward=1\n"; got != want {
		t.Errorf("state %q, want %q", got, want)
	}
	_, err := o.Runner().Run(context.Background(), "sysctl", "-a")
	if !errors.Is(err, hostexec.ErrUnexpected) {
		t.Errorf("sysctl -a: %v, want ErrUnexpected", err)
	}
}
