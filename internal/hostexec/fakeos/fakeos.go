// Package fakeos is a stateful fake of the host commands banger runs (ip,
// iptables, sysctl, losetup, dmsetup, ...), for unit tests at the
// hostexec seam. It keeps the state those commands would change, prints it
// in a stable text form for tests to compare, and fails any command it
// does not understand so a test can never pass by accident.
package fakeos

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"banger/internal/hostexec"
)

// Link is a network interface.
type Link struct {
	Name   string
	Kind   string // "bridge", "tap", ...
	Master string
	Up     bool
	Addrs  []string // CIDR notation
	// Isolated is the bridge port flag (reset when the port leaves its
	// bridge).
	Isolated bool
	// MAC is the link's address as `ip link set ... address` set it;
	// "" shows a made-up address derived from the name.
	MAC string
}

// Loop is an attached loop device.
type Loop struct {
	Dev      string // /dev/loopN
	File     string
	ReadOnly bool
}

// DMDevice is a device-mapper device.
type DMDevice struct {
	Name  string
	Table string
}

// OS is the fake host state. The exported fields may be set up directly by
// tests; commands change them through the handlers.
type OS struct {
	mu sync.Mutex

	Links  map[string]*Link
	Rules  map[string][]string // "table/chain" → rule specs in order
	Sysctl map[string]string
	Loops  map[string]*Loop     // by device
	DM     map[string]*DMDevice // by name
	// Neigh are the neighbour entries `ip neigh replace` set: "DEV IP"
	// → "MAC STATE".
	Neigh map[string]string
	// HostKeys are the SSH host public keys debugfs wrote, by disk path.
	HostKeys map[string]string
	// Nft holds nftables tables by "family name".
	Nft map[string]*NftTable
	// Resolved is systemd-resolved's per-link configuration, by link
	// name; nil means systemd-resolved is not running (see
	// RunResolved).
	Resolved map[string]*ResolvedLink
	// Mounts are mounted filesystems by mount point (pool.go).
	Mounts map[string]*Mount

	// Fail makes the next command whose argv starts with the key fail
	// with the value as its output.
	Fail map[string]string

	handlers map[string]handler
	fake     *hostexec.Fake
}

// handler runs one command against the state. It is called with mu held.
type handler func(o *OS, args []string, stdin string) (string, error)

// New returns an empty host with the standard iptables chains.
func New() *OS {
	o := &OS{
		Links:    map[string]*Link{"lo": {Name: "lo", Kind: "loopback", Up: true}},
		Rules:    map[string][]string{},
		Sysctl:   map[string]string{"net.ipv4.ip_forward": "0"},
		Loops:    map[string]*Loop{},
		DM:       map[string]*DMDevice{},
		HostKeys: map[string]string{},
		Neigh:    map[string]string{},
		Nft:      map[string]*NftTable{},
		Mounts:   map[string]*Mount{},
		Fail:     map[string]string{},
		handlers: map[string]handler{},
	}
	for _, c := range []string{"filter/INPUT", "filter/FORWARD", "filter/OUTPUT", "nat/PREROUTING", "nat/INPUT", "nat/OUTPUT", "nat/POSTROUTING"} {
		o.Rules[c] = nil
	}
	for name, h := range registry {
		o.handlers[name] = h
	}
	o.fake = &hostexec.Fake{Handler: o.handle}
	return o
}

// registry holds the handlers that the files of this package register in
// init, one per command name.
var registry = map[string]handler{}

func register(name string, h handler) { registry[name] = h }

// Runner returns the hostexec.Runner that acts on this state.
func (o *OS) Runner() *hostexec.Fake { return o.fake }

func (o *OS) handle(argv []string, stdin string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	joined := strings.Join(argv, " ")
	for prefix, out := range o.Fail {
		if strings.HasPrefix(joined, prefix) {
			delete(o.Fail, prefix)
			return out, fmt.Errorf("exit status 1")
		}
	}
	h, ok := o.handlers[argv[0]]
	if !ok {
		return "", hostexec.ErrUnexpected
	}
	return h(o, argv[1:], stdin)
}

// String prints the state: links, rules, sysctls, loops, dm devices and
// nftables objects, one per line, sorted where order does not matter.
// Rule order within a chain is kept, since it matters to iptables and
// nft.
func (o *OS) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	names := make([]string, 0, len(o.Links))
	for n := range o.Links {
		if n != "lo" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		l := o.Links[n]
		fmt.Fprintf(&b, "link %s %s", l.Name, l.Kind)
		if l.Master != "" {
			fmt.Fprintf(&b, " master=%s", l.Master)
		}
		if l.Up {
			b.WriteString(" up")
		}
		if l.Isolated {
			b.WriteString(" isolated")
		}
		for _, a := range l.Addrs {
			fmt.Fprintf(&b, " %s", a)
		}
		b.WriteString("\n")
	}
	chains := make([]string, 0, len(o.Rules))
	for c := range o.Rules {
		chains = append(chains, c)
	}
	sort.Strings(chains)
	for _, c := range chains {
		for _, r := range o.Rules[c] {
			fmt.Fprintf(&b, "rule %s %s\n", c, r)
		}
	}
	keys := make([]string, 0, len(o.Sysctl))
	for k := range o.Sysctl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "sysctl %s=%s\n", k, o.Sysctl[k])
	}
	devs := make([]string, 0, len(o.Loops))
	for d := range o.Loops {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	for _, d := range devs {
		l := o.Loops[d]
		ro := ""
		if l.ReadOnly {
			ro = " ro"
		}
		fmt.Fprintf(&b, "loop %s %s%s\n", l.Dev, l.File, ro)
	}
	dms := make([]string, 0, len(o.DM))
	for n := range o.DM {
		dms = append(dms, n)
	}
	sort.Strings(dms)
	for _, n := range dms {
		fmt.Fprintf(&b, "dm %s %s\n", n, o.DM[n].Table)
	}
	nftString(o, &b)
	resolvedString(o, &b)
	return b.String()
}
