package network

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sort"
	"strings"

	"banger/internal/model"
)

// This file builds banger's packet filter: one nftables table named
// "banger" in the bridge family (what enters the bridge from each tap)
// and one in the inet family (what the host receives from guests and
// routes for them). Every change is one nft script, applied atomically
// with `nft -f`. The builders here are pure: they turn a configuration,
// a VM's filter and the listed state into script text.
//
// Base objects (made by EnsureFilter):
//
//	bridge banger: map ports (tap name → jump vm-<short>); chain
//	  prerouting: taps with a VM jump to its chain, every other banger tap
//	  is dropped.
//	inet banger: map guests (guest IP → jump vm-<short>); chain input:
//	  from the bridge only established traffic and DNS to the bridge IP;
//	  chain forward: nothing routed from the bridge back to it (guest to
//	  guest), guests' traffic through their VM chain, anything else from
//	  the bridge dropped.
//
// Per-VM objects, all named after the VM's short ID so reconcile finds
// them: chain vm-<short> in both tables (anti-spoofing in bridge, the
// egress policy in inet), sets vm-<short>-allow (the policy's networks),
// vm-<short>-dns (addresses the daemon's DNS answered for allowed names,
// with their TTL), vm-<short>-seen (denied flows already counted) and the
// counter vm-<short>-denied.

// filterTable is the name of banger's table in both families.
const filterTable = "banger"

// vmObjPrefix starts the name of every per-VM object.
const vmObjPrefix = "vm-"

// Suffixes of the per-VM sets and counter.
const (
	allowSetSuffix = "-allow"
	dnsSetSuffix   = "-dns"
	seenSetSuffix  = "-seen"
	deniedSuffix   = "-denied"
)

// Filter is one VM's packet filter: who it is on the wire and where it
// may connect.
type Filter struct {
	// VMID is the VM's ID; objects carry model.ShortID(VMID).
	VMID     string
	Tap      string
	GuestIP  string
	GuestMAC string
	Egress   model.EgressPolicy
}

// validate checks every value that goes into the script.
func (f Filter) validate() (Filter, error) {
	if err := validVMID(f.VMID); err != nil {
		return f, fmt.Errorf("filter: %w", err)
	}
	if err := validIfName(f.Tap); err != nil {
		return f, fmt.Errorf("filter: tap: %w", err)
	}
	if _, err := parseIPv4(f.GuestIP); err != nil {
		return f, fmt.Errorf("filter: guest ip: %w", err)
	}
	mac, err := net.ParseMAC(f.GuestMAC)
	if err != nil || len(mac) != 6 {
		return f, model.Errorf(model.EINVALID, "filter: guest mac %q: not an Ethernet address", f.GuestMAC)
	}
	f.GuestMAC = mac.String()
	if f.Egress, err = f.Egress.Normalize(); err != nil {
		return f, err
	}
	return f, nil
}

// validVMID checks an ID that goes into object names and rule tags.
func validVMID(id string) error {
	if id == "" || strings.ContainsFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return model.Errorf(model.EINVALID, "vm id %q: must be letters, digits, '-' or '_'", id)
	}
	return nil
}

// vmChain is the name of a VM's chain (in both tables).
func vmChain(short string) string { return vmObjPrefix + short }

// vmObjectShort returns the short ID a per-VM object name belongs to.
func vmObjectShort(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, vmObjPrefix)
	if !ok || rest == "" {
		return "", false
	}
	for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix, deniedSuffix} {
		if s, ok := strings.CutSuffix(rest, suf); ok {
			return s, s != ""
		}
	}
	return rest, true
}

// script accumulates nft commands, one per line.
type script struct{ b strings.Builder }

func (s *script) add(format string, args ...any) {
	fmt.Fprintf(&s.b, format, args...)
	s.b.WriteByte('\n')
}

func (s *script) String() string { return s.b.String() }

// baseScript makes (or remakes) the base objects. Re-running it is
// harmless: tables, maps and chains are added if missing, the base chains
// are flushed and refilled in the same transaction, and the per-VM
// objects and map elements are kept.
func baseScript(c Config) string {
	var s script
	t := filterTable
	s.add("add table bridge %s", t)
	s.add("add map bridge %s ports { type ifname : verdict ; }", t)
	s.add("add chain bridge %s prerouting { type filter hook prerouting priority -300 ; policy accept ; }", t)
	s.add("flush chain bridge %s prerouting", t)
	s.add("add rule bridge %s prerouting iifname vmap @ports", t)
	s.add("add rule bridge %s prerouting iifname %q drop", t, c.TapPrefix+"*")

	s.add("add table inet %s", t)
	s.add("add map inet %s guests { type ipv4_addr : verdict ; }", t)
	s.add("add chain inet %s guest-in", t)
	s.add("add chain inet %s input { type filter hook input priority -10 ; policy accept ; }", t)
	s.add("add chain inet %s forward { type filter hook forward priority -10 ; policy accept ; }", t)
	for _, ch := range []string{"input", "forward", "guest-in"} {
		s.add("flush chain inet %s %s", t, ch)
	}
	br := c.BridgeName
	s.add("add rule inet %s input iifname %q jump guest-in", t, br)
	s.add("add rule inet %s guest-in ct state established,related accept", t)
	s.add("add rule inet %s guest-in ip daddr %s udp dport 53 accept", t, c.BridgeIP)
	s.add("add rule inet %s guest-in ip daddr %s tcp dport 53 accept", t, c.BridgeIP)
	s.add("add rule inet %s guest-in drop", t)
	s.add("add rule inet %s forward iifname %q oifname %q drop", t, br, br)
	s.add("add rule inet %s forward iifname %q ip saddr vmap @guests", t, br)
	s.add("add rule inet %s forward iifname %q drop", t, br)
	return s.String()
}

