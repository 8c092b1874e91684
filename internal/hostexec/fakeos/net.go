package fakeos

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"banger/internal/hostexec"
)

// This file fakes the network commands: ip (links, bridges, taps,
// addresses, JSON listing), iptables (rule lists with exact-spec
// matching) and sysctl. Messages and failures follow iproute2 6.1,
// iptables 1.8.9 and procps where banger can meet them.

func init() {
	register("ip", ipCommand)
	register("iptables", iptablesCommand)
	register("sysctl", sysctlCommand)
}

// errNetExit is the error of a known command that failed the way the
// real one would.
var errNetExit = errors.New("exit status 1")

func netFail(format string, args ...any) (string, error) {
	return fmt.Sprintf(format, args...) + "\n", errNetExit
}

// netUnexpected fails a command or flag the fake does not implement, so
// the test sees it in Unexpected.
func netUnexpected(cmd string, args []string) (string, error) {
	return fmt.Sprintf("fakeos: %s %s: not implemented\n", cmd, strings.Join(args, " ")), hostexec.ErrUnexpected
}

// ipCommand implements: ip [-j] [-d] link|addr show [dev NAME] (JSON
// only), ip link add [name] NAME type bridge, ip link del [dev] NAME, ip
// link set [dev] NAME {up|down|master M|nomaster}..., ip link set [dev]
// NAME type bridge_slave isolated on|off, ip tuntap add|del
// [dev] NAME mode tap|tun, ip addr add CIDR dev NAME, ip neigh replace
// IP lladdr MAC dev NAME nud STATE.
func ipCommand(o *OS, args []string, _ string) (string, error) {
	all := args
	var jsonOut, details bool
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-j", "-json":
			jsonOut = true
		case "-d", "-details":
			details = true
		default:
			return netUnexpected("ip", all)
		}
		args = args[1:]
	}
	if len(args) < 2 {
		return netUnexpected("ip", all)
	}
	obj, verb, rest := args[0], args[1], args[2:]
	if obj == "address" {
		obj = "addr"
	}
	switch obj + " " + verb {
	case "link show", "addr show":
		if !jsonOut {
			return netUnexpected("ip", all)
		}
		return ipShow(o, obj == "addr", details, rest, all)
	case "link add":
		return ipLinkAdd(o, rest, all)
	case "link del", "link delete":
		return ipLinkDel(o, rest, all)
	case "link set":
		return ipLinkSet(o, rest, all)
	case "tuntap add":
		return ipTuntap(o, true, rest, all)
	case "tuntap del", "tuntap delete":
		return ipTuntap(o, false, rest, all)
	case "addr add":
		return ipAddrAdd(o, rest, all)
	case "addr del", "addr delete":
		return ipAddrDel(o, rest, all)
	case "neigh replace":
		return ipNeighReplace(o, rest, all)
	}
	return netUnexpected("ip", all)
}

// ipNeighReplace implements ip neigh replace IP lladdr MAC dev NAME nud
// STATE.
func ipNeighReplace(o *OS, args, all []string) (string, error) {
	if len(args) != 7 || args[1] != "lladdr" || args[3] != "dev" || args[5] != "nud" {
		return netUnexpected("ip", all)
	}
	if _, ok := o.Links[args[4]]; !ok {
		return netFail("Cannot find device %q", args[4])
	}
	o.Neigh[args[4]+" "+args[0]] = args[2] + " " + args[6]
	return "", nil
}

// ipDevArg takes the device name that starts args, after an optional
// "dev" or "name" keyword.
func ipDevArg(args []string) (string, []string, bool) {
	if len(args) > 0 && (args[0] == "dev" || args[0] == "name") {
		args = args[1:]
	}
	if len(args) == 0 {
		return "", nil, false
	}
	return args[0], args[1:], true
}

func ipLinkAdd(o *OS, args, all []string) (string, error) {
	name, rest, ok := ipDevArg(args)
	if !ok || len(rest) != 2 || rest[0] != "type" || rest[1] != "bridge" {
		return netUnexpected("ip", all)
	}
	if _, exists := o.Links[name]; exists {
		return netFail("RTNETLINK answers: File exists")
	}
	o.Links[name] = &Link{Name: name, Kind: "bridge"}
	return "", nil
}

func ipLinkDel(o *OS, args, all []string) (string, error) {
	name, rest, ok := ipDevArg(args)
	if !ok || len(rest) != 0 {
		return netUnexpected("ip", all)
	}
	if _, exists := o.Links[name]; !exists {
		return netFail("Cannot find device %q", name)
	}
	ipRemoveLink(o, name)
	return "", nil
}

