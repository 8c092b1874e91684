package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"banger/internal/model"
	"banger/internal/testutil"
	"banger/test/harness"
)

// TestNetworkContainment is issue 10's network part, attacked from real
// guests: two VMs on one daemon (in its own netns) and an "outside"
// netns behind a veth that stands for the world (10.99.0.0/24: a
// nameserver and TCP services). Guests must not reach each other, the
// host's services, or anything their egress policy does not allow; they
// must not send as anyone else; the daemon's DNS answers each only for
// its own name; a policy change applies live; denials are counted and
// logged.
func TestNetworkContainment(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "nft", "busybox")
	d := harness.NewE2EDaemon(t, a, "default_dns = \"10.99.0.1\"\nstale_sweep_interval = \"3s\"")
	out := newOutside(t, d)

	// Services on the host itself: one on the bridge address, one on
	// another of its addresses.
	serveEcho(t, d.Netns, "172.16.0.1:8081")
	serveEcho(t, d.Netns, "10.99.0.254:8082")

	create := func(name string, extra ...string) harness.Result {
		args := append([]string{"vm", "create", name, "--nat", "--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G"}, extra...)
		return d.MustCLI(args...)
	}
	create("neta", "--egress", "allow=10.99.0.1/32,allowed.test")
	create("netb")
	va, vb := d.VM(t, "neta"), d.VM(t, "netb")
	ipA, ipB := va.Runtime.GuestIP, vb.Runtime.GuestIP
	if r := d.MustCLI("vm", "inspect", "neta"); !strings.Contains(r.Stdout, "egress:") || !strings.Contains(r.Stdout, "allow=10.99.0.1/32,allowed.test") {
		t.Errorf("inspect shows no egress:\n%s", r.Stdout)
	}
	if va.Spec.Egress.Mode != model.EgressAllow || strings.Join(va.Spec.Egress.Allow, ",") != "10.99.0.1/32,allowed.test" || vb.Spec.Egress.Mode != model.EgressOpen {
		t.Errorf("inspect --json egress: %+v / %+v", va.Spec.Egress, vb.Spec.Egress)
	}
	for _, vm := range []string{"neta", "netb"} {
		d.MustCLI("cp", "/bin/busybox", vm+":busybox")
		d.MustCLI("exec", vm, "--", "chmod", "755", "/root/busybox")
	}
	if left := d.Leftovers(t, 2); len(left) > 0 {
		t.Errorf("leftovers with two VMs running:\n%s", strings.Join(left, "\n"))
	}

	// What neta reaches. The allowed outside address is the proof that
	// the probes work.
	got := probe(t, d, "neta",
		tcp("10.99.0.1", 8080), tcp(ipB, 22), tcp("172.16.0.1", 8081), tcp("10.99.0.254", 8082),
		tcp("10.99.0.2", 8080), tcp("10.99.0.4", 8080),
		ping("10.99.0.1"), ping(ipB), ping("172.16.0.1"),
	)
	wantProbes(t, "neta", got, map[string]bool{
		"tcp 10.99.0.1:8080": true, "tcp " + ipB + ":22": false, "tcp 172.16.0.1:8081": false, "tcp 10.99.0.254:8082": false,
		"tcp 10.99.0.2:8080": false, "tcp 10.99.0.4:8080": false,
		"ping 10.99.0.1": true, "ping " + ipB: false, "ping 172.16.0.1": false,
	})
	// The daemon itself still reaches both guests (its SSH).
	d.MustCLI("exec", "netb", "--", "true")
	// Routed through the host instead of across the bridge.
	d.MustCLI("exec", "neta", "--", "ip", "route", "add", ipB+"/32", "via", "172.16.0.1")
	got = probe(t, d, "neta", tcp(ipB, 22), ping(ipB))
	wantProbes(t, "neta via the gateway", got, map[string]bool{"tcp " + ipB + ":22": false, "ping " + ipB: false})
	d.MustCLI("exec", "neta", "--", "ip", "route", "del", ipB+"/32")

	// netb is open: it reaches what neta may not (NAT on).
	got = probe(t, d, "netb", tcp("10.99.0.2", 8080), tcp("10.99.0.4", 8080), tcp(ipA, 22), tcp("172.16.0.1", 8081))
	wantProbes(t, "netb", got, map[string]bool{"tcp 10.99.0.2:8080": true, "tcp 10.99.0.4:8080": true, "tcp " + ipA + ":22": false, "tcp 172.16.0.1:8081": false})

	// Spoofing: neta sends echo requests as an unused address and as
	// netb (both addresses added in the guest), and as itself; the
	// outside sees only its own (masqueraded). It keeps the gateway's MAC
	// for good, as an attacker would.
	brMAC, _ := d.InNetns("cat", "/sys/class/net/br-fc/address")
	script := fmt.Sprintf(`set -u
ip neigh replace 172.16.0.1 lladdr %s dev eth0 nud permanent
ip addr add 172.16.0.99/32 dev eth0
ip addr add %s/32 dev eth0
/root/busybox ping -c 3 -W 2 -I 172.16.0.99 -p aa 10.99.0.1 >/dev/null 2>&1
/root/busybox ping -c 3 -W 2 -I %s -p bb 10.99.0.1 >/dev/null 2>&1
/root/busybox ping -c 3 -W 2 -p cc 10.99.0.1 >/dev/null 2>&1 && echo own-ok
ip addr del 172.16.0.99/32 dev eth0
ip addr del %s/32 dev eth0
ip neigh del 172.16.0.1 dev eth0
true`, strings.TrimSpace(brMAC), ipB, ipB, ipB)
	if r := d.MustCLI("exec", "neta", "--", "sh", "-c", script); !strings.Contains(r.Stdout, "own-ok") {
		t.Errorf("neta's own pings got no answer (the spoofing check proves nothing): %s", r)
	}
	seen := out.pings()
	if seen[0xcc] == 0 {
		t.Errorf("the outside saw none of neta's own echo requests: %v", seen)
	}
	if seen[0xaa] != 0 || seen[0xbb] != 0 {
		t.Errorf("spoofed echo requests reached the outside: from 172.16.0.99 %d, as netb %d", seen[0xaa], seen[0xbb])
	}
	d.MustCLI("exec", "netb", "--", "true") // netb is still netb

	// DNS: each guest is answered its own name only; the host side all.
	resolve := func(vm, name string) string {
		r := d.CLI("exec", vm, "--", "getent", "ahostsv4", name)
		if r.Code != 0 {
			return "-"
		}
		return strings.Fields(r.Stdout)[0]
	}
	for _, c := range []struct{ vm, name, want string }{
		{"neta", "neta.banger", ipA},
		{"neta", "netb.banger", "-"},
		{"netb", "netb.banger", ipB},
		{"netb", "neta.banger", "-"},
		{"neta", "allowed.test", "10.99.0.3"},
		{"neta", "denied.test", "-"},
		{"netb", "denied.test", "10.99.0.4"},
	} {
		if got := resolve(c.vm, c.name); got != c.want {
			t.Errorf("%s resolves %s to %s; want %s", c.vm, c.name, got, c.want)
		}
	}
	self, _ := os.Executable()
	if o, err := d.InNetns("env", "BANGER_DNS_QUERY=netb.banger@172.16.0.1:53", self); err != nil || !strings.Contains(o, "A: "+ipB) {
		t.Errorf("the host side does not resolve netb.banger: %v %s", err, o)
	}
	// A domain rule opens what the daemon's DNS answered.
	got = probe(t, d, "neta", tcp("allowed.test", 8080), tcp("10.99.0.3", 8080), tcp("10.99.0.4", 8080))
	wantProbes(t, "neta after resolving", got, map[string]bool{"tcp allowed.test:8080": true, "tcp 10.99.0.3:8080": true, "tcp 10.99.0.4:8080": false})

	// Denied connections are counted and logged once per destination.
	probe(t, d, "neta", tcp("10.99.0.2", 8080))
	var st model.VMStats
	if err := json.Unmarshal([]byte(d.MustCLI("vm", "stats", "neta", "--json").Stdout), &st); err != nil || st.EgressDenied < 3 {
		t.Errorf("vm stats --json: egress_denied %d, %v; want at least 3", st.EgressDenied, err)
	}
	if r := d.MustCLI("vm", "stats", "neta"); !strings.Contains(r.Stdout, "egress denied:") {
		t.Errorf("vm stats: %s", r.Stdout)
	}
	harness.WaitFor(t, 10*time.Second, "the daemon's log of denied connections", func() bool {
		b, _ := os.ReadFile(d.LogPath())
		return strings.Contains(string(b), "dst=10.99.0.2:8080/tcp")
	})
	if b, _ := os.ReadFile(d.LogPath()); strings.Count(string(b), "dst=10.99.0.2:8080/tcp") != 1 || !strings.Contains(string(b), "egress denied") {
		t.Errorf("denied 10.99.0.2:8080 logged %d times; want once", strings.Count(string(b), "dst=10.99.0.2:8080/tcp"))
	}

	// A firewall reload that flushes the host's ruleset: the next sweep
	// puts the base filter and both VMs' filters back.
	for _, fam := range []string{"inet", "bridge"} {
		if o, err := d.InNetns("nft", "delete", "table", fam, "banger"); err != nil {
			t.Fatalf("nft delete table %s banger: %v %s", fam, err, o)
		}
	}
	harness.WaitFor(t, 30*time.Second, "the sweep to restore the filters", func() bool {
		return len(d.Leftovers(t, 2)) == 0
	})
	got = probe(t, d, "neta", tcp("10.99.0.1", 8080), tcp("10.99.0.2", 8080), tcp("172.16.0.1", 8081))
	wantProbes(t, "neta after the filters were restored", got, map[string]bool{"tcp 10.99.0.1:8080": true, "tcp 10.99.0.2:8080": false, "tcp 172.16.0.1:8081": false})

	// Bad input changes nothing.
	for _, bad := range []string{"closed", "allow=10.0.0.1/8", "allow=exa mple.com", "allow="} {
		if r := d.CLI("vm", "set", "neta", "--egress", bad); r.Code != 2 || !strings.Contains(r.Stderr, "--egress") {
			t.Errorf("vm set --egress %q: %s", bad, r)
		}
	}
	if v := d.VM(t, "neta"); v.Spec.Egress.String() != "allow=10.99.0.1/32,allowed.test" {
		t.Errorf("egress after refused sets: %s", v.Spec.Egress)
	}

	// Live: none. A connection held open across the change stops too.
	held := startHeld(t, d, "neta", "10.99.0.1", 8080)
	d.MustCLI("vm", "set", "neta", "--egress", "none")
	if r := held.ping(); r {
		t.Error("a connection opened before `--egress none` still works")
	}
	got = probe(t, d, "neta", tcp("10.99.0.1", 8080), ping("10.99.0.1"))
	wantProbes(t, "neta with egress none", got, map[string]bool{"tcp 10.99.0.1:8080": false, "ping 10.99.0.1": false})
	if got := resolve("neta", "allowed.test"); got != "-" {
		t.Errorf("egress none still resolves allowed.test: %s", got)
	}
	if got := resolve("neta", "neta.banger"); got != ipA {
		t.Errorf("egress none: own name resolves to %s", got)
	}
	// And back to open, live.
	d.MustCLI("vm", "set", "neta", "--egress", "open")
	got = probe(t, d, "neta", tcp("10.99.0.2", 8080))
	wantProbes(t, "neta open again", got, map[string]bool{"tcp 10.99.0.2:8080": true})

	d.MustCLI("vm", "rm", "--force", "neta", "netb")
	if left := d.Leftovers(t, 2); len(left) > 0 {
		t.Errorf("leftovers after rm:\n%s", strings.Join(left, "\n"))
	}
}

