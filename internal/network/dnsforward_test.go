package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"banger/internal/model"
)

// upstream is a nameserver for the tests: a few fixed names, and a count
// of the queries it got.
type upstream struct {
	addr    string
	queries atomic.Int64
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	answers := map[string][]dns.RR{}
	for _, rr := range []string{
		"allowed.test. 300 IN A 10.99.0.1",
		"denied.test. 300 IN A 10.99.0.2",
		"www.cdn.test. 60 IN CNAME edge.elsewhere.test.",
		"www.cdn.test. 20 IN A 10.99.0.3",
		"inside.test. 300 IN A 127.0.0.3",
	} {
		r, err := dns.NewRR(rr)
		must(t, err)
		answers[r.Header().Name] = append(answers[r.Header().Name], r)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.queries.Add(1)
		resp := new(dns.Msg)
		resp.SetReply(req)
		rrs, ok := answers[dns.CanonicalName(req.Question[0].Name)]
		if !ok {
			resp.Rcode = dns.RcodeNameError
		}
		if req.Question[0].Qtype == dns.TypeA {
			resp.Answer = rrs
		}
		w.WriteMsg(resp)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	must(t, err)
	u.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

// queryFrom asks server from a local address (a guest on loopback) and
// summarises the reply as "RCODE answers...".
func queryFrom(t *testing.T, network, local, server, name string, qtype uint16) string {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	if network == "udp" {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(local)}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	}
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	resp, _, err := c.Exchange(req, server)
	if err != nil {
		t.Fatalf("query %s from %s over %s: %v", name, local, network, err)
	}
	got := dns.RcodeToString[resp.Rcode]
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			got += fmt.Sprintf(" %s=%s", a.Hdr.Name, a.A)
		}
	}
	return got
}

// allowLog records the calls of the egress hook.
type allowLog struct {
	mu    sync.Mutex
	calls []string
	fail  error
}

func (l *allowLog) allow(_ context.Context, vmID string, addrs []ResolvedAddr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := vmID
	for _, a := range addrs {
		s += fmt.Sprintf(" %s/%d", a.Addr, a.TTL)
	}
	l.calls = append(l.calls, s)
	return l.fail
}

