package fakeos

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
)

// This file fakes nft(8) for the subset banger uses: scripts on standard
// input (`nft -f -`) applied as one transaction, and JSON listings
// (`nft -j list tables`, `nft -j list table FAMILY NAME`). Rules are kept
// as text, not evaluated; what the fake checks is what the kernel would
// refuse: references to missing chains, sets and counters, deleting what
// is in use or missing, adding a map key with other data, conflicting
// set definitions. Messages follow nftables 1.0.6.

func init() {
	register("nft", nftCommand)
}

// NftTable is one nftables table.
type NftTable struct {
	Family, Name string
	Chains       map[string]*NftChain
	// Sets holds sets and maps by name.
	Sets     map[string]*NftSet
	Counters map[string]*NftCounter
}

// NftChain is a chain: a base chain has a hook.
type NftChain struct {
	// Hook is "HOOK priority PRIO policy POLICY" for a base chain, or "".
	Hook  string
	Rules []string
}

// NftSet is a set or a verdict map.
type NftSet struct {
	// Spec is the definition between the braces, normalized: "type
	// ipv4_addr ; flags interval ;".
	Spec  string
	IsMap bool
	// Elems maps an element's key to its data: the verdict of a map
	// element ("jump vm-x", "accept"), "timeout 30s" for an element with
	// a timeout, "" otherwise. A concatenated key's fields are joined by
	// " . ", interface names unquoted.
	Elems map[string]string
	// Comments maps an element's key to its comment, when it has one.
	Comments map[string]string
}

// NftCounter is a named counter. Tests set Packets to stand in for
// traffic.
type NftCounter struct {
	Packets, Bytes int64
}

func (t *NftTable) clone() *NftTable {
	c := &NftTable{Family: t.Family, Name: t.Name, Chains: map[string]*NftChain{}, Sets: map[string]*NftSet{}, Counters: map[string]*NftCounter{}}
	for n, ch := range t.Chains {
		c.Chains[n] = &NftChain{Hook: ch.Hook, Rules: append([]string(nil), ch.Rules...)}
	}
	for n, s := range t.Sets {
		e, cm := map[string]string{}, map[string]string{}
		for k, v := range s.Elems {
			e[k] = v
		}
		for k, v := range s.Comments {
			cm[k] = v
		}
		c.Sets[n] = &NftSet{Spec: s.Spec, IsMap: s.IsMap, Elems: e, Comments: cm}
	}
	for n, ct := range t.Counters {
		cc := *ct
		c.Counters[n] = &cc
	}
	return c
}

// nftCommand implements nft [-j] list tables|table F N and nft -f -.
func nftCommand(o *OS, args []string, stdin string) (string, error) {
	switch {
	case len(args) == 2 && args[0] == "-f" && (args[1] == "-" || args[1] == "/dev/stdin"):
		return nftApply(o, stdin)
	case len(args) == 3 && args[0] == "-j" && args[1] == "list" && args[2] == "tables":
		return nftListJSON(o, "")
	case len(args) == 5 && args[0] == "-j" && args[1] == "list" && args[2] == "table":
		key := args[3] + " " + args[4]
		if o.Nft[key] == nil {
			return netFail("Error: No such file or directory\nlist table %s %s", args[3], args[4])
		}
		return nftListJSON(o, key)
	}
	return netUnexpected("nft", args)
}

// nftApply runs a script as one transaction: on any error the state is
// left as it was.
func nftApply(o *OS, script string) (string, error) {
	work := map[string]*NftTable{}
	for k, t := range o.Nft {
		work[k] = t.clone()
	}
	for i, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if msg, unknown := nftLine(work, line); msg != "" {
			if unknown {
				return netUnexpected("nft", []string{"-f", "-", "(line: " + line + ")"})
			}
			return netFail("/dev/stdin:%d:1-%d: Error: %s\n%s", i+1, len(line), msg, line)
		}
	}
	o.Nft = work
	return "", nil
}

// Messages of the kernel's answers.
const (
	nftENOENT = "Could not process rule: No such file or directory"
	nftEEXIST = "Could not process rule: File exists"
	nftEBUSY  = "Could not process rule: Device or resource busy"
)

