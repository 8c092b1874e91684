package network

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/testutil"
)

// RunStdin lets nsRunner feed nft scripts.
func (r nsRunner) RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	return hostexec.Real{}.RunStdin(ctx, stdin, "ip", append([]string{"netns", "exec", r.ns, name}, args...)...)
}

// fguest is a stand-in for a VM: a namespace whose eth0 is a veth peer of
// a port on the bridge, named like banger's taps.
type fguest struct {
	ns, port, ip, mac string
}

func addFilterGuest(t *testing.T, hostNS, role, port, ip, mac string) fguest {
	t.Helper()
	g := fguest{ns: newNetns(t, role), port: port, ip: ip, mac: mac}
	nsRun(t, hostNS, "ip link add "+port+" type veth peer name eth0 netns "+g.ns)
	nsRun(t, hostNS, "ip link set dev "+port+" master bgfbr up")
	// What attach does for a tap.
	nsRun(t, hostNS, "ip link set dev "+port+" type bridge_slave isolated on")
	nsRun(t, g.ns, "ip link set dev eth0 address "+mac)
	nsRun(t, g.ns, "ip addr add "+ip+"/24 dev eth0")
	nsRun(t, g.ns, "ip link set dev eth0 up")
	nsRun(t, g.ns, "ip route add default via 10.213.9.1")
	return g
}

// listen opens a TCP listener in ns that echoes one line per connection.
func listen(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	must(t, inNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln
}

// dialFrom connects from ns (from local, if set) and checks the echo.
func dialFrom(ns, local, addr string) error {
	return inNetns(ns, func() error {
		d := net.Dialer{Timeout: 1200 * time.Millisecond}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c)
	})
}

