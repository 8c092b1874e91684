package network

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// NAT identifies one VM's NAT rules: the VM, its guest address and the
// tap it was started on. All three are part of every rule's tag, so
// removing the rules needs the same three values that added them.
type NAT struct {
	// VMID is the VM's ID; rules carry model.ShortID(VMID), and ListNAT
	// returns that short form.
	VMID    string
	GuestIP string
	Tap     string
	// Partial is set by ListNAT when some of the VM's rules are missing
	// (EnableNAT adds them back). Enable and Disable ignore it.
	Partial bool
}

// tagPrefix starts the comment of every rule banger adds.
const tagPrefix = "banger:"

// rule is one iptables rule: where it lives and its spec in the
// canonical order that `iptables -S` prints, so a listed rule compares
// equal to the one banger built.
type rule struct {
	Table string
	Chain string
	Spec  []string
}

// natChains are the chains banger puts rules in.
var natChains = []struct{ Table, Chain string }{
	{"filter", "FORWARD"},
	{"nat", "POSTROUTING"},
}

// natTag is the comment on each of a VM's rules:
// banger:vm=<short id>:tap=<tap>:ip=<guest ip>.
func natTag(n NAT) string {
	return fmt.Sprintf("%svm=%s:tap=%s:ip=%s", tagPrefix, model.ShortID(n.VMID), n.Tap, n.GuestIP)
}

// parseTag is the inverse of natTag. It reports false for a comment that
// is not banger's or has no vm field.
func parseTag(s string) (NAT, bool) {
	rest, ok := strings.CutPrefix(s, tagPrefix)
	if !ok {
		return NAT{}, false
	}
	var n NAT
	for _, f := range strings.Split(rest, ":") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "vm":
			n.VMID = v
		case "tap":
			n.Tap = v
		case "ip":
			n.GuestIP = v
		}
	}
	return n, n.VMID != ""
}

// natRules returns a VM's three rules, in the order they are inserted at
// the top of their chains (so FORWARD ends up with the outbound rule
// first): masquerade what the guest sends out of any interface but the
// bridge; accept replies routed back to the guest; accept what the guest
// sends. The FORWARD rules match the bridge, not the tap: a tap is a
// bridge port, so routed packets come in and go out on the bridge.
func natRules(n NAT, bridge string) []rule {
	tag := natTag(n)
	guest := n.GuestIP + "/32"
	return []rule{
		{"nat", "POSTROUTING", []string{"-s", guest, "!", "-o", bridge, "-m", "comment", "--comment", tag, "-j", "MASQUERADE"}},
		{"filter", "FORWARD", []string{"-d", guest, "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-m", "comment", "--comment", tag, "-j", "ACCEPT"}},
		{"filter", "FORWARD", []string{"-s", guest, "-i", bridge, "-m", "comment", "--comment", tag, "-j", "ACCEPT"}},
	}
}

// Argv builders for iptables(8). -w waits for the xtables lock instead
// of failing when another program (Docker, a firewall) holds it.

func checkRuleArgv(r rule) []string {
	return append([]string{"-w", "-t", r.Table, "-C", r.Chain}, r.Spec...)
}

func insertRuleArgv(r rule) []string {
	return append([]string{"-w", "-t", r.Table, "-I", r.Chain, "1"}, r.Spec...)
}

func deleteRuleArgv(r rule) []string {
	return append([]string{"-w", "-t", r.Table, "-D", r.Chain}, r.Spec...)
}

func listRulesArgv(table, chain string) []string {
	return []string{"-w", "-t", table, "-S", chain}
}

// validate checks the values that go into the rules and their tag.
func (n NAT) validate() error {
	if n.VMID == "" || strings.ContainsFunc(n.VMID, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return model.Errorf(model.EINVALID, "nat: vm id %q: must be letters, digits, '-' or '_'", n.VMID)
	}
	if _, err := parseIPv4(n.GuestIP); err != nil {
		return fmt.Errorf("nat: guest ip: %w", err)
	}
	if err := validIfName(n.Tap); err != nil {
		return fmt.Errorf("nat: tap: %w", err)
	}
	return nil
}

// EnableNAT adds a VM's NAT rules and turns on IP forwarding. Rules that
// already exist are left alone, so enabling twice is harmless and
// enabling a partial set completes it. The missing rules go in with one
// iptables-restore; what exists is known from the Manager's copy of the
// tagged rules (natChange).
func (m *Manager) EnableNAT(ctx context.Context, n NAT) error {
	if err := n.validate(); err != nil {
		return err
	}
	m.natMu.Lock()
	defer m.natMu.Unlock()
	if !m.forwardOn {
		if err := m.EnsureIPForward(ctx); err != nil {
			return fmt.Errorf("enable nat for %s: %w", model.ShortID(n.VMID), err)
		}
		m.forwardOn = true
	}
	plan := func(have []taggedRule) []ruleOp {
		var ops []ruleOp
		for _, r := range natRules(n, m.cfg.BridgeName) {
			if !slices.ContainsFunc(have, func(tr taggedRule) bool { return tr.rule.equal(r) }) {
				ops = append(ops, ruleOp{Insert: true, Rule: r})
			}
		}
		return ops
	}
	if err := m.natChange(ctx, plan); err != nil {
		return fmt.Errorf("enable nat for %s: %w", model.ShortID(n.VMID), err)
	}
	return nil
}