// nftLine applies one command. It returns a message on failure, and
// whether the command is one the fake does not know.
func nftLine(tables map[string]*NftTable, line string) (string, bool) {
	if f := strings.Fields(line); len(f) >= 6 && f[0] == "add" && f[1] == "rule" {
		return nftAddRule(tables, f[2], f[3], f[4], afterWords(line, 5))
	}
	head, body, hasBody := strings.Cut(line, "{")
	if hasBody {
		var ok bool
		if body, ok = strings.CutSuffix(strings.TrimSpace(body), "}"); !ok {
			return "syntax error, unbalanced braces", true
		}
		body = strings.TrimSpace(body)
	}
	w := strings.Fields(head)
	if len(w) < 3 {
		return "syntax error", true
	}
	verb, obj := w[0], w[1]
	family := w[2]
	if family != "bridge" && family != "inet" && family != "ip" {
		return "syntax error, unknown family " + family, true
	}
	if obj == "table" {
		if len(w) != 4 || hasBody {
			return "syntax error", true
		}
		key := family + " " + w[3]
		switch verb {
		case "add":
			if tables[key] == nil {
				tables[key] = &NftTable{Family: family, Name: w[3], Chains: map[string]*NftChain{}, Sets: map[string]*NftSet{}, Counters: map[string]*NftCounter{}}
			}
			return "", false
		case "delete":
			if tables[key] == nil {
				return nftENOENT, false
			}
			delete(tables, key)
			return "", false
		}
		return "syntax error", true
	}
	if len(w) < 5 {
		return "syntax error", true
	}
	t := tables[family+" "+w[3]]
	if t == nil {
		return nftENOENT, false
	}
	name := w[4]
	switch verb + " " + obj {
	case "add chain":
		hook := ""
		if hasBody {
			hook = nftNormalizeSpec(body)
		}
		if len(w) != 5 {
			return "syntax error", true
		}
		if ch, ok := t.Chains[name]; ok {
			if hook != "" && ch.Hook != hook {
				return nftEEXIST, false
			}
			return "", false
		}
		t.Chains[name] = &NftChain{Hook: hook}
	case "flush chain", "delete chain":
		ch, ok := t.Chains[name]
		if len(w) != 5 || hasBody {
			return "syntax error", true
		}
		if !ok {
			return nftENOENT, false
		}
		if verb == "flush" {
			ch.Rules = nil
			return "", false
		}
		// The fake is as strict as older kernels: a chain must be empty
		// and unreferenced to be deleted.
		if len(ch.Rules) > 0 || nftChainUsed(t, name) {
			return nftEBUSY, false
		}
		delete(t.Chains, name)
	case "add set", "add map":
		if len(w) != 5 || !hasBody {
			return "syntax error", true
		}
		spec := nftNormalizeSpec(body)
		if s, ok := t.Sets[name]; ok {
			if s.Spec != spec || s.IsMap != (obj == "map") {
				return nftEEXIST, false
			}
			return "", false
		}
		t.Sets[name] = &NftSet{Spec: spec, IsMap: obj == "map", Elems: map[string]string{}, Comments: map[string]string{}}
	case "delete set", "delete map":
		if len(w) != 5 || hasBody {
			return "syntax error", true
		}
		if _, ok := t.Sets[name]; !ok {
			return nftENOENT, false
		}
		if nftRefUsed(t, "@"+name) {
			return nftEBUSY, false
		}
		delete(t.Sets, name)
	case "add element", "delete element":
		s, ok := t.Sets[name]
		if len(w) != 5 || !hasBody {
			return "syntax error", true
		}
		if !ok {
			return nftENOENT, false
		}
		return nftElements(t, s, verb == "add", body)
	case "add counter":
		if len(w) != 5 || hasBody {
			return "syntax error", true
		}
		if t.Counters[name] == nil {
			t.Counters[name] = &NftCounter{}
		}
	case "delete counter":
		if len(w) != 5 || hasBody {
			return "syntax error", true
		}
		if t.Counters[name] == nil {
			return nftENOENT, false
		}
		if nftRefUsed(t, fmt.Sprintf("counter name %q", name)) {
			return nftEBUSY, false
		}
		delete(t.Counters, name)
	default:
		return "syntax error", true
	}
	return "", false
}

// afterWords returns what follows the first n whitespace-separated words
// of line, trimmed, leaving the inside (quoted strings) as written.
func afterWords(line string, n int) string {
	rest := strings.TrimSpace(line)
	for range n {
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			return ""
		}
		rest = strings.TrimSpace(rest[i:])
	}
	return rest
}