// ipRemoveLink deletes a link; a deleted bridge releases its ports,
// which lose their port flags.
func ipRemoveLink(o *OS, name string) {
	delete(o.Links, name)
	// systemd-resolved forgets a link's settings when the link goes.
	delete(o.Resolved, name)
	for _, l := range o.Links {
		if l.Master == name {
			l.Master = ""
			l.Isolated = false
		}
	}
}

func ipLinkSet(o *OS, args, all []string) (string, error) {
	name, rest, ok := ipDevArg(args)
	if !ok || len(rest) == 0 {
		return netUnexpected("ip", all)
	}
	if rest[0] == "type" {
		return ipLinkSetSlave(o, name, rest, all)
	}
	// Parse everything before changing anything, as ip sends one request.
	var up, down, nomaster bool
	master, mac := "", ""
	for i := 0; i < len(rest); i++ {
		switch rest[i] {
		case "address":
			if i+1 >= len(rest) {
				return netUnexpected("ip", all)
			}
			i++
			if _, err := net.ParseMAC(rest[i]); err != nil {
				return netFail("Error: \"%s\" is not a valid MAC address.", rest[i])
			}
			mac = rest[i]
		case "up":
			up = true
		case "down":
			down = true
		case "nomaster":
			nomaster = true
		case "master":
			if i+1 >= len(rest) {
				return netUnexpected("ip", all)
			}
			i++
			master = rest[i]
		default:
			return netUnexpected("ip", all)
		}
	}
	l, exists := o.Links[name]
	if master != "" {
		m, ok := o.Links[master]
		if !ok {
			return netFail("Error: argument %q is wrong: Device does not exist", master)
		}
		if m.Kind != "bridge" || master == name {
			return netFail("RTNETLINK answers: Operation not supported")
		}
	}
	if !exists {
		return netFail("Cannot find device %q", name)
	}
	switch {
	case master != "" && master != l.Master:
		l.Master = master
		l.Isolated = false
	case nomaster:
		l.Master = ""
		l.Isolated = false
	}
	switch {
	case up:
		l.Up = true
	case down:
		l.Up = false
	}
	if mac != "" {
		l.MAC = mac
	}
	return "", nil
}

// ipLinkSetSlave implements ip link set NAME type bridge_slave isolated
// on|off: only a bridge port has port flags, and the type cannot be
// combined with other changes (as with the real command, which sends the
// master change and the port data in separate requests).
func ipLinkSetSlave(o *OS, name string, rest, all []string) (string, error) {
	if len(rest) != 4 || rest[1] != "bridge_slave" || rest[2] != "isolated" || (rest[3] != "on" && rest[3] != "off") {
		return netUnexpected("ip", all)
	}
	l, exists := o.Links[name]
	if !exists {
		return netFail("Cannot find device %q", name)
	}
	if m, ok := o.Links[l.Master]; !ok || m.Kind != "bridge" {
		return netFail("RTNETLINK answers: Operation not supported")
	}
	l.Isolated = rest[3] == "on"
	return "", nil
}

func ipTuntap(o *OS, add bool, args, all []string) (string, error) {
	name, rest, ok := ipDevArg(args)
	if !ok || len(rest) != 2 || rest[0] != "mode" || (rest[1] != "tap" && rest[1] != "tun") {
		return netUnexpected("ip", all)
	}
	l, exists := o.Links[name]
	if add {
		if exists {
			return netFail("ioctl(TUNSETIFF): Device or resource busy")
		}
		o.Links[name] = &Link{Name: name, Kind: rest[1]}
		return "", nil
	}
	if !exists {
		// ip tuntap del of a missing device succeeds.
		return "", nil
	}
	if l.Kind != rest[1] {
		return netFail("ioctl(TUNSETIFF): Invalid argument")
	}
	ipRemoveLink(o, name)
	return "", nil
}

func ipAddrAdd(o *OS, args, all []string) (string, error) {
	if len(args) != 3 || args[1] != "dev" {
		return netUnexpected("ip", all)
	}
	p, err := netip.ParsePrefix(args[0])
	if err != nil || !p.Addr().Is4() {
		return netFail("Error: any valid prefix is expected rather than %q.", args[0])
	}
	l, exists := o.Links[args[2]]
	if !exists {
		return netFail("Cannot find device %q", args[2])
	}
	for _, a := range l.Addrs {
		if q, err := netip.ParsePrefix(a); err == nil && q.Addr() == p.Addr() {
			return netFail("Error: ipv4: Address already assigned.")
		}
	}
	l.Addrs = append(l.Addrs, p.String())
	return "", nil
}