// outside is the stand-in for the world: a netns joined to the daemon's
// by a veth, with a nameserver and TCP echo services.
type outside struct {
	mu    sync.Mutex
	seen  map[byte]int // echo requests by payload pattern
	netns string
}

// newOutside makes the outside netns: 10.99.0.1 (the nameserver and a
// service), 10.99.0.2, .3 and .4 (services), behind 10.99.0.254 in the
// daemon's netns. allowed.test is 10.99.0.3, denied.test 10.99.0.4.
func newOutside(t *testing.T, d *harness.Daemon) *outside {
	t.Helper()
	o := &outside{seen: map[byte]int{}, netns: harness.NewNetns(t)}
	run := func(ns string, args ...string) {
		t.Helper()
		cmd := append([]string{"netns", "exec", ns}, args...)
		if b, err := execOut("ip", cmd...); err != nil {
			t.Fatalf("%v: %v %s", args, err, b)
		}
	}
	run(d.Netns, "ip", "link", "add", "bgout0", "type", "veth", "peer", "name", "eth0", "netns", o.netns)
	run(d.Netns, "ip", "addr", "add", "10.99.0.254/24", "dev", "bgout0")
	run(d.Netns, "ip", "link", "set", "bgout0", "up")
	for _, a := range []string{"10.99.0.1/24", "10.99.0.2/24", "10.99.0.3/24", "10.99.0.4/24"} {
		run(o.netns, "ip", "addr", "add", a, "dev", "eth0")
	}
	run(o.netns, "ip", "link", "set", "eth0", "up")
	serveEcho(t, o.netns, "0.0.0.0:8080")

	// The nameserver.
	zone := map[string]string{"allowed.test.": "10.99.0.3", "denied.test.": "10.99.0.4"}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		q := req.Question[0]
		ip, ok := zone[dns.CanonicalName(q.Name)]
		switch {
		case !ok:
			resp.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", q.Name, ip))
			resp.Answer = []dns.RR{rr}
		}
		w.WriteMsg(resp)
	})
	var pc net.PacketConn
	var ln net.Listener
	var icmp net.PacketConn
	inNetns(t, o.netns, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", "10.99.0.1:53"); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", "10.99.0.1:53"); err != nil {
			return err
		}
		icmp, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		srv := srv
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	// Echo requests, by the pattern busybox ping -p fills them with.
	t.Cleanup(func() { icmp.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := icmp.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 8+16 || buf[0] != 8 {
				continue
			}
			tail := buf[n-16 : n]
			if strings.Count(string(tail), string(tail[:1])) == 16 {
				o.mu.Lock()
				o.seen[tail[0]]++
				o.mu.Unlock()
			}
		}
	}()
	return o
}

