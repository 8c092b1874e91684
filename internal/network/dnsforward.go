package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"banger/internal/model"
)

// ForwardConfig tells the DNS server who the guests are and where their
// other queries go.
type ForwardConfig struct {
	// Guests is the guest subnet: a query from an address in it, except
	// Gateway, is a guest's.
	Guests  netip.Prefix
	Gateway netip.Addr
	// Upstreams are the nameservers, "ip" or "ip:port", tried in order.
	Upstreams []string
	// Allow is called, before the answer is sent, with the addresses an
	// upstream answered for a name a guest in egress mode allow may
	// resolve; an error turns the answer into SERVFAIL, because the guest
	// could not reach what it names.
	Allow func(ctx context.Context, vmID string, addrs []ResolvedAddr) error
	// Timeout bounds each upstream exchange; 0 means 3 s.
	Timeout time.Duration
}

// SetForwarding configures the guest side. Upstreams are checked and
// given port 53 when they have none.
func (s *DNSServer) SetForwarding(fc ForwardConfig) error {
	var ups []string
	for _, u := range fc.Upstreams {
		hp, err := upstreamAddr(u)
		if err != nil {
			return err
		}
		ups = append(ups, hp)
	}
	fc.Upstreams = ups
	if fc.Timeout <= 0 {
		fc.Timeout = 3 * time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fwd = fc
	return nil
}

// upstreamAddr checks a nameserver address and gives it port 53.
func upstreamAddr(u string) (string, error) {
	if a, err := netip.ParseAddr(u); err == nil {
		return net.JoinHostPort(a.String(), "53"), nil
	}
	if ap, err := netip.ParseAddrPort(u); err == nil {
		return ap.String(), nil
	}
	return "", model.Errorf(model.EINVALID, "dns upstream %q: not an IP address (or ip:port)", u)
}

// guestSource returns the source of a query when it is a guest's.
func (s *DNSServer) guestSource(a net.Addr) (netip.Addr, bool) {
	var ap netip.AddrPort
	switch v := a.(type) {
	case *net.UDPAddr:
		ap = v.AddrPort()
	case *net.TCPAddr:
		ap = v.AddrPort()
	default:
		return netip.Addr{}, false
	}
	src := ap.Addr().Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.fwd.Guests.IsValid() || !s.fwd.Guests.Contains(src) || src == s.fwd.Gateway {
		return netip.Addr{}, false
	}
	return src, true
}

// guestRecord returns the VM whose guest address is src.
func (s *DNSServer) guestRecord(src netip.Addr) (string, dnsRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for name, r := range s.records {
		if r.addr == src {
			return name, r, true
		}
	}
	return "", dnsRecord{}, false
}

// guestAnswer builds the reply to a guest at src; network is "udp" or
// "tcp", the transport the query came on and the one used upstream.
func (s *DNSServer) guestAnswer(req *dns.Msg, src netip.Addr, network string) *dns.Msg {
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return resp.SetRcode(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	qname := dns.CanonicalName(q.Name)
	name, rec, known := s.guestRecord(src)
	if q.Qclass == dns.ClassINET && dns.IsSubDomain(s.zone, qname) {
		resp.SetReply(req)
		resp.Authoritative = true
		if qname == s.zone {
			resp.Ns = []dns.RR{s.soa()}
			return resp
		}
		label, ok := s.label(qname)
		return s.zoneAnswer(req, resp, rec.addr, ok && known && label == name)
	}
	if !known || !rec.egress.AllowsName(qname) {
		return resp.SetRcode(req, dns.RcodeRefused)
	}
	up, err := s.forward(req, network)
	if err != nil {
		s.log.Debug("dns: forward", "vm", name, "name", qname, "err", err)
		return resp.SetRcode(req, dns.RcodeServerFailure)
	}
	if rec.egress.Effective() == model.EgressAllow {
		if err := s.allowAnswer(rec.vmID, up); err != nil {
			s.log.Warn("dns: could not open egress for an answer", "vm", name, "name", qname, "err", err)
			return resp.SetRcode(req, dns.RcodeServerFailure)
		}
	}
	return up
}

// forward asks the upstreams in turn and returns the first reply.
func (s *DNSServer) forward(req *dns.Msg, network string) (*dns.Msg, error) {
	s.mu.RLock()
	ups, timeout := s.fwd.Upstreams, s.fwd.Timeout
	s.mu.RUnlock()
	if len(ups) == 0 {
		return nil, errors.New("no upstream nameserver configured")
	}
	c := &dns.Client{Net: network, Timeout: timeout}
	var errs []error
	for _, u := range ups {
		resp, _, err := c.Exchange(req, u)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return nil, errors.Join(errs...)
}

// allowAnswer opens a VM's egress for the IPv4 addresses of an answer,
// each for its TTL. Addresses of the guest subnet stay closed whatever
// an upstream says (guests never reach each other or the host).
func (s *DNSServer) allowAnswer(vmID string, resp *dns.Msg) error {
	s.mu.RLock()
	allow, guests, gw := s.fwd.Allow, s.fwd.Guests, s.fwd.Gateway
	s.mu.RUnlock()
	var addrs []ResolvedAddr
	for _, rr := range resp.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.A.To4())
		if !ok || guests.Contains(ip) || ip == gw || ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		addrs = append(addrs, ResolvedAddr{Addr: ip, TTL: a.Hdr.Ttl})
	}
	if len(addrs) == 0 {
		return nil
	}
	if allow == nil {
		return errors.New("no egress hook configured")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return allow(ctx, vmID, addrs)
}