// nftAddRule appends a rule, as text, to a chain.
func nftAddRule(tables map[string]*NftTable, family, table, chain, rule string) (string, bool) {
	t := tables[family+" "+table]
	if t == nil {
		return nftENOENT, false
	}
	ch, ok := t.Chains[chain]
	if !ok {
		return nftENOENT, false
	}
	if strings.Count(rule, "{") != strings.Count(rule, "}") || strings.Count(rule, `"`)%2 != 0 {
		return "syntax error, unbalanced braces or quotes", true
	}
	if msg := nftCheckRefs(t, rule); msg != "" {
		return msg, false
	}
	ch.Rules = append(ch.Rules, rule)
	return "", false
}

// nftNormalizeSpec collapses the whitespace of a definition.
func nftNormalizeSpec(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// nftCheckRefs checks that a rule's set, chain and counter references
// exist.
func nftCheckRefs(t *NftTable, rule string) string {
	w := strings.Fields(rule)
	for i, tok := range w {
		switch {
		case strings.HasPrefix(tok, "@"):
			if t.Sets[tok[1:]] == nil {
				return nftENOENT
			}
		case (tok == "jump" || tok == "goto") && i+1 < len(w):
			if t.Chains[w[i+1]] == nil {
				return nftENOENT
			}
		case tok == "name" && i > 0 && w[i-1] == "counter" && i+1 < len(w):
			if t.Counters[strings.Trim(w[i+1], `"`)] == nil {
				return nftENOENT
			}
		}
	}
	return ""
}

// nftRefUsed reports whether any rule mentions ref (as a whole word
// sequence).
func nftRefUsed(t *NftTable, ref string) bool {
	for _, ch := range t.Chains {
		for _, r := range ch.Rules {
			if strings.Contains(" "+r+" ", " "+ref+" ") {
				return true
			}
		}
	}
	return false
}

// nftChainUsed reports whether a rule or a map element jumps to a chain.
func nftChainUsed(t *NftTable, chain string) bool {
	if nftRefUsed(t, "jump "+chain) || nftRefUsed(t, "goto "+chain) {
		return true
	}
	for _, s := range t.Sets {
		for _, v := range s.Elems {
			if v == "jump "+chain || v == "goto "+chain {
				return true
			}
		}
	}
	return false
}

// nftElements adds or deletes the comma-separated elements of body.
func nftElements(t *NftTable, s *NftSet, add bool, body string) (string, bool) {
	for _, raw := range strings.Split(body, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return "syntax error", true
		}
		keyPart, data := raw, ""
		if s.IsMap {
			k, v, ok := strings.Cut(raw, ":")
			if add && !ok {
				return "syntax error, map element without data", true
			}
			keyPart, data = strings.TrimSpace(k), nftNormalizeSpec(v)
			if add {
				f := strings.Fields(data)
				switch {
				case len(f) == 1 && (f[0] == "accept" || f[0] == "drop"):
				case len(f) != 2 || (f[0] != "jump" && f[0] != "goto"):
					return "syntax error, not a verdict", true
				case t.Chains[f[1]] == nil:
					return nftENOENT, false
				}
			}
		} else if k, v, ok := strings.Cut(raw, " timeout "); ok {
			if !strings.Contains(s.Spec, "timeout") {
				return "Could not process rule: Operation not supported", false
			}
			keyPart, data = strings.TrimSpace(k), "timeout "+strings.TrimSpace(v)
		}
		comment := ""
		if k, c, ok := strings.Cut(keyPart, " comment "); ok {
			c = strings.TrimSpace(c)
			if len(c) < 2 || c[0] != '"' || c[len(c)-1] != '"' || !add {
				return "syntax error, bad comment", true
			}
			keyPart, comment = strings.TrimSpace(k), c[1:len(c)-1]
		}
		key, ok := nftCanonKey(s, keyPart)
		if !ok {
			return "syntax error, bad element " + keyPart, true
		}
		old, exists := s.Elems[key]
		switch {
		case !add && !exists:
			return nftENOENT, false
		case !add:
			delete(s.Elems, key)
			delete(s.Comments, key)
		case exists && s.IsMap && old != data:
			return nftEEXIST, false
		case exists:
			// Like older kernels, an existing element keeps its timeout.
		default:
			if strings.Contains(s.Spec, "flags interval") {
				if msg := nftIntervalConflict(s, key); msg != "" {
					return msg, false
				}
			}
			s.Elems[key] = data
			if comment != "" {
				s.Comments[key] = comment
			}
		}
	}
	return "", false
}