// pings returns the echo requests seen so far by payload pattern.
func (o *outside) pings() map[byte]int {
	time.Sleep(500 * time.Millisecond)
	o.mu.Lock()
	defer o.mu.Unlock()
	m := map[byte]int{}
	for k, v := range o.seen {
		m[k] = v
	}
	return m
}

// inNetns runs fn on a thread in netns; sockets it opens stay there. The
// thread goes back to the test's namespace before it is unlocked: the
// runtime may have picked the main thread, and a main thread left in a
// test namespace would be killed with it by the harness's cleanup.
func inNetns(t *testing.T, netns string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		f, err := os.Open("/run/netns/" + netns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stuck in netns: keep the thread locked so it is not reused.
			errc <- fmt.Errorf("back from netns %s: %w", netns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in netns %s: %v", netns, err)
	}
}

// serveEcho runs a TCP echo service on addr in netns until the test ends.
func serveEcho(t *testing.T, netns, addr string) {
	t.Helper()
	var ln net.Listener
	inNetns(t, netns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
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
}

// A probe is one reachability check run in a guest, printing "NAME ok"
// or "NAME no".
type probeCheck struct{ name, sh string }

func tcp(host string, port int) probeCheck {
	name := fmt.Sprintf("tcp %s:%d", host, port)
	return probeCheck{name, fmt.Sprintf(`timeout 4 bash -c 'exec 3<>/dev/tcp/%s/%d' 2>/dev/null`, host, port)}
}

func ping(host string) probeCheck {
	return probeCheck{"ping " + host, fmt.Sprintf(`/root/busybox ping -c 1 -W 3 %s >/dev/null 2>&1`, host)}
}

// probe runs checks in a guest, in parallel, and returns their results.
func probe(t *testing.T, d *harness.Daemon, vm string, checks ...probeCheck) map[string]bool {
	t.Helper()
	var b strings.Builder
	for _, c := range checks {
		fmt.Fprintf(&b, "( if %s; then echo '%s ok'; else echo '%s no'; fi ) &\n", c.sh, c.name, c.name)
	}
	b.WriteString("wait\n")
	r := d.MustCLI("exec", vm, "--", "bash", "-c", b.String())
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		if name, ok := strings.CutSuffix(line, " ok"); ok {
			got[name] = true
		} else if name, ok := strings.CutSuffix(line, " no"); ok {
			got[name] = false
		}
	}
	return got
}

func wantProbes(t *testing.T, who string, got, want map[string]bool) {
	t.Helper()
	var bad []string
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			bad = append(bad, name+": no result")
		case g && !w:
			bad = append(bad, name+": reached, must not be")
		case !g && w:
			bad = append(bad, name+": not reached, must be")
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s:\n  %s", who, strings.Join(bad, "\n  "))
	}
}