func ipAddrDel(o *OS, args, all []string) (string, error) {
	if len(args) != 3 || args[1] != "dev" {
		return netUnexpected("ip", all)
	}
	p, err := netip.ParsePrefix(args[0])
	if err != nil || !p.Addr().Is4() {
		return netFail("Error: any valid prefix is expected rather than %q.", args[0])
	}
	l, exists := o.Links[args[2]]
	if !exists {
		return netFail("Cannot find device %q", args[2])
	}
	for i, a := range l.Addrs {
		if q, err := netip.ParsePrefix(a); err == nil && q == p {
			l.Addrs = append(l.Addrs[:i:i], l.Addrs[i+1:]...)
			return "", nil
		}
	}
	return netFail("RTNETLINK answers: Cannot assign requested address")
}

// linkMAC is the address the fake shows for l.
func linkMAC(l *Link) string {
	if l.MAC != "" {
		return l.MAC
	}
	h := fnv.New32a()
	h.Write([]byte(l.Name))
	s := h.Sum32()
	return fmt.Sprintf("02:fa:%02x:%02x:%02x:%02x", byte(s>>24), byte(s>>16), byte(s>>8), byte(s))
}

// ipJSONLink is one entry of `ip -j [-d] link|addr show`.
type ipJSONLink struct {
	IfName    string        `json:"ifname"`
	Flags     []string      `json:"flags"`
	Master    string        `json:"master,omitempty"`
	OperState string        `json:"operstate"`
	Address   string        `json:"address,omitempty"`
	LinkType  string        `json:"link_type"`
	LinkInfo  *ipJSONInfo   `json:"linkinfo,omitempty"`
	AddrInfo  *[]ipJSONAddr `json:"addr_info,omitempty"`
}

type ipJSONInfo struct {
	InfoKind      string         `json:"info_kind"`
	InfoData      map[string]any `json:"info_data,omitempty"`
	InfoSlaveKind string         `json:"info_slave_kind,omitempty"`
	InfoSlaveData map[string]any `json:"info_slave_data,omitempty"`
}

type ipJSONAddr struct {
	Family    string `json:"family"`
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Scope     string `json:"scope"`
	Label     string `json:"label"`
}