func echo(c net.Conn) error {
	c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

// TestIntegrationFilter checks the filter with the real nft and kernel:
// "fhost" plays the daemon's host with the bridge, g1 and g2 two guests
// on isolated ports, "fup" the world beyond the host. Changes of elements
// only (an open VM's start and stop) go over netlink, as in the daemon;
// the rest through nft.
func TestIntegrationFilter(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip", "nft")
	ctx := context.Background()
	hostNS := newNetns(t, "fhost")
	cfg := Config{BridgeName: "bgfbr", BridgeIP: "10.213.9.1", CIDR: "24", TapPrefix: "bgfv", DNSDomain: "banger", EgressLogGroup: 77}
	m, err := New(cfg, nsRunner{hostNS}, nil)
	must(t, err)
	nsf, err := os.Open("/run/netns/" + hostNS)
	must(t, err)
	defer nsf.Close()
	m.elems = &netlinkElems{netns: int(nsf.Fd())}
	must(t, m.EnsureBridge(ctx))
	must(t, m.EnsureFilter(ctx))
	must(t, m.EnsureFilter(ctx))
	if _, ok, err := m.FilterStatus(ctx); err != nil || !ok {
		t.Fatalf("base filter not whole as the real nft lists it: %v %v", ok, err)
	}
	nsRun(t, hostNS, "nft flush chain inet banger forward")
	if _, ok, _ := m.FilterStatus(ctx); ok {
		t.Error("base filter whole with its forward chain flushed")
	}
	must(t, m.EnsureFilter(ctx))
	nsRun(t, hostNS, "sysctl -qw net.ipv4.ip_forward=1")

	g1 := addFilterGuest(t, hostNS, "fg1", "bgfv1", "10.213.9.2", "06:00:0a:d5:09:02")
	g2 := addFilterGuest(t, hostNS, "fg2", "bgfv2", "10.213.9.3", "06:00:0a:d5:09:03")
	upNS := newNetns(t, "fup")
	nsRun(t, hostNS, "ip link add bgfu0 type veth peer name eth0 netns "+upNS)
	nsRun(t, hostNS, "ip addr add 10.213.10.1/24 dev bgfu0")
	nsRun(t, hostNS, "ip link set dev bgfu0 up")
	nsRun(t, upNS, "ip addr add 10.213.10.2/24 dev eth0")
	nsRun(t, upNS, "ip addr add 10.213.10.3/24 dev eth0")
	nsRun(t, upNS, "ip link set dev eth0 up")
	nsRun(t, upNS, "ip route add 10.213.9.0/24 via 10.213.10.1")

	listen(t, upNS, "0.0.0.0:7001")
	listen(t, hostNS, "10.213.9.1:7002")  // a service on the bridge address
	listen(t, hostNS, "10.213.10.1:7003") // a service on another host address
	listen(t, hostNS, "10.213.9.1:53")    // the DNS port (TCP)
	listen(t, g1.ns, "0.0.0.0:7004")
	listen(t, g2.ns, "0.0.0.0:7004")
	up2, up3 := "10.213.10.2:7001", "10.213.10.3:7001"

	ok := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	refused := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: got through", what)
		}
	}

	// A port with no VM passes nothing.
	refused("g1 before its filter", dialFrom(g1.ns, "", up2))

	id1, id2 := newID(t), newID(t)
	f1 := Filter{VMID: id1, Tap: g1.port, GuestIP: g1.ip, GuestMAC: g1.mac}
	f2 := Filter{VMID: id2, Tap: g2.port, GuestIP: g2.ip, GuestMAC: g2.mac}
	must(t, m.EnableFilter(ctx, f1))
	must(t, m.EnableFilter(ctx, f2))
	must(t, m.EnableFilter(ctx, f1))

	if out := nsRun(t, hostNS, "nft list set bridge banger ident"); !strings.Contains(out, `"bgfv2" . `+g2.mac+` . `+g2.ip+` comment "vm-`+model.ShortID(id2)+`"`) {
		t.Errorf("ident as nft lists it after a netlink change:\n%s", out)
	}
	if infos, err := m.ListFilters(ctx); err != nil || len(infos) != 2 || infos[0].Partial || infos[1].Partial {
		t.Errorf("ListFilters of two open VMs = %+v, %v", infos, err)
	}
	ok("g1 to the outside (open)", dialFrom(g1.ns, "", up2))
	ok("the host to g1 (the daemon's SSH)", dialFrom(hostNS, "", g1.ip+":7004"))
	ok("the host to g2", dialFrom(hostNS, "", g2.ip+":7004"))
	ok("g1 to the DNS port on the bridge", dialFrom(g1.ns, "", "10.213.9.1:53"))
	refused("g1 to g2 on the bridge", dialFrom(g1.ns, "", g2.ip+":7004"))
	refused("g1 to a service on the bridge address", dialFrom(g1.ns, "", "10.213.9.1:7002"))
	refused("g1 to another host address", dialFrom(g1.ns, "", "10.213.10.1:7003"))
	// Routed through the host (each guest routes the other via the
	// gateway, so only the host's forwarding could join them).
	nsRun(t, g1.ns, "ip route add "+g2.ip+"/32 via 10.213.9.1")
	nsRun(t, g2.ns, "ip route add "+g1.ip+"/32 via 10.213.9.1")
	refused("g1 to g2 routed through the host", dialFrom(g1.ns, "", g2.ip+":7004"))
	nsRun(t, g1.ns, "ip route del "+g2.ip+"/32 via 10.213.9.1")

	// Spoofing. A spoofed packet needs no answer to do harm, so the
	// checks send one-way UDP to a listener outside, and look at what the
	// host and the bridge learned. g1 knows the gateway's MAC for good,
	// as an attacker would make sure of.
	brMAC := strings.TrimSpace(nsRun(t, hostNS, "cat /sys/class/net/bgfbr/address"))
	nsRun(t, g1.ns, "ip neigh replace 10.213.9.1 lladdr "+brMAC+" dev eth0 nud permanent")
	got := udpSink(t, upNS, "10.213.10.2:7005")
	sendUDP := func(from string) {
		t.Helper()
		must(t, inNetns(g1.ns, func() error {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, &net.UDPAddr{IP: net.ParseIP("10.213.10.2"), Port: 7005})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(from))
			return err
		}))
	}
	arrived := func(want string) bool {
		t.Helper()
		deadline := time.After(1500 * time.Millisecond)
		for {
			select {
			case src := <-got:
				if src == want {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	sendUDP(g1.ip)
	if !arrived(g1.ip) {
		t.Error("g1's own UDP did not arrive (the spoofing checks below would prove nothing)")
	}
	nsRun(t, g1.ns, "ip addr add 10.213.9.99/32 dev eth0")
	nsRun(t, g1.ns, "ip addr add "+g2.ip+"/32 dev eth0")
	for _, from := range []string{"10.213.9.99", g2.ip} {
		sendUDP(from)
		if arrived(from) {
			t.Errorf("g1 sent from %s and it arrived", from)
		}
	}
	// ARP: g1 tells the host that g2's address is at g1's MAC.
	ok("the host to g2 (learns g2's MAC)", dialFrom(hostNS, "", g2.ip+":7004"))
	sendARP(t, g1.ns, g1.mac, g2.ip, brMAC, "10.213.9.1")
	sendARP(t, g1.ns, g1.mac, g2.ip, "ff:ff:ff:ff:ff:ff", g2.ip)
	time.Sleep(200 * time.Millisecond)
	if out := nsRun(t, hostNS, "ip neigh show "+g2.ip); !strings.Contains(out, g2.mac) {
		t.Errorf("the host's neighbour entry for g2 after g1's ARP: %q, want %s", out, g2.mac)
	}
	nsRun(t, g1.ns, "ip addr del 10.213.9.99/32 dev eth0")
	nsRun(t, g1.ns, "ip addr del "+g2.ip+"/32 dev eth0")
	// MAC: g1 takes g2's MAC; the bridge must not learn it on g1's port.
	nsRun(t, g1.ns, "ip link set dev eth0 address "+g2.mac)
	sendUDP(g1.ip)
	if arrived(g1.ip) {
		t.Error("g1 sent with g2's MAC and it arrived")
	}
	if out := nsRun(t, hostNS, "bridge fdb show br bgfbr"); strings.Contains(out, g2.mac+" dev "+g1.port) {
		t.Errorf("the bridge learned g2's MAC on g1's port:\n%s", out)
	}
	ok("the host to g2 after g1 claimed its MAC", dialFrom(hostNS, "", g2.ip+":7004"))
	nsRun(t, g1.ns, "ip link set dev eth0 address "+g1.mac)
	ok("g1 with its own MAC again", dialFrom(g1.ns, "", up2))

	// Denied flows are reported over NFLOG.
	var lnErr error
	var dl *DeniedListener
	must(t, inNetns(hostNS, func() error { dl, lnErr = ListenDenied(77); return lnErr }))
	events := make(chan DeniedEvent, 64)
	lctx, lcancel := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	lwg.Add(1)
	go func() {
		defer lwg.Done()
		if err := dl.Serve(lctx, func(ev DeniedEvent) { events <- ev }); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	defer func() { lcancel(); lwg.Wait(); dl.Close() }()

	// Egress: none, live.
	var held net.Conn
	must(t, inNetns(g1.ns, func() error {
		var err error
		held, err = net.DialTimeout("tcp", up2, time.Second)
		return err
	}))
	defer held.Close()
	ok("a connection held open before the change", echo(held))
	f1.Egress = model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.213.10.2/32"}}
	must(t, m.EnableFilter(ctx, f1))
	ok("the held connection to an allowed address", echo(held))
	ok("g1 to an allowed address", dialFrom(g1.ns, "", up2))
	refused("g1 to an address not allowed", dialFrom(g1.ns, "", up3))
	select {
	case ev := <-events:
		if ev.VMID != model.ShortID(id1) || ev.Dst.String() != "10.213.10.3" || ev.Proto != "tcp" || ev.Port != 7001 {
			t.Errorf("denied event %+v", ev)
		}
	case <-time.After(3 * time.Second):
		t.Error("no NFLOG report of the denied connection")
	}
	if n, err := m.DeniedCount(ctx, id1); err != nil || n < 1 {
		t.Errorf("DeniedCount = %d, %v", n, err)
	}
	ok("g2 unaffected (open)", dialFrom(g2.ns, "", up3))

	// A name the daemon's DNS resolved lets its address through.
	must(t, m.AllowResolved(ctx, id1, []ResolvedAddr{{Addr: netip.MustParseAddr("10.213.10.3"), TTL: 30}}))
	ok("g1 to a resolved address", dialFrom(g1.ns, "", up3))

	f1.Egress = model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.213.10.3/32"}}
	must(t, m.EnableFilter(ctx, f1))
	refused("the held connection after its address left the policy", echo(held))
	f1.Egress = model.EgressPolicy{Mode: model.EgressNone}
	must(t, m.EnableFilter(ctx, f1))
	refused("g1 with egress none", dialFrom(g1.ns, "", up3))
	ok("the host still reaches g1 with egress none", dialFrom(hostNS, "", g1.ip+":7004"))
	ok("g1 still reaches the DNS port with egress none", dialFrom(g1.ns, "", "10.213.9.1:53"))

	infos, err := m.ListFilters(ctx)
	must(t, err)
	if len(infos) != 2 || infos[0].Partial || infos[1].Partial {
		t.Errorf("ListFilters = %+v", infos)
	}
	removed, err := m.RemoveOrphanFilters(ctx, []string{id1})
	must(t, err)
	if len(removed) != 1 || removed[0] != model.ShortID(id2) {
		t.Errorf("RemoveOrphanFilters = %v", removed)
	}
	refused("g2 after its filter went", dialFrom(g2.ns, "", up3))
	// Back to open (over netlink once the chain is gone), then a stop.
	f1.Egress = model.EgressPolicy{Mode: model.EgressOpen}
	must(t, m.EnableFilter(ctx, f1))
	ok("g1 open again", dialFrom(g1.ns, "", up3))
	must(t, m.DisableFilter(ctx, id1))
	refused("g1 after its filter went", dialFrom(g1.ns, "", up3))
	must(t, m.EnableFilter(ctx, f1))
	ok("g1 open after a netlink start", dialFrom(g1.ns, "", up3))
	must(t, m.DisableFilter(ctx, id1))
	must(t, m.DisableFilter(ctx, id1))
	if infos, err := m.ListFilters(ctx); err != nil || len(infos) != 0 {
		t.Errorf("ListFilters after every VM went = %+v, %v", infos, err)
	}
	out := nsRun(t, hostNS, "nft list ruleset")
	if strings.Contains(out, "vm-") {
		t.Errorf("per-VM objects left:\n%s", out)
	}
}

// udpSink collects the payloads of datagrams sent to addr in ns.
func udpSink(t *testing.T, ns, addr string) <-chan string {
	t.Helper()
	var pc net.PacketConn
	must(t, inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 256)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

// sendARP sends, from eth0 in ns, an ARP request that announces
// senderIP at senderMAC and asks for targetIP, to dstMAC.
func sendARP(t *testing.T, ns, senderMAC, senderIP, dstMAC, targetIP string) {
	t.Helper()
	smac, _ := net.ParseMAC(senderMAC)
	dmac, _ := net.ParseMAC(dstMAC)
	frame := append(append([]byte{}, dmac...), smac...)
	frame = append(frame, 0x08, 0x06)                     // ARP
	frame = append(frame, 0, 1, 0x08, 0, 6, 4, 0, 1)      // Ethernet, IPv4, request
	frame = append(frame, smac...)                        // sender MAC
	frame = append(frame, net.ParseIP(senderIP).To4()...) // sender IP
	frame = append(frame, make([]byte, 6)...)             // target MAC
	frame = append(frame, net.ParseIP(targetIP).To4()...)
	must(t, inNetns(ns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Addr: [8]byte(append(append([]byte{}, dmac...), 0, 0))})
	}))
}