func (l *allowLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

// TestDNSGuestView: on loopback, 127.0.0.0/24 plays the guest subnet
// and 127.0.0.1 the gateway (the host side).
func TestDNSGuestView(t *testing.T) {
	up := startUpstream(t)
	s := startDNS(t, "banger")
	log := &allowLog{}
	must(t, s.SetForwarding(ForwardConfig{
		Guests: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1"),
		Upstreams: []string{up.addr}, Allow: log.allow,
	}))
	open, _ := model.ParseEgress("open")
	none, _ := model.ParseEgress("none")
	allow, _ := model.ParseEgress("allow=10.0.0.0/8,allowed.test,*.cdn.test,inside.test")
	must(t, s.SetVM("dev", "127.0.0.2", "devid", open))
	must(t, s.SetVM("other", "127.0.0.3", "otherid", none))
	must(t, s.SetVM("lim", "127.0.0.4", "limid", allow))
	srv := s.Addr()

	tests := []struct {
		from, name string
		want       string
		allowCalls []string
		upstream   bool // whether the upstream is asked
	}{
		// The host side sees every VM and nothing else.
		{"127.0.0.1", "dev.banger.", "NOERROR dev.banger.=127.0.0.2", nil, false},
		{"127.0.0.1", "other.banger.", "NOERROR other.banger.=127.0.0.3", nil, false},
		{"127.0.0.1", "allowed.test.", "REFUSED", nil, false},
		// A guest: its own name only.
		{"127.0.0.2", "dev.banger.", "NOERROR dev.banger.=127.0.0.2", nil, false},
		{"127.0.0.2", "DEV.banger.", "NOERROR DEV.banger.=127.0.0.2", nil, false},
		{"127.0.0.2", "other.banger.", "NXDOMAIN", nil, false},
		{"127.0.0.2", "lim.banger.", "NXDOMAIN", nil, false},
		{"127.0.0.2", "banger.", "NOERROR", nil, false},
		{"127.0.0.3", "other.banger.", "NOERROR other.banger.=127.0.0.3", nil, false},
		{"127.0.0.3", "dev.banger.", "NXDOMAIN", nil, false},
		// Open: everything is forwarded, nothing opened.
		{"127.0.0.2", "allowed.test.", "NOERROR allowed.test.=10.99.0.1", nil, true},
		{"127.0.0.2", "denied.test.", "NOERROR denied.test.=10.99.0.2", nil, true},
		{"127.0.0.2", "nope.test.", "NXDOMAIN", nil, true},
		// None: no upstream answers.
		{"127.0.0.3", "allowed.test.", "REFUSED", nil, false},
		// Allow: matching names are forwarded and open their addresses
		// (not the guest subnet's); others are refused unasked.
		{"127.0.0.4", "allowed.test.", "NOERROR allowed.test.=10.99.0.1", []string{"limid 10.99.0.1/300"}, true},
		{"127.0.0.4", "www.cdn.test.", "NOERROR www.cdn.test.=10.99.0.3", []string{"limid 10.99.0.3/20"}, true},
		{"127.0.0.4", "inside.test.", "NOERROR inside.test.=127.0.0.3", nil, true},
		{"127.0.0.4", "denied.test.", "REFUSED", nil, false},
		{"127.0.0.4", "cdn.test.", "REFUSED", nil, false},
		{"127.0.0.4", "lim.banger.", "NOERROR lim.banger.=127.0.0.4", nil, false},
		// An address of the subnet that is no VM's: nothing.
		{"127.0.0.9", "allowed.test.", "REFUSED", nil, false},
		{"127.0.0.9", "dev.banger.", "NXDOMAIN", nil, false},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			before := up.queries.Load()
			if got := queryFrom(t, network, tt.from, srv, tt.name, dns.TypeA); got != tt.want {
				t.Errorf("%s from %s over %s = %q; want %q", tt.name, tt.from, network, got, tt.want)
			}
			if calls := log.take(); fmt.Sprint(calls) != fmt.Sprint(tt.allowCalls) {
				t.Errorf("%s from %s: egress hook calls %q; want %q", tt.name, tt.from, calls, tt.allowCalls)
			}
			if asked := up.queries.Load() > before; asked != tt.upstream {
				t.Errorf("%s from %s: upstream asked = %v; want %v", tt.name, tt.from, asked, tt.upstream)
			}
		}
	}

	// A live policy change applies to the next query.
	must(t, s.SetVM("other", "127.0.0.3", "otherid", open))
	if got := queryFrom(t, "udp", "127.0.0.3", srv, "denied.test.", dns.TypeA); got != "NOERROR denied.test.=10.99.0.2" {
		t.Errorf("after none → open: %q", got)
	}
	// The filter could not take the addresses: the guest gets SERVFAIL,
	// not an answer it cannot use.
	log.fail = errors.New("nft failed")
	if got := queryFrom(t, "udp", "127.0.0.4", srv, "allowed.test.", dns.TypeA); got != "SERVFAIL" {
		t.Errorf("with a failing egress hook: %q", got)
	}
	log.fail = nil
	log.take()
	// A removed VM's address is nobody's.
	s.Remove("dev")
	if got := queryFrom(t, "udp", "127.0.0.2", srv, "allowed.test.", dns.TypeA); got != "REFUSED" {
		t.Errorf("after Remove: %q", got)
	}
}

func TestDNSGuestUpstreamDown(t *testing.T) {
	s := startDNS(t, "banger")
	// A closed port: nothing answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	dead := pc.LocalAddr().String()
	pc.Close()
	must(t, s.SetForwarding(ForwardConfig{
		Guests: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1"),
		Upstreams: []string{dead}, Timeout: 300 * time.Millisecond,
	}))
	must(t, s.SetVM("dev", "127.0.0.2", "devid", model.EgressPolicy{}))
	if got := queryFrom(t, "udp", "127.0.0.2", s.Addr(), "allowed.test.", dns.TypeA); got != "SERVFAIL" {
		t.Errorf("upstream down: %q", got)
	}
	// Bad requests from a guest.
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}}}
	req := new(dns.Msg)
	req.SetQuestion("a.test.", dns.TypeA)
	req.Question = append(req.Question, req.Question[0])
	if resp, _, err := c.Exchange(req, s.Addr()); err != nil || resp.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v", resp, err)
	}
	req = new(dns.Msg)
	req.SetUpdate("banger.")
	if resp, _, err := c.Exchange(req, s.Addr()); err != nil || resp.Rcode != dns.RcodeNotImplemented {
		t.Errorf("update: %v %v", resp, err)
	}
}

func TestUpstreamAddr(t *testing.T) {
	for in, want := range map[string]string{"1.1.1.1": "1.1.1.1:53", "10.99.0.1:5353": "10.99.0.1:5353", "::1": "[::1]:53"} {
		if got, err := upstreamAddr(in); err != nil || got != want {
			t.Errorf("upstreamAddr(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "dns.example", "1.1.1.1:x", "1.1.1.1 ; rm"} {
		if _, err := upstreamAddr(bad); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("upstreamAddr(%q): %v", bad, err)
		}
	}
}