// nftCanonKey parses an element key: an interface name (quoted) for
// ifname sets, an address or network for ipv4_addr sets (a /32 shown as
// the address).
func nftCanonKey(s *NftSet, k string) (string, bool) {
	typ, _, _ := strings.Cut(strings.TrimPrefix(s.Spec, "type "), " ;")
	if strings.Contains(typ, " . ") {
		// A concatenation: each field as a set of its type would take it.
		types, fields := strings.Split(typ, " . "), strings.Split(k, " . ")
		if len(types) != len(fields) {
			return "", false
		}
		var out []string
		for i, f := range fields {
			c, ok := nftCanonKey(&NftSet{Spec: "type " + types[i]}, strings.TrimSpace(f))
			if !ok {
				return "", false
			}
			out = append(out, c)
		}
		return strings.Join(out, " . "), true
	}
	switch {
	case strings.HasPrefix(s.Spec, "type ether_addr"):
		mac, err := net.ParseMAC(k)
		if err != nil || len(mac) != 6 {
			return "", false
		}
		return mac.String(), true
	case strings.HasPrefix(s.Spec, "type ifname"):
		if len(k) < 2 || k[0] != '"' || k[len(k)-1] != '"' {
			return "", false
		}
		return k[1 : len(k)-1], true
	case strings.HasPrefix(s.Spec, "type ipv4_addr ") || s.Spec == "type ipv4_addr":
		if strings.Contains(k, "/") {
			p, err := netip.ParsePrefix(k)
			if err != nil || !p.Addr().Is4() || p.Masked() != p {
				return "", false
			}
			if p.Bits() == 32 {
				return p.Addr().String(), true
			}
			if !strings.Contains(s.Spec, "flags interval") {
				return "", false
			}
			return p.String(), true
		}
		a, err := netip.ParseAddr(k)
		if err != nil || !a.Is4() {
			return "", false
		}
		return a.String(), true
	}
	return "", false
}

// nftIntervalConflict refuses an element that overlaps one in the set,
// as nft does without auto-merge.
func nftIntervalConflict(s *NftSet, key string) string {
	p := nftPrefix(key)
	for k := range s.Elems {
		if q := nftPrefix(k); q.Overlaps(p) {
			return "conflicting intervals specified"
		}
	}
	return ""
}

func nftPrefix(k string) netip.Prefix {
	if p, err := netip.ParsePrefix(k); err == nil {
		return p
	}
	a, _ := netip.ParseAddr(k)
	return netip.PrefixFrom(a, 32)
}

