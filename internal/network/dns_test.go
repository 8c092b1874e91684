package network

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"banger/internal/model"
)

// startDNS runs a server on 127.0.0.1 with a random port until the test
// ends.
func startDNS(t *testing.T, domain string) *DNSServer {
	t.Helper()
	s, err := NewDNSServer(domain, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// query asks addr over network ("udp" or "tcp") and summarises the reply
// as "RCODE answers...".
func query(t *testing.T, network, addr, name string, qtype uint16) string {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	resp, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	if resp.Id != req.Id || !resp.Response {
		t.Fatalf("query %s: reply does not match the request: %v", name, resp)
	}
	got := dns.RcodeToString[resp.Rcode]
	if resp.Authoritative {
		got += " aa"
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			got += fmt.Sprintf(" %s=%s/%d", a.Hdr.Name, a.A, a.Hdr.Ttl)
		}
	}
	return got
}

func TestDNSServer(t *testing.T) {
	s := startDNS(t, "banger")
	must(t, s.Set("dev", "172.16.0.2"))
	must(t, s.Set("Other", "172.16.0.3"))
	addr := s.Addr()
	tests := []struct {
		name  string
		qtype uint16
		want  string
	}{
		{"dev.banger.", dns.TypeA, "NOERROR aa dev.banger.=172.16.0.2/5"},
		{"DEV.Banger.", dns.TypeA, "NOERROR aa DEV.Banger.=172.16.0.2/5"},
		{"other.banger.", dns.TypeA, "NOERROR aa other.banger.=172.16.0.3/5"},
		{"dev.banger.", dns.TypeAAAA, "NOERROR aa"},
		{"dev.banger.", dns.TypeANY, "NOERROR aa dev.banger.=172.16.0.2/5"},
		{"nope.banger.", dns.TypeA, "NXDOMAIN aa"},
		{"a.dev.banger.", dns.TypeA, "NXDOMAIN aa"},
		{"banger.", dns.TypeA, "NOERROR aa"},
		{"example.com.", dns.TypeA, "REFUSED"},
		{"dev.banger.example.", dns.TypeA, "REFUSED"},
		{"xbanger.", dns.TypeA, "REFUSED"},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			if got := query(t, network, addr, tt.name, tt.qtype); got != tt.want {
				t.Errorf("%s %s %s = %q, want %q", network, tt.name, dns.TypeToString[tt.qtype], got, tt.want)
			}
		}
	}
	// Changes show at once.
	s.Remove("dev")
	must(t, s.Set("other", "172.16.0.9"))
	if got := query(t, "udp", addr, "dev.banger.", dns.TypeA); got != "NXDOMAIN aa" {
		t.Errorf("after Remove: %q", got)
	}
	if got := query(t, "tcp", addr, "other.banger.", dns.TypeA); got != "NOERROR aa other.banger.=172.16.0.9/5" {
		t.Errorf("after Set: %q", got)
	}
}

func TestDNSLookup(t *testing.T) {
	s, err := NewDNSServer("sandbox.test.", nil)
	must(t, err)
	if s.Domain() != "sandbox.test" {
		t.Errorf("Domain = %q", s.Domain())
	}
	must(t, s.Set("dev", "10.0.0.2"))
	tests := []struct {
		name string
		want string
	}{
		{"dev", "10.0.0.2"},
		{"DEV", "10.0.0.2"},
		{"dev.sandbox.test", "10.0.0.2"},
		{"dev.SANDBOX.test.", "10.0.0.2"},
		{"dev.other.test", ""},
		{"nope", ""},
		{"x.dev.sandbox.test", ""},
	}
	for _, tt := range tests {
		got, ok := s.Lookup(tt.name)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Lookup(%q) = %q, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
	for _, bad := range [][2]string{{"", "10.0.0.2"}, {"a.b", "10.0.0.2"}, {"-x", "10.0.0.2"}, {"dev", "nope"}, {"dev", "::1"}} {
		if err := s.Set(bad[0], bad[1]); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("Set(%q, %q) = %v, want EINVALID", bad[0], bad[1], err)
		}
	}
	for _, bad := range []string{"", ".", "a..b"} {
		if _, err := NewDNSServer(bad, nil); err == nil {
			t.Errorf("NewDNSServer(%q): want error", bad)
		}
	}
}

func TestDNSServerLifecycle(t *testing.T) {
	// Cancelling Serve's context stops it and frees the port.
	s, err := NewDNSServer("banger", nil)
	must(t, err)
	must(t, s.Listen("127.0.0.1:0"))
	addr := s.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	if got := query(t, "udp", addr, "x.banger.", dns.TypeA); got != "NXDOMAIN aa" {
		t.Errorf("query = %q", got)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Serve after cancel = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Error("second Serve: want error")
	}
	must(t, s.Close())
	must(t, s.Close())
	// The port is free again: a new server can take it.
	s2, err := NewDNSServer("banger", nil)
	must(t, err)
	must(t, s2.Listen(addr))
	must(t, s2.Close())

	// Close before Serve closes the sockets; Listen twice is refused.
	s3, err := NewDNSServer("banger", nil)
	must(t, err)
	must(t, s3.Listen("127.0.0.1:0"))
	if err := s3.Listen("127.0.0.1:0"); err == nil {
		t.Error("second Listen: want error")
	}
	must(t, s3.Close())
	if err := s3.Serve(context.Background()); err == nil {
		t.Error("Serve after Close: want error")
	}
	// A port someone else holds is a Listen error.
	s4, err := NewDNSServer("banger", nil)
	must(t, err)
	must(t, s4.Listen("127.0.0.1:0"))
	defer s4.Close()
	s5, err := NewDNSServer("banger", nil)
	must(t, err)
	if err := s5.Listen(s4.Addr()); err == nil {
		t.Error("Listen on a taken port: want error")
	}
}
