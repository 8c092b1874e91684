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
// routes for them). The builders here are pure: they turn a configuration,
// a VM's filter and the listed state into the changes to make.
//
// Base objects (made by EnsureFilter, as one `nft -f` script, off the
// start path):
//
//	bridge banger: set taps (banger taps named otherwise than the tap
//	  prefix), set ident (tap . MAC . IP of every VM); chain prerouting:
//	  every banger tap goes to chain guest, which passes only ARP and
//	  IPv4 whose tap, source MAC and source IP are a VM's element of
//	  ident, and drops everything else (so a tap without a VM passes
//	  nothing).
//	inet banger: map guests (guest IP → accept, or jump vm-<short>);
//	  chain input: from the bridge only established traffic and DNS to
//	  the bridge IP; chain forward: nothing routed from the bridge back
//	  to it (guest to guest), guests' traffic by their guests element,
//	  anything else from the bridge dropped.
//
// A VM's filter is then, on the default start path (egress open), three
// elements and nothing else: its tap in taps, its tap . MAC . IP in
// ident and its IP : accept in guests, each with the comment vm-<short>
// so that reconcile knows whose it is. The Manager adds and removes them
// in one netlink transaction (nftlink.go), no nft process. A VM whose
// policy is none or allow has its IP jump to its own chain instead,
// made with its objects in one `nft -f` script: chain vm-<short> (the
// egress policy), sets vm-<short>-allow (the policy's networks),
// vm-<short>-dns (addresses the daemon's DNS answered for allowed
// names, with their TTL), vm-<short>-seen (denied flows already counted)
// and the counter vm-<short>-denied.

// filterTable is the name of banger's table in both families.
const filterTable = "banger"

// vmObjPrefix starts the name of every per-VM object.
const vmObjPrefix = "vm-"

// Names of the base sets, map and chain that hold the VMs' elements.
const (
	tapsSet    = "taps"
	identSet   = "ident"
	guestsMap  = "guests"
	guestChain = "guest"
)

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
// harmless: tables, sets, maps and chains are added if missing, the base
// chains are flushed and refilled in the same transaction, and the per-VM
// objects and elements are kept.
func baseScript(c Config) string {
	var s script
	t := filterTable
	s.add("add table bridge %s", t)
	s.add("add set bridge %s %s { type ifname ; }", t, tapsSet)
	s.add("add set bridge %s %s { type ifname . ether_addr . ipv4_addr ; }", t, identSet)
	s.add("add chain bridge %s prerouting { type filter hook prerouting priority -300 ; policy accept ; }", t)
	s.add("add chain bridge %s %s", t, guestChain)
	s.add("flush chain bridge %s prerouting", t)
	s.add("flush chain bridge %s %s", t, guestChain)
	s.add("add rule bridge %s prerouting iifname %q jump %s", t, c.TapPrefix+"*", guestChain)
	s.add("add rule bridge %s prerouting iifname @%s jump %s", t, tapsSet, guestChain)
	for _, r := range bridgeRules() {
		s.add("add rule bridge %s %s %s", t, guestChain, r)
	}

	s.add("add table inet %s", t)
	s.add("add map inet %s %s { type ipv4_addr : verdict ; }", t, guestsMap)
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
	s.add("add rule inet %s forward iifname %q ip saddr vmap @%s", t, br, guestsMap)
	s.add("add rule inet %s forward iifname %q drop", t, br)
	return s.String()
}