// heldConn is a TCP connection a guest keeps open to an echo service,
// driven through a fifo: ping writes a line and reports whether the echo
// came back.
type heldConn struct {
	t  *testing.T
	d  *harness.Daemon
	vm string
}

func startHeld(t *testing.T, d *harness.Daemon, vm, host string, port int) heldConn {
	t.Helper()
	script := fmt.Sprintf(`rm -f /root/held.in /root/held.out; mkfifo /root/held.in
nohup bash -c 'exec 3<>/dev/tcp/%s/%d; exec 4<>/root/held.in; while read -r l <&4; do echo "$l" >&3; read -r -t 3 r <&3 && echo "$r" >>/root/held.out; done' </dev/null >/dev/null 2>&1 &
sleep 1; echo one >/root/held.in; sleep 2; cat /root/held.out`, host, port)
	start := time.Now()
	if r := d.CLI("exec", vm, "--", "bash", "-c", script); r.Code != 0 || !strings.Contains(r.Stdout, "one") {
		t.Logf("held setup took %s", time.Since(start))
		t.Logf("afterwards: %s", d.CLI("exec", vm, "--", "bash", "-c", "ps ax | grep -v ps; ls -la /root; cat /root/held.out"))
		t.Fatalf("held connection did not work before the change: %s", r)
	}
	return heldConn{t: t, d: d, vm: vm}
}

func (h heldConn) ping() bool {
	h.t.Helper()
	r := h.d.MustCLI("exec", h.vm, "--", "bash", "-c", "echo two >/root/held.in; sleep 4; cat /root/held.out")
	return strings.Contains(r.Stdout, "two")
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