func ipShow(o *OS, addrs, details bool, args, all []string) (string, error) {
	var names []string
	switch {
	case len(args) == 0:
		for n := range o.Links {
			if n != "lo" {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if _, ok := o.Links["lo"]; ok {
			names = append([]string{"lo"}, names...)
		}
	case len(args) == 2 && args[0] == "dev":
		if _, ok := o.Links[args[1]]; !ok {
			return netFail("Device %q does not exist.", args[1])
		}
		names = []string{args[1]}
	default:
		return netUnexpected("ip", all)
	}
	out := make([]ipJSONLink, 0, len(names))
	for _, n := range names {
		out = append(out, ipJSONOf(o, o.Links[n], addrs, details))
	}
	b, err := json.Marshal(out)
	if err != nil {
		return "", err
	}
	return string(b) + "\n", nil
}

func ipJSONOf(o *OS, l *Link, addrs, details bool) ipJSONLink {
	j := ipJSONLink{IfName: l.Name, Master: l.Master, OperState: "DOWN", LinkType: "ether", Address: linkMAC(l)}
	if l.Kind == "loopback" {
		j.Flags = []string{"LOOPBACK"}
		j.LinkType = "loopback"
	} else {
		j.Flags = []string{"BROADCAST", "MULTICAST"}
	}
	if l.Up {
		j.Flags = append(j.Flags, "UP")
		j.OperState = "UNKNOWN"
	}
	if details && l.Kind != "loopback" && l.Kind != "" {
		info := &ipJSONInfo{InfoKind: l.Kind}
		switch l.Kind {
		case "tap", "tun":
			info.InfoKind = "tun"
			info.InfoData = map[string]any{"type": l.Kind, "pi": false, "vnet_hdr": false, "multi_queue": false, "persist": true}
		case "bridge":
			info.InfoData = map[string]any{"stp_state": 0}
		}
		if m, ok := o.Links[l.Master]; ok && l.Master != "" {
			info.InfoSlaveKind = m.Kind
			if m.Kind == "bridge" {
				info.InfoSlaveData = map[string]any{"state": "forwarding", "hairpin": false, "learning": true, "flood": true, "isolated": l.Isolated}
			}
		}
		j.LinkInfo = info
	}
	if addrs {
		list := []ipJSONAddr{}
		for _, a := range l.Addrs {
			if p, err := netip.ParsePrefix(a); err == nil {
				list = append(list, ipJSONAddr{Family: "inet", Local: p.Addr().String(), PrefixLen: p.Bits(), Scope: "global", Label: l.Name})
			}
		}
		j.AddrInfo = &list
	}
	return j
}

// iptBuiltin lists each table's built-in chains in iptables' order.
var iptBuiltin = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// iptablesCommand implements: iptables [-w] [-t TABLE] -S [CHAIN] |
// -A CHAIN SPEC | -I CHAIN [POS] SPEC | -D CHAIN SPEC | -C CHAIN SPEC.
// Specs are stored and compared in the canonical form iptables -S
// prints, so -D and -C match a rule exactly as the real command does.
func iptablesCommand(o *OS, args []string, _ string) (string, error) {
	table, cmd, chain, pos := "filter", "", "", 0
	var spec []string
	i := 0
loop:
	for i < len(args) {
		switch a := args[i]; a {
		case "-w", "--wait":
			i++
			if i < len(args) && isDigits(args[i]) {
				i++
			}
		case "-t", "--table":
			if i+1 >= len(args) {
				return netUnexpected("iptables", args)
			}
			table = args[i+1]
			i += 2
		case "-S", "--list-rules":
			cmd = "-S"
			i++
			if i < len(args) && !strings.HasPrefix(args[i], "-") {
				chain = args[i]
				i++
			}
		case "-A", "-I", "-D", "-C", "--append", "--insert", "--delete", "--check":
			if i+1 >= len(args) {
				return netUnexpected("iptables", args)
			}
			cmd, chain = a[:2], args[i+1]
			if strings.HasPrefix(a, "--") {
				cmd = map[string]string{"--append": "-A", "--insert": "-I", "--delete": "-D", "--check": "-C"}[a]
			}
			i += 2
			if cmd == "-I" && i < len(args) && isDigits(args[i]) {
				pos, _ = strconv.Atoi(args[i])
				i++
			}
			spec = args[i:]
			break loop
		default:
			return netUnexpected("iptables", args)
		}
	}
	if cmd == "" {
		return netUnexpected("iptables", args)
	}
	if !iptTableExists(o, table) {
		return netFail("iptables v1.8.9 (nf_tables): table '%s' does not exist", table)
	}
	if chain != "" {
		if _, ok := o.Rules[table+"/"+chain]; !ok {
			return netFail("iptables: No chain/target/match by that name.")
		}
	}
	if cmd == "-S" {
		return iptList(o, table, chain), nil
	}
	canon, err := iptCanonical(spec)
	if err != nil {
		return netUnexpected("iptables", args)
	}
	key := table + "/" + chain
	rules := o.Rules[key]
	found := -1
	for k, r := range rules {
		if r == canon {
			found = k
			break
		}
	}
	switch cmd {
	case "-A":
		o.Rules[key] = append(rules, canon)
	case "-I":
		if pos == 0 {
			pos = 1
		}
		if pos > len(rules)+1 {
			return netFail("iptables: Index of insertion too big.")
		}
		o.Rules[key] = append(rules[:pos-1:pos-1], append([]string{canon}, rules[pos-1:]...)...)
	case "-D", "-C":
		if found < 0 {
			return netFail("iptables: Bad rule (does a matching rule exist in that chain?).")
		}
		if cmd == "-D" {
			o.Rules[key] = append(rules[:found:found], rules[found+1:]...)
		}
	}
	return "", nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func iptTableExists(o *OS, table string) bool {
	for k := range o.Rules {
		if strings.HasPrefix(k, table+"/") {
			return true
		}
	}
	return false
}

// iptChains returns a table's chains: the built-in ones in iptables'
// order, then user chains by name.
func iptChains(o *OS, table string) []string {
	builtin := map[string]bool{}
	var chains, user []string
	for _, c := range iptBuiltin[table] {
		if _, ok := o.Rules[table+"/"+c]; ok {
			chains = append(chains, c)
			builtin[c] = true
		}
	}
	for k := range o.Rules {
		t, c, _ := strings.Cut(k, "/")
		if t == table && !builtin[c] {
			user = append(user, c)
		}
	}
	sort.Strings(user)
	return append(chains, user...)
}

// iptList prints -S: policies and user chains first, then the rules.
func iptList(o *OS, table, chain string) string {
	chains := iptChains(o, table)
	if chain != "" {
		chains = []string{chain}
	}
	builtin := map[string]bool{}
	for _, c := range iptBuiltin[table] {
		builtin[c] = true
	}
	var b strings.Builder
	for _, c := range chains {
		if builtin[c] {
			fmt.Fprintf(&b, "-P %s ACCEPT\n", c)
		} else {
			fmt.Fprintf(&b, "-N %s\n", c)
		}
	}
	for _, c := range chains {
		for _, r := range o.Rules[table+"/"+c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	return b.String()
}

// iptCanonical returns a rule spec as iptables -S prints it: source,
// destination, in- and out-interface and protocol first, in that order,
// with addresses in CIDR form; then the matches, their options and the
// target in the order given; a comment in double quotes.
func iptCanonical(spec []string) (string, error) {
	front := map[string]string{}
	var rest []string
	neg := false
	for i := 0; i < len(spec); i++ {
		a := spec[i]
		if a == "!" {
			if neg {
				return "", errors.New("double negation")
			}
			neg = true
			continue
		}
		if i+1 >= len(spec) {
			return "", fmt.Errorf("option %s needs a value", a)
		}
		v := spec[i+1]
		i++
		bang := ""
		if neg {
			bang = "! "
			neg = false
		}
		switch a {
		case "-s", "--source", "-d", "--destination":
			if !strings.Contains(v, "/") {
				v += "/32"
			}
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				return "", fmt.Errorf("bad address %q", v)
			}
			short := "-s"
			if a == "-d" || a == "--destination" {
				short = "-d"
			}
			front[short] = bang + short + " " + p.Masked().String()
		case "-i", "--in-interface", "-o", "--out-interface", "-p", "--protocol":
			short := "-" + strings.TrimLeft(a, "-")[:1]
			front[short] = bang + short + " " + v
		case "-m", "--match", "-j", "--jump":
			if bang != "" {
				return "", fmt.Errorf("%s cannot be negated", a)
			}
			rest = append(rest, "-"+strings.TrimLeft(a, "-")[:1]+" "+v)
		case "--comment":
			if bang != "" {
				return "", errors.New("--comment cannot be negated")
			}
			rest = append(rest, "--comment "+iptQuote(v))
		case "--ctstate", "--dport", "--sport", "--to-destination", "--to-source":
			rest = append(rest, bang+a+" "+v)
		default:
			return "", fmt.Errorf("unknown option %s", a)
		}
	}
	if neg {
		return "", errors.New("dangling negation")
	}
	var words []string
	for _, k := range []string{"-s", "-d", "-i", "-o", "-p"} {
		if w, ok := front[k]; ok {
			words = append(words, w)
		}
	}
	return strings.Join(append(words, rest...), " "), nil
}

// iptQuote quotes a comment the way iptables -S does.
func iptQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// sysctlCommand implements: sysctl -n KEY, sysctl KEY, sysctl -w
// KEY=VALUE. Only keys present in State.Sysctl exist.
func sysctlCommand(o *OS, args []string, _ string) (string, error) {
	switch {
	case len(args) == 2 && args[0] == "-n":
		v, ok := o.Sysctl[args[1]]
		if !ok {
			return sysctlMissing(args[1])
		}
		return v + "\n", nil
	case len(args) == 1 && !strings.HasPrefix(args[0], "-"):
		v, ok := o.Sysctl[args[0]]
		if !ok {
			return sysctlMissing(args[0])
		}
		return args[0] + " = " + v + "\n", nil
	case len(args) == 2 && args[0] == "-w":
		k, v, ok := strings.Cut(args[1], "=")
		if !ok {
			return netUnexpected("sysctl", args)
		}
		if _, exists := o.Sysctl[k]; !exists {
			return sysctlMissing(k)
		}
		o.Sysctl[k] = v
		return k + " = " + v + "\n", nil
	}
	return netUnexpected("sysctl", args)
}

func sysctlMissing(key string) (string, error) {
	return netFail("sysctl: cannot stat /proc/sys/%s: No such file or directory", strings.ReplaceAll(key, ".", "/"))
}