// bridgeRules are a VM's anti-spoofing rules: frames from its tap must
// carry its MAC; ARP must be Ethernet/IPv4 and announce its own MAC and
// IP; IPv4 must come from its IP and may not be a DHCP server's reply;
// nothing else (IPv6, VLAN tags, other ethertypes) passes.
func bridgeRules(f Filter) []string {
	return []string{
		"ether saddr != " + f.GuestMAC + " drop",
		"arp htype != 1 drop",
		"arp ptype != ip drop",
		"arp hlen != 6 drop",
		"arp plen != 4 drop",
		"arp saddr ether != " + f.GuestMAC + " drop",
		"arp saddr ip != " + f.GuestIP + " drop",
		"ether type arp accept",
		"ip saddr != " + f.GuestIP + " drop",
		"udp sport 67 drop",
		"ether type ip accept",
		"drop",
	}
}

// egressMark is the conntrack mark a policy gives the connections it let
// through. A connection keeps flowing while the policy that accepted it
// is in force; after a change, established connections are checked again
// against the new policy, so `vm set --egress` applies to them too. The
// mark is a hash of the policy, never 0 (unmarked connections).
func egressMark(p model.EgressPolicy) uint32 {
	h := fnv.New32a()
	h.Write([]byte(p.String()))
	m := h.Sum32()
	if m == 0 {
		m = 1
	}
	return m
}

// egressRules are a VM's inet chain for its policy. Replies to
// connections opened towards the guest always pass (they are not
// egress); open accepts everything; none denies everything; allow
// accepts its networks and the addresses its names resolved to.
func egressRules(f Filter, short string, logGroup int) []string {
	deny := []string{
		fmt.Sprintf("ip daddr . meta l4proto . th dport . th sport != @%s add @%s { ip daddr . meta l4proto . th dport . th sport } counter name %q%s",
			vmChain(short)+seenSetSuffix, vmChain(short)+seenSetSuffix, vmChain(short)+deniedSuffix, logStatement(short, logGroup)),
		"drop",
	}
	switch f.Egress.Effective() {
	case model.EgressOpen:
		return []string{"accept"}
	case model.EgressNone:
		return append([]string{"ct direction reply accept"}, deny...)
	}
	mark := fmt.Sprintf("0x%08x", egressMark(f.Egress))
	return append([]string{
		"ct direction reply accept",
		"ct state established,related ct mark " + mark + " accept",
		"ip daddr @" + vmChain(short) + allowSetSuffix + " ct mark set " + mark + " accept",
		"ip daddr @" + vmChain(short) + dnsSetSuffix + " ct mark set " + mark + " accept",
	}, deny...)
}

// logStatement reports a denied flow on an NFLOG group, with the VM's
// short ID in the prefix; group 0 means no logging.
func logStatement(short string, group int) string {
	if group <= 0 {
		return ""
	}
	return fmt.Sprintf(" log prefix %q group %d", logPrefix(short), group)
}

// logPrefix is the NFLOG prefix of a VM's denied flows.
func logPrefix(short string) string { return "banger:vm=" + short + " " }

