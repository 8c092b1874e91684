package network

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/testutil"
)

// nsRunner runs every command inside a network namespace.
type nsRunner struct{ ns string }

func (r nsRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return hostexec.Real{}.Run(ctx, "ip", append([]string{"netns", "exec", r.ns, name}, args...)...)
}

// newNetns creates a network namespace that is deleted, with everything
// in it, when the test ends.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	ns := fmt.Sprintf("bgnet-%s-%d", role, os.Getpid())
	ctx := context.Background()
	if _, err := (hostexec.Real{}).Run(ctx, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := (hostexec.Real{}).Run(context.Background(), "ip", "netns", "del", ns); err != nil {
			t.Errorf("delete netns: %v", err)
		}
	})
	nsRun(t, ns, "ip link set lo up")
	return ns
}

// nsRun runs a command line (split on spaces) inside ns and returns its
// output.
func nsRun(t *testing.T, ns, cmdline string) string {
	t.Helper()
	argv := strings.Fields(cmdline)
	out, err := nsRunner{ns}.Run(context.Background(), argv[0], argv[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// inNetns runs fn on an OS thread that has joined ns. Sockets that fn
// creates stay in ns after it returns and can be used from any
// goroutine. The thread is never unlocked, so the runtime throws it away
// instead of reusing it in the wrong namespace.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// hostSnapshot is what the test must not change in the host's own
// namespace: banger-tagged rules and links with the test's names.
func hostSnapshot(t *testing.T, names ...string) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		out, err := (hostexec.Real{}).Run(ctx, "iptables", "-w", "-t", table, "-S")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, tagPrefix) {
				b.WriteString(line + "\n")
			}
		}
	}
	out, err := (hostexec.Real{}).Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, n := range names {
			if strings.Contains(line, n) {
				b.WriteString(line + "\n")
			}
		}
	}
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString("ip_forward=" + string(fwd))
	return b.String()
}

