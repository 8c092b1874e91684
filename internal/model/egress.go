package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// EgressMode says how much of the world outside the host a guest may open
// connections to.
type EgressMode string

// The egress modes.
const (
	// EgressOpen lets the guest reach anything the host routes to (NAT
	// still decides whether anything beyond the host answers).
	EgressOpen EgressMode = "open"
	// EgressNone drops everything the guest sends beyond the host; the
	// daemon's DNS resolves no outside names for it.
	EgressNone EgressMode = "none"
	// EgressAllow lets through only the networks and names of the list.
	EgressAllow EgressMode = "allow"
)

// MaxEgressEntries bounds an allow list.
const MaxEgressEntries = 256

// EgressPolicy is where a guest may open connections beyond the host.
// Whatever the policy, a guest never reaches other guests or the host
// itself (except the daemon's DNS).
type EgressPolicy struct {
	// Mode is open, none or allow; empty means open (VMs made before
	// egress policies existed).
	Mode EgressMode `json:"mode"`
	// Allow is the list of mode allow: IPv4 networks in CIDR notation (a
	// bare address means /32) and domain names. "*.example.com" matches
	// every name below example.com (at any depth) but not example.com
	// itself. A name lets through the addresses the daemon's DNS answers
	// for it, for the answer's TTL.
	Allow []string `json:"allow,omitempty"`
}

// ParseEgress parses the command-line form of a policy: "open", "none",
// or "allow=LIST" with LIST comma-separated networks and domain names.
// The result is normalized (see Normalize). Errors are EINVALID and say
// what is allowed.
func ParseEgress(s string) (EgressPolicy, error) {
	s = strings.TrimSpace(s)
	mode, list, hasList := strings.Cut(s, "=")
	p := EgressPolicy{Mode: EgressMode(strings.ToLower(strings.TrimSpace(mode)))}
	switch p.Mode {
	case EgressOpen, EgressNone:
		if hasList {
			return EgressPolicy{}, Errorf(EINVALID, "egress %q: %s takes no list; use open, none or allow=LIST", s, p.Mode)
		}
	case EgressAllow:
		if !hasList || strings.TrimSpace(list) == "" {
			return EgressPolicy{}, Errorf(EINVALID, "egress %q: allow needs a list, such as allow=10.0.0.0/8,example.com,*.github.com", s)
		}
		for _, e := range strings.Split(list, ",") {
			p.Allow = append(p.Allow, strings.TrimSpace(e))
		}
	default:
		return EgressPolicy{}, Errorf(EINVALID, "egress %q: unknown mode; use open, none or allow=LIST (networks and domain names, comma-separated)", s)
	}
	return p.Normalize()
}

// Effective returns the mode in force: an empty mode is open.
func (p EgressPolicy) Effective() EgressMode {
	if p.Mode == "" {
		return EgressOpen
	}
	return p.Mode
}

// String returns the command-line form: open, none or allow=a,b.
func (p EgressPolicy) String() string {
	if p.Effective() == EgressAllow {
		return "allow=" + strings.Join(p.Allow, ",")
	}
	return string(p.Effective())
}

// Normalize validates a policy and returns it in canonical form: an
// explicit mode, entries lowercased, bare addresses as /32, duplicates
// dropped, order kept. Errors are EINVALID and name the bad entry.
func (p EgressPolicy) Normalize() (EgressPolicy, error) {
	out := EgressPolicy{Mode: p.Effective()}
	switch out.Mode {
	case EgressOpen, EgressNone:
		if len(p.Allow) > 0 {
			return EgressPolicy{}, Errorf(EINVALID, "egress %s: takes no allow list; use mode allow", out.Mode)
		}
		return out, nil
	case EgressAllow:
	default:
		return EgressPolicy{}, Errorf(EINVALID, "egress mode %q: use open, none or allow", p.Mode)
	}
	if len(p.Allow) == 0 {
		return EgressPolicy{}, Errorf(EINVALID, "egress allow: the list is empty; name networks or domains, such as allow=10.0.0.0/8,*.github.com (or use none)")
	}
	if len(p.Allow) > MaxEgressEntries {
		return EgressPolicy{}, Errorf(EINVALID, "egress allow: %d entries; at most %d", len(p.Allow), MaxEgressEntries)
	}
	seen := map[string]bool{}
	for _, e := range p.Allow {
		c, err := normalizeEgressEntry(e)
		if err != nil {
			return EgressPolicy{}, err
		}
		if !seen[c] {
			seen[c] = true
			out.Allow = append(out.Allow, c)
		}
	}
	return out, nil
}

