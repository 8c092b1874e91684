package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/miekg/dns"

	"banger/internal/model"
)

// dnsTTL is the TTL of every answer, in seconds. VMs come and go, so
// resolvers should not keep an address, or its absence, for long.
const dnsTTL = 5

// DNSServer answers A queries for <vm name>.<domain> from an in-memory
// table, authoritatively: a name in the domain that is not in the table
// gets NXDOMAIN. Names compare case-insensitively.
//
// Queries come from two sides. The host side (any source outside the
// guest subnet, and the gateway) sees every VM name and gets REFUSED for
// other domains. A guest (a source in the guest subnet, see
// SetForwarding) is answered only for names it may reach: its own VM
// name; other VMs' names are NXDOMAIN to it, since it cannot reach them.
// Its queries for other domains are forwarded upstream as its egress
// policy allows (open: all; allow: the names its domain patterns match,
// whose answers then open the policy for their addresses; none: none),
// and REFUSED otherwise.
//
// Use: NewDNSServer, SetForwarding, Listen, then Serve in a goroutine the
// caller owns; Close (or cancelling Serve's context) stops it. Set,
// SetVM and Remove may be called at any time.
type DNSServer struct {
	zone string // canonical: lowercase, fully qualified ("banger.")
	log  *slog.Logger

	mu      sync.RWMutex
	records map[string]dnsRecord // by lowercase VM name
	fwd     ForwardConfig

	lmu     sync.Mutex
	pc      net.PacketConn
	ln      net.Listener
	serving bool
	stop    chan struct{}
	done    chan struct{}
	closed  bool
}

// NewDNSServer returns a server for domain (e.g. "banger").
func NewDNSServer(domain string, log *slog.Logger) (*DNSServer, error) {
	zone := dns.CanonicalName(strings.Trim(domain, "."))
	if zone == "." {
		return nil, model.Errorf(model.EINVALID, "dns domain %q: must not be empty", domain)
	}
	if _, ok := dns.IsDomainName(zone); !ok {
		return nil, model.Errorf(model.EINVALID, "dns domain %q: not a domain name", domain)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DNSServer{
		zone:    zone,
		log:     log,
		records: map[string]dnsRecord{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

// Domain returns the zone the server answers for, without the final dot.
func (s *DNSServer) Domain() string { return strings.TrimSuffix(s.zone, ".") }

// dnsRecord is one VM: its address, and what the server needs to answer
// it as a guest.
type dnsRecord struct {
	addr   netip.Addr
	vmID   string
	egress model.EgressPolicy
}

// Set makes name.<domain> resolve to ip, replacing any earlier address
// and keeping what SetVM recorded for the name.
func (s *DNSServer) Set(name, ip string) error {
	if err := model.ValidateVMName(strings.ToLower(name)); err != nil {
		return fmt.Errorf("dns record: %w", err)
	}
	a, err := parseIPv4(ip)
	if err != nil {
		return fmt.Errorf("dns record %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[strings.ToLower(name)]
	r.addr = a
	s.records[strings.ToLower(name)] = r
	return nil
}

// SetVM makes name.<domain> resolve to ip and records, for the guest at
// ip, its VM ID and egress policy: what the server forwards for it and
// whose filter learns the addresses of allowed names.
func (s *DNSServer) SetVM(name, ip, vmID string, egress model.EgressPolicy) error {
	if err := s.Set(name, ip); err != nil {
		return err
	}
	egress, err := egress.Normalize()
	if err != nil {
		return fmt.Errorf("dns record %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[strings.ToLower(name)]
	r.vmID, r.egress = vmID, egress
	s.records[strings.ToLower(name)] = r
	return nil
}

// Remove forgets name. Removing an unknown name does nothing.
func (s *DNSServer) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, strings.ToLower(name))
}

// Lookup returns the address of a VM name, given either as the bare name
// or as name.<domain> (with or without the final dot), case-insensitively.
func (s *DNSServer) Lookup(name string) (string, bool) {
	label := strings.ToLower(name)
	if strings.Contains(label, ".") {
		var ok bool
		if label, ok = s.label(dns.CanonicalName(label)); !ok {
			return "", false
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.records[label]
	if !ok {
		return "", false
	}
	return r.addr.String(), true
}

// label returns the VM name of a canonical qname one label below the
// zone.
func (s *DNSServer) label(qname string) (string, bool) {
	rest, ok := strings.CutSuffix(qname, "."+s.zone)
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return "", false
	}
	return rest, true
}

// answer builds the reply to a query.
func (s *DNSServer) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return resp.SetRcode(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	qname := dns.CanonicalName(q.Name)
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(s.zone, qname) {
		return resp.SetRcode(req, dns.RcodeRefused)
	}
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = false
	if qname == s.zone {
		// The zone apex exists but has no addresses.
		resp.Ns = []dns.RR{s.soa()}
		return resp
	}
	label, ok := s.label(qname)
	var addr netip.Addr
	if ok {
		s.mu.RLock()
		var r dnsRecord
		r, ok = s.records[label]
		addr = r.addr
		s.mu.RUnlock()
	}
	return s.zoneAnswer(req, resp, addr, ok)
}

// zoneAnswer completes an authoritative reply for a name of the zone:
// its address when found, NXDOMAIN otherwise.
func (s *DNSServer) zoneAnswer(req, resp *dns.Msg, addr netip.Addr, found bool) *dns.Msg {
	q := req.Question[0]
	if !found {
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{s.soa()}
		return resp
	}
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		resp.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL},
			A:   net.IP(addr.AsSlice()),
		}}
		return resp
	}
	// The name exists but has no record of this type (e.g. AAAA): an
	// empty NOERROR answer, so resolvers go on to use the A record.
	resp.Ns = []dns.RR{s.soa()}
	return resp
}

// soa is the zone's SOA record, sent with negative answers so resolvers
// cache them for only dnsTTL seconds.
func (s *DNSServer) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: dnsTTL},
		Ns:      "ns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  dnsTTL,
	}
}