// DisableNAT removes every rule tagged with the VM's tag (its short ID,
// tap and guest IP), whatever bridge it names, in one iptables-restore.
// Rules that are already gone are not an error.
func (m *Manager) DisableNAT(ctx context.Context, n NAT) error {
	if err := n.validate(); err != nil {
		return err
	}
	m.natMu.Lock()
	defer m.natMu.Unlock()
	tag := natTag(n)
	plan := func(have []taggedRule) []ruleOp {
		var ops []ruleOp
		for _, tr := range have {
			if tr.tag == tag {
				ops = append(ops, ruleOp{Rule: tr.rule})
			}
		}
		return ops
	}
	if err := m.natChange(ctx, plan); err != nil {
		return fmt.Errorf("disable nat for %s: %w", model.ShortID(n.VMID), err)
	}
	return nil
}

// natChange applies the rule changes plan makes from the tagged rules in
// one iptables-restore transaction, and records them in the Manager's
// copy. The copy spares a start the listing of two chains and a check
// per rule: banger's rules change only through this Manager (under
// natMu), and every listing (ListNAT, RemoveOrphanRules) refreshes it.
// A copy gone stale behind banger's back makes the transaction fail
// (a rule to delete is gone) or, for a rule deleted by hand, leaves it
// missing until the next reconcile lists the rules and restores it; a
// failure lists the rules and plans once more.
func (m *Manager) natChange(ctx context.Context, plan func([]taggedRule) []ruleOp) error {
	fresh := false
	if m.natRules == nil {
		rules, err := m.taggedRules(ctx)
		if err != nil {
			return err
		}
		m.natRules, fresh = rules, true
	}
	for {
		ops := plan(m.natRules)
		if len(ops) == 0 {
			return nil
		}
		err := m.iptablesRestore(ctx, restoreScript(ops))
		if err == nil {
			m.natRules = applyRuleOps(m.natRules, ops)
			return nil
		}
		m.natRules = nil
		if fresh {
			return err
		}
		rules, lerr := m.taggedRules(ctx)
		if lerr != nil {
			return errors.Join(err, lerr)
		}
		m.natRules, fresh = rules, true
	}
}

// ListNAT returns the VMs that have banger-tagged rules, one entry per
// tag, sorted by VM and tap. VMID is the short ID the rules carry. The
// listing refreshes the Manager's copy of the rules, and the next
// EnableNAT checks IP forwarding again.
func (m *Manager) ListNAT(ctx context.Context) ([]NAT, error) {
	m.natMu.Lock()
	defer m.natMu.Unlock()
	m.forwardOn = false
	m.natRules = nil
	rules, err := m.taggedRules(ctx)
	if err != nil {
		return nil, fmt.Errorf("list nat: %w", err)
	}
	m.natRules = rules
	return m.groupNAT(rules), nil
}

// RemoveOrphanRules deletes the tagged rules of every VM not in keep
// (full or short IDs) in one iptables-restore and returns what it
// removed. Rules whose comment starts with "banger:" but has no vm field
// are left alone.
func (m *Manager) RemoveOrphanRules(ctx context.Context, keep []string) ([]NAT, error) {
	kept := map[string]bool{}
	for _, id := range keep {
		kept[model.ShortID(id)] = true
	}
	m.natMu.Lock()
	defer m.natMu.Unlock()
	m.natRules = nil
	rules, err := m.taggedRules(ctx)
	if err != nil {
		return nil, fmt.Errorf("remove orphan rules: %w", err)
	}
	var orphans []taggedRule
	var ops []ruleOp
	for _, tr := range rules {
		if !kept[tr.nat.VMID] {
			orphans = append(orphans, tr)
			ops = append(ops, ruleOp{Rule: tr.rule})
		}
	}
	if len(ops) > 0 {
		if err := m.iptablesRestore(ctx, restoreScript(ops)); err != nil {
			return nil, fmt.Errorf("remove orphan rules: %w", err)
		}
	}
	m.natRules = applyRuleOps(rules, ops)
	removed := m.groupNAT(orphans)
	for _, n := range removed {
		m.log.Info("removed orphan nat rules", "vm", n.VMID, "tap", n.Tap, "guest_ip", n.GuestIP)
	}
	return removed, nil
}

// ruleOp is one change of an iptables-restore transaction: a rule
// inserted at the top of its chain, or deleted.
type ruleOp struct {
	Insert bool
	Rule   rule
}