// normalizeEgressEntry checks one allow entry and returns its canonical
// form.
func normalizeEgressEntry(e string) (string, error) {
	e = strings.ToLower(strings.TrimSpace(e))
	if e == "" {
		return "", Errorf(EINVALID, "egress allow: an empty entry (two commas, or a trailing one?)")
	}
	if strings.Contains(e, ":") {
		return "", Errorf(EINVALID, "egress allow %q: IPv6 is not supported (guests have IPv4 only)", e)
	}
	if strings.Contains(e, "/") || looksNumeric(e) {
		return normalizeEgressPrefix(e)
	}
	if err := validateDomainPattern(e); err != nil {
		return "", err
	}
	return strings.TrimSuffix(e, "."), nil
}

// looksNumeric reports whether s has only digits and dots: meant as an
// address, never a domain name (no top-level domain is numeric).
func looksNumeric(s string) bool {
	return strings.Trim(s, "0123456789.") == ""
}

func normalizeEgressPrefix(e string) (string, error) {
	var pfx netip.Prefix
	var err error
	if strings.Contains(e, "/") {
		pfx, err = netip.ParsePrefix(e)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(e); err == nil {
			pfx = netip.PrefixFrom(a, 32)
		}
	}
	if err != nil || !pfx.Addr().Is4() {
		return "", Errorf(EINVALID, "egress allow %q: not an IPv4 address or network (use a.b.c.d or a.b.c.d/n)", e)
	}
	if m := pfx.Masked(); m != pfx {
		return "", Errorf(EINVALID, "egress allow %q: has host bits set; did you mean %s?", e, m)
	}
	return pfx.String(), nil
}

// validateDomainPattern checks a domain name, optionally starting with
// "*." (the only place a wildcard may be).
func validateDomainPattern(e string) error {
	name := strings.TrimSuffix(e, ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name = rest
	}
	bad := func(why string) error {
		return Errorf(EINVALID, "egress allow %q: not a domain name or IPv4 network: %s", e, why)
	}
	if name == "" {
		return bad("empty name")
	}
	if len(name) > 253 {
		return bad("longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		switch {
		case l == "":
			return bad("empty label")
		case l == "*" || strings.Contains(l, "*"):
			return bad("a wildcard may only be the whole first label, as in *.example.com")
		case len(l) > 63:
			return bad("a label is longer than 63 characters")
		case l[0] == '-' || l[len(l)-1] == '-':
			return bad("a label starts or ends with '-'")
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return bad(fmt.Sprintf("%q is not allowed (letters, digits, '-', '_')", r))
			}
		}
	}
	if looksNumeric(labels[len(labels)-1]) {
		return bad("the last label is numeric")
	}
	return nil
}

// Prefixes returns the networks of an allow list (entries normalized).
func (p EgressPolicy) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, e := range p.Allow {
		if pfx, err := netip.ParsePrefix(e); err == nil {
			out = append(out, pfx)
		}
	}
	return out
}

// Domains returns the domain patterns of an allow list.
func (p EgressPolicy) Domains() []string {
	var out []string
	for _, e := range p.Allow {
		if _, err := netip.ParsePrefix(e); err != nil {
			out = append(out, e)
		}
	}
	return out
}

// AllowsName reports whether a policy lets the guest resolve name through
// the daemon's DNS: open allows every name, none none, allow the names its
// domain patterns match.
func (p EgressPolicy) AllowsName(name string) bool {
	switch p.Effective() {
	case EgressOpen:
		return true
	case EgressAllow:
		return slices.ContainsFunc(p.Domains(), func(pat string) bool { return MatchDomain(pat, name) })
	}
	return false
}

// MatchDomain reports whether name matches a domain pattern, case
// insensitively and ignoring a final dot: "example.com" matches only
// itself; "*.example.com" matches names below example.com at any depth,
// not example.com itself.
func MatchDomain(pattern, name string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(name, "."+rest) && len(name) > len(rest)+1
	}
	return name == pattern
}