// nftListJSON prints `nft -j list tables` (key "") or one table, in the
// shape nft 1.0.6 prints: sets, maps and counters before chains, rules
// last.
func nftListJSON(o *OS, key string) (string, error) {
	out := []map[string]any{{"metainfo": map[string]any{"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}}
	keys := make([]string, 0, len(o.Nft))
	for k := range o.Nft {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	handle := 0
	next := func() int { handle++; return handle }
	for _, k := range keys {
		t := o.Nft[k]
		out = append(out, map[string]any{"table": map[string]any{"family": t.Family, "name": t.Name, "handle": next()}})
		if key == "" || key != k {
			continue
		}
		for _, n := range sortedKeys(t.Counters) {
			c := t.Counters[n]
			out = append(out, map[string]any{"counter": map[string]any{"family": t.Family, "name": n, "table": t.Name, "handle": next(), "packets": c.Packets, "bytes": c.Bytes}})
		}
		for _, n := range sortedKeys(t.Sets) {
			s := t.Sets[n]
			obj := map[string]any{"family": t.Family, "name": n, "table": t.Name, "handle": next()}
			kind := "set"
			if s.IsMap {
				kind = "map"
				obj["map"] = "verdict"
			}
			var elems []any
			for _, ek := range sortedKeys(s.Elems) {
				elems = append(elems, nftElemJSON(s, ek))
			}
			if len(elems) > 0 {
				obj["elem"] = elems
			}
			out = append(out, map[string]any{kind: obj})
		}
		for _, n := range sortedKeys(t.Chains) {
			out = append(out, map[string]any{"chain": map[string]any{"family": t.Family, "table": t.Name, "name": n, "handle": next()}})
		}
		for _, n := range sortedKeys(t.Chains) {
			for range t.Chains[n].Rules {
				out = append(out, map[string]any{"rule": map[string]any{"family": t.Family, "table": t.Name, "chain": n, "handle": next(), "expr": []any{}}})
			}
		}
	}
	if key != "" && o.Nft[key] == nil {
		return netFail("Error: No such file or directory")
	}
	b, err := json.Marshal(map[string]any{"nftables": out})
	if err != nil {
		return "", err
	}
	return string(b) + "\n", nil
}

// nftElemJSON is one element as nft 1.0.6 lists it: its key (a string,
// {"concat": [...]} or {"prefix": {...}}), wrapped in {"elem": {"val":
// key, ...}} when it has a comment or a timeout, and for a map the pair
// [that, verdict].
func nftElemJSON(s *NftSet, key string) any {
	var val any = key
	if parts := strings.Split(key, " . "); len(parts) > 1 {
		val = map[string]any{"concat": parts}
	} else if p, err := netip.ParsePrefix(key); err == nil {
		val = map[string]any{"prefix": map[string]any{"addr": p.Addr().String(), "len": p.Bits()}}
	}
	data := s.Elems[key]
	wrapped := map[string]any{"val": val}
	if c := s.Comments[key]; c != "" {
		wrapped["comment"] = c
	}
	if t, ok := strings.CutPrefix(data, "timeout "); ok && !s.IsMap {
		secs := strings.TrimSuffix(t, "s")
		var n int
		fmt.Sscan(secs, &n)
		wrapped["timeout"], wrapped["expires"] = n, n
	}
	if len(wrapped) > 1 {
		val = map[string]any{"elem": wrapped}
	}
	if !s.IsMap {
		return val
	}
	f := strings.Fields(data)
	if len(f) == 1 {
		return []any{val, map[string]any{f[0]: nil}}
	}
	return []any{val, map[string]any{f[0]: map[string]any{"target": f[1]}}}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nftString prints the nft state for OS.String: per table, each chain
// with its rules in order, then sets and maps with their elements, then
// counters.
func nftString(o *OS, b *strings.Builder) {
	for _, k := range sortedKeys(o.Nft) {
		t := o.Nft[k]
		for _, n := range sortedKeys(t.Chains) {
			ch := t.Chains[n]
			if ch.Hook != "" {
				fmt.Fprintf(b, "nft %s chain %s { %s }\n", k, n, ch.Hook)
			} else {
				fmt.Fprintf(b, "nft %s chain %s\n", k, n)
			}
			for _, r := range ch.Rules {
				fmt.Fprintf(b, "nft %s rule %s %s\n", k, n, r)
			}
		}
		for _, n := range sortedKeys(t.Sets) {
			s := t.Sets[n]
			kind := "set"
			if s.IsMap {
				kind = "map"
			}
			var elems []string
			for _, ek := range sortedKeys(s.Elems) {
				e := ek
				if c := s.Comments[ek]; c != "" {
					e += fmt.Sprintf(" comment %q", c)
				}
				if v := s.Elems[ek]; v != "" {
					if s.IsMap {
						e += " : " + v
					} else {
						e += " " + v
					}
				}
				elems = append(elems, e)
			}
			fmt.Fprintf(b, "nft %s %s %s { %s }", k, kind, n, s.Spec)
			if len(elems) > 0 {
				fmt.Fprintf(b, " = %s", strings.Join(elems, ", "))
			}
			b.WriteString("\n")
		}
		for _, n := range sortedKeys(t.Counters) {
			fmt.Fprintf(b, "nft %s counter %s packets %d\n", k, n, t.Counters[n].Packets)
		}
	}
}

// NftNetlink applies an nft script as the kernel applies one netlink
// batch: as one transaction, with no process run (the runner records no
// call). It stands in for an in-process netlink client at a seam in unit
// tests, on the same tables the nft fake lists. A Fail entry
// "nft-netlink" makes the next batch fail with its message.
func (o *OS) NftNetlink(script string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if msg, ok := o.Fail["nft-netlink"]; ok {
		delete(o.Fail, "nft-netlink")
		return fmt.Errorf("netlink: %s", msg)
	}
	_, err := nftApply(o, script)
	return err
}