// TestIntegrationNetns drives the bridge, the tap pool, NAT and the DNS
// server against the real ip, iptables and kernel, inside throwaway
// network namespaces: "host" plays the daemon's host, "guest" a VM
// behind the bridge (a veth stands in for the tap, which needs a VMM),
// "up" the internet beyond the host.
func TestIntegrationNetns(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip", "iptables", "sysctl")
	ctx := context.Background()
	before := hostSnapshot(t, "bgitbr", "bgit")
	t.Cleanup(func() {
		if after := hostSnapshot(t, "bgitbr", "bgit"); after != before {
			t.Errorf("the host namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
	hostNS := newNetns(t, "host")
	run := nsRunner{hostNS}
	cfg := Config{BridgeName: "bgitbr", BridgeIP: "10.213.7.1", CIDR: "24", TapPoolSize: 2, TapPrefix: "bgit", DNSDomain: "banger"}
	m, err := New(cfg, run, nil)
	must(t, err)

	// Bridge.
	must(t, m.EnsureBridge(ctx))
	must(t, m.EnsureBridge(ctx))
	if out := nsRun(t, hostNS, "ip -o -4 addr show dev bgitbr"); !strings.Contains(out, "inet 10.213.7.1/24") {
		t.Errorf("bridge address: %s", out)
	}

	// Tap pool.
	must(t, m.Sync(ctx, nil))
	wantTaps(t, m, "bgit0@bgitbr,up bgit1@bgitbr,up")
	for _, want := range []string{"bgit0", "bgit1", "bgit2"} {
		got, err := m.Acquire(ctx)
		must(t, err)
		if got != want {
			t.Errorf("Acquire = %s, want %s", got, want)
		}
	}
	wantTaps(t, m, "bgit0@bgitbr,up bgit1@bgitbr,up bgit2@bgitbr,up")
	for _, tap := range []string{"bgit0", "bgit2", "bgit1"} {
		must(t, m.Release(ctx, tap))
	}
	wantTaps(t, m, "bgit0@bgitbr,up bgit2@bgitbr,up")

	// A daemon restart: a new Manager, bgit0 held by a running VM, two
	// orphans left by a crash (one detached).
	nsRun(t, hostNS, "ip tuntap add dev bgit5 mode tap")
	nsRun(t, hostNS, "ip tuntap add dev bgit6 mode tap")
	nsRun(t, hostNS, "ip link set dev bgit6 master bgitbr up")
	m, err = New(cfg, run, nil)
	must(t, err)
	must(t, m.Sync(ctx, []string{"bgit0"}))
	wantTaps(t, m, "bgit0@bgitbr,up bgit2@bgitbr,up bgit5@bgitbr,up")
	free, inUse := m.Pool()
	if !slices.Equal(free, []string{"bgit2", "bgit5"}) || !slices.Equal(inUse, []string{"bgit0"}) {
		t.Errorf("pool after restart: free %q, in use %q", free, inUse)
	}

	// NAT, with a guest and an upstream network to prove it works.
	guestNS, upNS := newNetns(t, "guest"), newNetns(t, "up")
	nsRun(t, hostNS, "ip link add bgitg0 type veth peer name eth0 netns "+guestNS)
	nsRun(t, hostNS, "ip link set dev bgitg0 master bgitbr up")
	nsRun(t, guestNS, "ip addr add 10.213.7.2/24 dev eth0")
	nsRun(t, guestNS, "ip link set dev eth0 up")
	nsRun(t, guestNS, "ip route add default via 10.213.7.1")
	nsRun(t, hostNS, "ip link add bgitu0 type veth peer name eth0 netns "+upNS)
	nsRun(t, hostNS, "ip addr add 10.213.8.1/24 dev bgitu0")
	nsRun(t, hostNS, "ip link set dev bgitu0 up")
	nsRun(t, upNS, "ip addr add 10.213.8.2/24 dev eth0")
	nsRun(t, upNS, "ip link set dev eth0 up")
	// Like a host running Docker: forwarding dropped unless accepted.
	nsRun(t, hostNS, "iptables -w -P FORWARD DROP")
	nsRun(t, hostNS, "iptables -w -A FORWARD -j DROP")

	var ln net.Listener
	must(t, inNetns(upNS, func() error {
		var err error
		ln, err = net.Listen("tcp", "10.213.8.2:0")
		return err
	}))
	defer ln.Close()
	accepted := make(chan net.Addr, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr()
			c.Close()
		}
	}()
	dial := func() error {
		return inNetns(guestNS, func() error {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 1500*time.Millisecond)
			if err != nil {
				return err
			}
			return c.Close()
		})
	}
	if err := dial(); err == nil {
		t.Error("guest reached upstream before NAT was enabled")
	}

	id1, id2 := newID(t), newID(t)
	n1 := NAT{VMID: id1, GuestIP: "10.213.7.2", Tap: "bgit0"}
	n2 := NAT{VMID: id2, GuestIP: "10.213.7.3", Tap: "bgit2"}
	must(t, m.EnableNAT(ctx, n1))
	must(t, m.EnableNAT(ctx, n2))
	must(t, m.EnableNAT(ctx, n1))
	tag1 := natTag(n1)
	wantForward := []string{
		"-P FORWARD DROP",
		fmt.Sprintf(`-A FORWARD -s 10.213.7.3/32 -i bgitbr -m comment --comment "%s" -j ACCEPT`, natTag(n2)),
		fmt.Sprintf(`-A FORWARD -d 10.213.7.3/32 -o bgitbr -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "%s" -j ACCEPT`, natTag(n2)),
		fmt.Sprintf(`-A FORWARD -s 10.213.7.2/32 -i bgitbr -m comment --comment "%s" -j ACCEPT`, tag1),
		fmt.Sprintf(`-A FORWARD -d 10.213.7.2/32 -o bgitbr -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "%s" -j ACCEPT`, tag1),
		"-A FORWARD -j DROP",
	}
	if got := lines(nsRun(t, hostNS, "iptables -w -S FORWARD")); !slices.Equal(got, wantForward) {
		t.Errorf("iptables -S FORWARD:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantForward, "\n"))
	}
	wantPost := []string{
		"-P POSTROUTING ACCEPT",
		fmt.Sprintf(`-A POSTROUTING -s 10.213.7.3/32 ! -o bgitbr -m comment --comment "%s" -j MASQUERADE`, natTag(n2)),
		fmt.Sprintf(`-A POSTROUTING -s 10.213.7.2/32 ! -o bgitbr -m comment --comment "%s" -j MASQUERADE`, tag1),
	}
	if got := lines(nsRun(t, hostNS, "iptables -w -t nat -S POSTROUTING")); !slices.Equal(got, wantPost) {
		t.Errorf("iptables -t nat -S POSTROUTING:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantPost, "\n"))
	}
	if got := strings.TrimSpace(nsRun(t, hostNS, "sysctl -n net.ipv4.ip_forward")); got != "1" {
		t.Errorf("ip_forward in the namespace = %s", got)
	}
	list, err := m.ListNAT(ctx)
	must(t, err)
	wantList := []NAT{
		{VMID: model.ShortID(id1), GuestIP: "10.213.7.2", Tap: "bgit0"},
		{VMID: model.ShortID(id2), GuestIP: "10.213.7.3", Tap: "bgit2"},
	}
	slices.SortFunc(wantList, func(a, b NAT) int { return strings.Compare(a.VMID, b.VMID) })
	if !slices.Equal(list, wantList) {
		t.Errorf("ListNAT = %+v, want %+v (none partial)", list, wantList)
	}

	// The guest reaches upstream, masqueraded behind the host's address.
	if err := dial(); err != nil {
		t.Errorf("guest could not reach upstream with NAT on: %v", err)
	} else if src := (<-accepted).(*net.TCPAddr).IP.String(); src != "10.213.8.1" {
		t.Errorf("upstream saw the guest as %s, want the masqueraded 10.213.8.1", src)
	}

	// Disabling removes exactly vm1's rules, and the guest is cut off.
	must(t, m.DisableNAT(ctx, n1))
	must(t, m.DisableNAT(ctx, n1))
	for _, args := range []string{"iptables -w -S", "iptables -w -t nat -S"} {
		if out := nsRun(t, hostNS, args); strings.Contains(out, model.ShortID(id1)) {
			t.Errorf("%s still has vm1's rules:\n%s", args, out)
		}
	}
	if err := dial(); err == nil {
		t.Error("guest reached upstream after NAT was disabled")
	}
	// Orphans: vm2 is not kept.
	removed, err := m.RemoveOrphanRules(ctx, []string{id1})
	must(t, err)
	if len(removed) != 1 || removed[0].VMID != model.ShortID(id2) {
		t.Errorf("RemoveOrphanRules = %+v, want vm2's", removed)
	}
	for _, args := range []string{"iptables -w -S", "iptables -w -t nat -S"} {
		if out := nsRun(t, hostNS, args); strings.Contains(out, tagPrefix) {
			t.Errorf("%s still has tagged rules:\n%s", args, out)
		}
	}

	// DNS on the bridge address, queried from inside the namespace.
	srv, err := NewDNSServer(cfg.DNSDomain, nil)
	must(t, err)
	must(t, srv.Set("dev", "10.213.7.2"))
	var udpConn, tcpConn net.Conn
	must(t, inNetns(hostNS, func() error {
		if err := srv.Listen(net.JoinHostPort(cfg.BridgeIP, "53")); err != nil {
			return err
		}
		var err error
		if udpConn, err = net.Dial("udp", srv.Addr()); err != nil {
			return err
		}
		tcpConn, err = net.Dial("tcp", srv.Addr())
		return err
	}))
	defer udpConn.Close()
	defer tcpConn.Close()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx) }()
	for _, c := range []net.Conn{udpConn, tcpConn} {
		co := &dns.Conn{Conn: c}
		req := new(dns.Msg)
		req.SetQuestion("dev.banger.", dns.TypeA)
		must(t, co.SetDeadline(time.Now().Add(5*time.Second)))
		must(t, co.WriteMsg(req))
		resp, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("dns over %s: %v", c.LocalAddr().Network(), err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "10.213.7.2" {
			t.Errorf("dns over %s: %v", c.LocalAddr().Network(), resp)
		}
	}
	must(t, srv.Close())
	if err := <-serveErr; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func wantTaps(t *testing.T, m *Manager, want string) {
	t.Helper()
	taps, err := m.ListTaps(context.Background())
	must(t, err)
	var got []string
	for _, tp := range taps {
		s := tp.Name + "@" + tp.Master
		if tp.Up {
			s += ",up"
		}
		got = append(got, s)
	}
	if g := strings.Join(got, " "); g != want {
		t.Errorf("taps: %s, want %s", g, want)
	}
}

func lines(s string) []string {
	return strings.Split(strings.TrimSpace(s), "\n")
}

func newID(t *testing.T) string {
	t.Helper()
	id, err := model.NewID()
	must(t, err)
	return id
}

// TestIntegrationNetlinkLink checks that the netlink reader reports a
// link as `ip -j -d addr show dev` does: a bridge with its address, a
// tap enslaved and isolated, a veth, a name nobody has.
func TestIntegrationNetlinkLink(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip")
	ns := newNetns(t, "nl")
	for _, c := range []string{
		"ip link add br-nl type bridge", "ip addr add 172.30.9.1/24 dev br-nl", "ip link set br-nl up",
		"ip tuntap add dev bgtap0 mode tap", "ip link set dev bgtap0 master br-nl up",
		"ip link set dev bgtap0 type bridge_slave isolated on",
		"ip tuntap add dev bgtap1 mode tap",
		"ip link add ve-a type veth peer name ve-b",
	} {
		nsRun(t, ns, c)
	}
	m, err := New(Config{BridgeName: "br-nl", BridgeIP: "172.30.9.1", CIDR: "24"}, nsRunner{ns}, nil)
	must(t, err)
	ctx := context.Background()
	for _, name := range []string{"br-nl", "bgtap0", "bgtap1", "ve-a", "nosuch0"} {
		want, wok, err := m.readLinkIP(ctx, name)
		must(t, err)
		var got link
		var gok bool
		err = inNetns(ns, func() error {
			var err error
			got, gok, err = netlinkLink(ctx, name)
			return err
		})
		must(t, err)
		if gok != wok || fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
			t.Errorf("%s: netlink %+v (%v), ip %+v (%v)", name, got, gok, want, wok)
		}
		if name == "bgtap0" && (got.Kind != "tap" || got.Master != "br-nl" || !got.Isolated || !got.Up) {
			t.Errorf("bgtap0 read as %+v; want an isolated tap port of br-nl, up", got)
		}
	}
}