// ServeDNS implements dns.Handler: guests get the guest's answer, the
// host side the full table.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var resp *dns.Msg
	if src, ok := s.guestSource(w.RemoteAddr()); ok {
		resp = s.guestAnswer(req, src, w.LocalAddr().Network())
	} else {
		resp = s.answer(req)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns: write reply", "err", err)
	}
}

// Listen binds UDP and TCP sockets on addr (host:port). With port 0 the
// TCP socket takes the port the UDP socket got. Bind errors come back
// here, before Serve.
func (s *DNSServer) Listen(addr string) error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return errors.New("dns listen: server closed")
	}
	if s.pc != nil {
		return fmt.Errorf("dns listen %s: already listening on %s", addr, s.pc.LocalAddr())
	}
	host, wantPort, _ := net.SplitHostPort(addr)
	// With port 0 the kernel picks the UDP port, which TCP may already
	// use: then try another.
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("dns listen: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			pc.Close()
			if wantPort == "0" && errors.Is(err, syscall.EADDRINUSE) && attempt < 20 {
				continue
			}
			return fmt.Errorf("dns listen: %w", err)
		}
		s.pc, s.ln = pc, ln
		return nil
	}
}

// Addr returns the address the server listens on (the same port for UDP
// and TCP), or "" before Listen.
func (s *DNSServer) Addr() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.pc == nil {
		return ""
	}
	return s.pc.LocalAddr().String()
}

// Serve answers queries on the sockets bound by Listen until ctx is done
// or Close is called, then shuts both servers down and waits for their
// goroutines. It returns nil after a normal stop and the error of a
// server that failed on its own. It may be called once.
func (s *DNSServer) Serve(ctx context.Context) error {
	s.lmu.Lock()
	if s.pc == nil || s.serving || s.closed {
		s.lmu.Unlock()
		return errors.New("dns serve: call Listen first, and Serve once")
	}
	s.serving = true
	pc, ln := s.pc, s.ln
	s.lmu.Unlock()
	defer close(s.done)

	servers := []*dns.Server{
		{PacketConn: pc, Handler: s},
		{Listener: ln, Handler: s},
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- srv.ActivateAndServe()
		}()
		// Wait until the server runs (or failed to start), so Shutdown
		// below finds it started and stops it.
		select {
		case <-started:
		case err := <-errc:
			errc <- err
		}
	}
	var err error
	select {
	case <-ctx.Done():
	case <-s.stop:
	case err = <-errc:
		err = fmt.Errorf("dns serve: %w", err)
	}
	for _, srv := range servers {
		_ = srv.Shutdown() // "not started" for a server that already failed
	}
	pc.Close()
	ln.Close()
	wg.Wait()
	return err
}

// Close stops Serve and waits for it to return, or closes the sockets if
// Serve never ran. It is safe to call more than once.
func (s *DNSServer) Close() error {
	s.lmu.Lock()
	if s.closed {
		s.lmu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	serving := s.serving
	pc, ln := s.pc, s.ln
	s.lmu.Unlock()
	if serving {
		<-s.done
		return nil
	}
	var errs []error
	if pc != nil {
		errs = append(errs, pc.Close())
	}
	if ln != nil {
		errs = append(errs, ln.Close())
	}
	return errors.Join(errs...)
}