// bridgeRules are the anti-spoofing rules of chain guest, the same for
// every VM: the VM is known by its tap's element of ident. ARP must be
// Ethernet/IPv4 and its frame's source MAC and the MAC and IP it
// announces must be the tap's VM's; IPv4 must come from the VM's MAC and
// IP and may not be a DHCP server's reply; nothing else (IPv6, VLAN
// tags, other ethertypes) passes. Each arp and ip match carries its own
// protocol test (nft adds it), so a rule about ARP never drops IPv4.
func bridgeRules() []string {
	return []string{
		"arp htype != 1 drop",
		"arp ptype != ip drop",
		"arp hlen != 6 drop",
		"arp plen != 4 drop",
		"iifname . ether saddr . arp saddr ip != @" + identSet + " drop",
		"iifname . arp saddr ether . arp saddr ip != @" + identSet + " drop",
		"ether type arp accept",
		"iifname . ether saddr . ip saddr != @" + identSet + " drop",
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

// filterOp is one change to banger's tables: elements deleted and
// added, and, when a VM's own objects change, the commands that delete
// and make them. It applies as one transaction, in this order: dels,
// drop, make, adds (a chain is deleted only once no element jumps to
// it, and an element jumps only to a chain made before it). An op with
// elements only is what the start path of an open VM makes; it needs no
// nft process (elemWriter).
type filterOp struct {
	dels, adds []setElem
	drop, make []string
}

// elementsOnly reports whether op changes elements and nothing else.
func (op filterOp) elementsOnly() bool { return len(op.drop) == 0 && len(op.make) == 0 }

// script is the op as one nft script.
func (op filterOp) script() string {
	var s script
	for _, e := range op.dels {
		s.add("delete element %s %s %s { %s }", e.Family, filterTable, e.Set, elemKeyText(e))
	}
	for _, l := range op.drop {
		s.add("%s", l)
	}
	for _, l := range op.make {
		s.add("%s", l)
	}
	for _, e := range op.adds {
		s.add("add element %s %s %s { %s }", e.Family, filterTable, e.Set, elemText(e))
	}
	return s.String()
}

// vmElems are the elements a VM's filter puts in the base sets and map.
func vmElems(f Filter) []setElem {
	short := model.ShortID(f.VMID)
	verdict := "accept"
	if f.Egress.Effective() != model.EgressOpen {
		verdict = "jump " + vmChain(short)
	}
	return []setElem{
		{Family: "bridge", Set: tapsSet, Key: f.Tap, Owner: short},
		{Family: "bridge", Set: identSet, Key: f.Tap + " . " + f.GuestMAC + " . " + f.GuestIP, Owner: short},
		{Family: "inet", Set: guestsMap, Key: f.GuestIP, Verdict: verdict, Owner: short},
	}
}

// enableOp (re)builds a VM's filter in one transaction: the VM's
// elements and its objects that exist go (except its counter, so the
// denied count survives a policy change), elements that another VM left
// on the same tap or IP go, and everything is added fresh. An open VM
// that has no objects of its own gets an op of elements only.
func enableOp(st nftState, f Filter, logGroup int) filterOp {
	short := model.ShortID(f.VMID)
	var op filterOp
	removeVMObjects(&op, st, short, false)
	for _, e := range st.elems {
		if e.owner() == short {
			continue // removed above
		}
		if elemClashes(e, f) {
			op.dels = append(op.dels, e)
		}
	}
	if f.Egress.Effective() != model.EgressOpen {
		t, ch := filterTable, vmChain(short)
		op.make = append(op.make,
			fmt.Sprintf("add counter inet %s %s", t, ch+deniedSuffix),
			fmt.Sprintf("add set inet %s %s { type ipv4_addr ; flags interval ; }", t, ch+allowSetSuffix),
			fmt.Sprintf("add set inet %s %s { type ipv4_addr ; flags timeout ; }", t, ch+dnsSetSuffix),
			fmt.Sprintf("add set inet %s %s { type ipv4_addr . inet_proto . inet_service . inet_service ; flags dynamic,timeout ; timeout 1m ; size 4096 ; }", t, ch+seenSetSuffix),
			fmt.Sprintf("add chain inet %s %s", t, ch))
		for _, r := range egressRules(f, short, logGroup) {
			op.make = append(op.make, fmt.Sprintf("add rule inet %s %s %s", t, ch, r))
		}
		if pfx := mergePrefixes(f.Egress.Prefixes()); len(pfx) > 0 {
			var el []string
			for _, p := range pfx {
				el = append(el, p.String())
			}
			op.make = append(op.make, fmt.Sprintf("add element inet %s %s { %s }", t, ch+allowSetSuffix, strings.Join(el, ", ")))
		}
	}
	op.adds = vmElems(f)
	return op
}

// elemClashes reports whether an element (another VM's) names f's tap
// or IP: a VM's tap and IP are its own, so such an element is stale.
func elemClashes(e setElem, f Filter) bool {
	switch e.Family + "/" + e.Set {
	case "bridge/" + tapsSet, "bridge/ports":
		return e.Key == f.Tap
	case "bridge/" + identSet:
		parts := strings.Split(e.Key, " . ")
		return len(parts) == 3 && (parts[0] == f.Tap || parts[2] == f.GuestIP)
	case "inet/" + guestsMap:
		return e.Key == f.GuestIP
	}
	return false
}

// removeOp removes every object and element of one VM, counter
// included.
func removeOp(st nftState, short string) filterOp {
	var op filterOp
	removeVMObjects(&op, st, short, true)
	return op
}

// removeScript is removeOp as an nft script.
func removeScript(st nftState, short string) string { return removeOp(st, short).script() }

// removeVMObjects adds to op what deletes a VM's listed elements and
// objects: its elements (those with its comment, and those that jump to
// its chains) first, then its chains (flushed first: older kernels
// refuse to delete a chain with rules), then its sets, then (with
// counter) its counter. Chains in the bridge table are those of an
// older banger, which had one per VM.
func removeVMObjects(op *filterOp, st nftState, short string, counter bool) {
	ch := vmChain(short)
	for _, e := range st.elems {
		if e.owner() == short {
			op.dels = append(op.dels, e)
		}
	}
	for _, fam := range []string{"bridge", "inet"} {
		if _, ok := st.chains[fam+"/"+ch]; ok {
			op.drop = append(op.drop,
				fmt.Sprintf("flush chain %s %s %s", fam, filterTable, ch),
				fmt.Sprintf("delete chain %s %s %s", fam, filterTable, ch))
		}
	}
	for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix} {
		if st.sets["inet/"+ch+suf] {
			op.drop = append(op.drop, fmt.Sprintf("delete set inet %s %s", filterTable, ch+suf))
		}
	}
	if _, ok := st.counters["inet/"+ch+deniedSuffix]; ok && counter {
		op.drop = append(op.drop, fmt.Sprintf("delete counter inet %s %s", filterTable, ch+deniedSuffix))
	}
}

// elemKeyText is an element's key as nft syntax: interface names
// (the first field of the bridge sets' keys) quoted.
func elemKeyText(e setElem) string {
	if e.Family != "bridge" {
		return e.Key
	}
	first, rest, more := strings.Cut(e.Key, " . ")
	if more {
		return fmt.Sprintf("%q . %s", first, rest)
	}
	return fmt.Sprintf("%q", first)
}

// elemText is an element as nft syntax for an add: key, the owner's
// comment, and a map element's verdict.
func elemText(e setElem) string {
	s := elemKeyText(e)
	if e.Owner != "" {
		s += fmt.Sprintf(" comment %q", vmChain(e.Owner))
	}
	if e.Verdict != "" {
		s += " : " + e.Verdict
	}
	return s
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