// restoreScript is the input of `iptables-restore --noflush` for ops:
// one block per table, in the order the tables first appear, each rule
// in the order given (so inserts at the top end in reverse order, as
// with one `iptables -I CHAIN 1` each). Rule words never need quoting:
// validate and natTag keep them to letters, digits and ".:=/-!".
func restoreScript(ops []ruleOp) string {
	var tables []string
	byTable := map[string][]string{}
	for _, op := range ops {
		r := op.Rule
		if _, ok := byTable[r.Table]; !ok {
			tables = append(tables, r.Table)
		}
		line := append([]string{"-D", r.Chain}, r.Spec...)
		if op.Insert {
			line = append([]string{"-I", r.Chain, "1"}, r.Spec...)
		}
		byTable[r.Table] = append(byTable[r.Table], strings.Join(line, " "))
	}
	var b strings.Builder
	for _, t := range tables {
		b.WriteString("*" + t + "\n")
		for _, l := range byTable[t] {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// applyRuleOps returns the tagged rules after ops.
func applyRuleOps(rules []taggedRule, ops []ruleOp) []taggedRule {
	out := slices.Clone(rules)
	if out == nil {
		out = []taggedRule{}
	}
	for _, op := range ops {
		if op.Insert {
			tag := ruleComment(op.Rule.Spec)
			n, _ := parseTag(tag)
			out = append(out, taggedRule{rule: op.Rule, tag: tag, nat: n})
			continue
		}
		if i := slices.IndexFunc(out, func(tr taggedRule) bool { return tr.rule.equal(op.Rule) }); i >= 0 {
			out = slices.Delete(out, i, i+1)
		}
	}
	return out
}

// iptablesRestore applies a restore script as one transaction, keeping
// every rule it does not name (--noflush).
func (m *Manager) iptablesRestore(ctx context.Context, text string) error {
	sr, ok := m.run.(hostexec.StdinRunner)
	if !ok {
		return errors.New("iptables-restore: the runner cannot feed standard input")
	}
	if _, err := sr.RunStdin(ctx, strings.NewReader(text), "iptables-restore", "-w", "--noflush"); err != nil {
		return err
	}
	return nil
}

// EnsureIPForward turns on net.ipv4.ip_forward unless it already is.
func (m *Manager) EnsureIPForward(ctx context.Context) error {
	out, err := m.run.Run(ctx, "sysctl", "-n", "net.ipv4.ip_forward")
	if err != nil {
		return fmt.Errorf("read ip_forward: %w", err)
	}
	if strings.TrimSpace(string(out)) == "1" {
		return nil
	}
	if _, err := m.run.Run(ctx, "sysctl", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	m.log.Info("enabled net.ipv4.ip_forward")
	return nil
}

// taggedRule is a rule found on the host with a banger tag.
type taggedRule struct {
	rule
	tag string
	nat NAT
}

// taggedRules lists the rules in banger's chains whose comment is a
// banger tag.
func (m *Manager) taggedRules(ctx context.Context) ([]taggedRule, error) {
	found := []taggedRule{}
	for _, c := range natChains {
		out, err := m.iptables(ctx, listRulesArgv(c.Table, c.Chain)...)
		if err != nil {
			return nil, err
		}
		for _, r := range parseRules(c.Table, string(out)) {
			tag := ruleComment(r.Spec)
			if n, ok := parseTag(tag); ok {
				found = append(found, taggedRule{rule: r, tag: tag, nat: n})
			}
		}
	}
	return found, nil
}

// groupNAT folds tagged rules into one NAT per tag and marks the ones
// missing any of the rules banger would add.
func (m *Manager) groupNAT(rules []taggedRule) []NAT {
	byTag := map[string][]rule{}
	nats := map[string]NAT{}
	for _, tr := range rules {
		byTag[tr.tag] = append(byTag[tr.tag], tr.rule)
		nats[tr.tag] = tr.nat
	}
	var list []NAT
	for tag, n := range nats {
		for _, want := range natRules(n, m.cfg.BridgeName) {
			if !slices.ContainsFunc(byTag[tag], func(r rule) bool { return r.equal(want) }) {
				n.Partial = true
			}
		}
		list = append(list, n)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].VMID != list[j].VMID {
			return list[i].VMID < list[j].VMID
		}
		return list[i].Tap < list[j].Tap
	})
	return list
}

func (r rule) equal(o rule) bool {
	return r.Table == o.Table && r.Chain == o.Chain && slices.Equal(r.Spec, o.Spec)
}

// parseRules parses `iptables -S` output into rules: the "-A CHAIN"
// lines, with shell-style double quotes removed from their words.
func parseRules(table, out string) []rule {
	var rules []rule
	for _, line := range strings.Split(out, "\n") {
		words := splitRuleLine(line)
		if len(words) < 2 || words[0] != "-A" {
			continue
		}
		rules = append(rules, rule{Table: table, Chain: words[1], Spec: words[2:]})
	}
	return rules
}

// splitRuleLine splits a line of `iptables -S` into words. iptables
// quotes a comment with double quotes and escapes '"' and '\' inside them
// with a backslash.
func splitRuleLine(line string) []string {
	var words []string
	var cur strings.Builder
	inWord, quoted, escaped := false, false, false
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quoted && r == '\\':
			escaped = true
		case r == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (r == ' ' || r == '\t' || r == '\r'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// ruleComment returns the value of a spec's --comment, or "".
func ruleComment(spec []string) string {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "--comment" {
			return spec[i+1]
		}
	}
	return ""
}