// mergePrefixes drops networks contained in others (an nft interval set
// refuses overlapping elements) and sorts the rest.
func mergePrefixes(in []netip.Prefix) []netip.Prefix {
	sorted := append([]netip.Prefix(nil), in...)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Bits() != sorted[j].Bits() {
			return sorted[i].Bits() < sorted[j].Bits()
		}
		return sorted[i].Addr().Less(sorted[j].Addr())
	})
	var out []netip.Prefix
	for _, p := range sorted {
		covered := false
		for _, q := range out {
			if q.Contains(p.Addr()) && q.Bits() <= p.Bits() {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}

// enableScript (re)builds a VM's filter in one transaction: whatever of
// the VM's objects exist goes (except its counter, so the denied count
// survives a policy change), map elements that another VM left on the
// same tap or IP go, and everything is added fresh.
func enableScript(st nftState, f Filter, logGroup int) string {
	short := model.ShortID(f.VMID)
	var s script
	removeVMObjects(&s, st, short, false)
	for _, e := range st.elems {
		if e.Target == vmChain(short) {
			continue // removed above
		}
		if (e.Family == "bridge" && e.Map == "ports" && e.Key == f.Tap) || (e.Family == "inet" && e.Map == "guests" && e.Key == f.GuestIP) {
			s.add("delete element %s %s %s { %s }", e.Family, filterTable, e.Map, elemKey(e))
		}
	}
	t, ch := filterTable, vmChain(short)
	s.add("add chain bridge %s %s", t, ch)
	for _, r := range bridgeRules(f) {
		s.add("add rule bridge %s %s %s", t, ch, r)
	}
	s.add("add element bridge %s ports { %q : jump %s }", t, f.Tap, ch)

	s.add("add counter inet %s %s", t, ch+deniedSuffix)
	s.add("add set inet %s %s { type ipv4_addr ; flags interval ; }", t, ch+allowSetSuffix)
	s.add("add set inet %s %s { type ipv4_addr ; flags timeout ; }", t, ch+dnsSetSuffix)
	s.add("add set inet %s %s { type ipv4_addr . inet_proto . inet_service . inet_service ; flags dynamic,timeout ; timeout 1m ; size 4096 ; }", t, ch+seenSetSuffix)
	s.add("add chain inet %s %s", t, ch)
	for _, r := range egressRules(f, short, logGroup) {
		s.add("add rule inet %s %s %s", t, ch, r)
	}
	if pfx := mergePrefixes(f.Egress.Prefixes()); len(pfx) > 0 {
		var el []string
		for _, p := range pfx {
			el = append(el, p.String())
		}
		s.add("add element inet %s %s { %s }", t, ch+allowSetSuffix, strings.Join(el, ", "))
	}
	s.add("add element inet %s guests { %s : jump %s }", t, f.GuestIP, ch)
	return s.String()
}

// removeScript removes every object of one VM, counter included.
func removeScript(st nftState, short string) string {
	var s script
	removeVMObjects(&s, st, short, true)
	return s.String()
}

// removeVMObjects adds the commands that delete a VM's listed objects:
// map elements that jump to its chains first, then the chains (flushed
// first: older kernels refuse to delete a chain with rules), then its
// sets, then (with counter) its counter.
func removeVMObjects(s *script, st nftState, short string, counter bool) {
	ch := vmChain(short)
	for _, e := range st.elems {
		if e.Target == ch {
			s.add("delete element %s %s %s { %s }", e.Family, filterTable, e.Map, elemKey(e))
		}
	}
	for _, fam := range []string{"bridge", "inet"} {
		if _, ok := st.chains[fam+"/"+ch]; ok {
			s.add("flush chain %s %s %s", fam, filterTable, ch)
			s.add("delete chain %s %s %s", fam, filterTable, ch)
		}
	}
	for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix} {
		if st.sets["inet/"+ch+suf] {
			s.add("delete set inet %s %s", filterTable, ch+suf)
		}
	}
	if _, ok := st.counters["inet/"+ch+deniedSuffix]; ok && counter {
		s.add("delete counter inet %s %s", filterTable, ch+deniedSuffix)
	}
}

// elemKey is a map element's key as nft syntax: interface names quoted.
func elemKey(e mapElem) string {
	if e.Map == "ports" {
		return fmt.Sprintf("%q", e.Key)
	}
	return e.Key
}

// ResolvedAddr is an address the daemon's DNS answered for a name a VM's
// policy allows, and how long the answer holds.
type ResolvedAddr struct {
	Addr netip.Addr
	TTL  uint32
}

// Bounds of how long a resolved address stays allowed, in seconds: at
// least long enough to connect after the answer, at most a day.
const (
	minResolvedTTL = 10
	maxResolvedTTL = 86400
)

// allowResolvedScript adds resolved addresses to a VM's dns set, each for
// its TTL (bounded). An address already in the set gets the new timeout:
// it is added (a no-op if present), deleted and added again, in one
// transaction, because older kernels keep an element's old timeout on a
// plain add.
func allowResolvedScript(short string, addrs []ResolvedAddr) string {
	set := vmChain(short) + dnsSetSuffix
	best := map[netip.Addr]uint32{}
	for _, a := range addrs {
		if !a.Addr.Is4() {
			continue
		}
		ttl := min(max(a.TTL, minResolvedTTL), maxResolvedTTL)
		if ttl > best[a.Addr] {
			best[a.Addr] = ttl
		}
	}
	if len(best) == 0 {
		return ""
	}
	keys := make([]netip.Addr, 0, len(best))
	for a := range best {
		keys = append(keys, a)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	var plain, timed []string
	for _, a := range keys {
		plain = append(plain, a.String())
		timed = append(timed, fmt.Sprintf("%s timeout %ds", a, best[a]))
	}
	var s script
	s.add("add element inet %s %s { %s }", filterTable, set, strings.Join(plain, ", "))
	s.add("delete element inet %s %s { %s }", filterTable, set, strings.Join(plain, ", "))
	s.add("add element inet %s %s { %s }", filterTable, set, strings.Join(timed, ", "))
	return s.String()
}
