package fakeos

import (
	"fmt"
	"sort"
	"strings"
)

// ResolvedLink is what systemd-resolved holds for one link: its DNS
// servers, its search and routing domains, and whether it is a default
// route for queries no domain routes.
type ResolvedLink struct {
	DNS          []string
	Domains      []string
	DefaultRoute string // "" (resolved decides), "yes" or "no"
}

func init() {
	register("resolvectl", resolvectlCommand)
}

// RunResolved makes systemd-resolved run on the fake host.
func (o *OS) RunResolved() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Resolved == nil {
		o.Resolved = map[string]*ResolvedLink{}
	}
}

// resolvectlCommand handles resolvectl dns|domain LINK [VALUE...],
// default-route LINK BOOL and revert LINK, as systemd-resolved answers
// them: without values, the link's current ones ("Link N (NAME): a b").
func resolvectlCommand(o *OS, args []string, _ string) (string, error) {
	if o.Resolved == nil {
		return "Failed to get global data: Unit dbus-org.freedesktop.resolve1.service not found.", fmt.Errorf("exit status 1")
	}
	if len(args) < 2 {
		return netUnexpected("resolvectl", args)
	}
	verb, name, vals := args[0], args[1], args[2:]
	if _, ok := o.Links[name]; !ok {
		return fmt.Sprintf("Failed to resolve interface %q: No such device", name), fmt.Errorf("exit status 1")
	}
	l := o.Resolved[name]
	if l == nil {
		l = &ResolvedLink{}
	}
	idx := 0
	for n := range o.Links {
		if n < name {
			idx++
		}
	}
	show := func(v []string) (string, error) {
		return fmt.Sprintf("Link %d (%s): %s\n", idx+1, name, strings.Join(v, " ")), nil
	}
	switch verb {
	case "dns":
		if len(vals) == 0 {
			return show(l.DNS)
		}
		l.DNS = append([]string(nil), vals...)
	case "domain":
		if len(vals) == 0 {
			return show(l.Domains)
		}
		l.Domains = append([]string(nil), vals...)
	case "default-route":
		switch {
		case len(vals) == 0:
			return show([]string{l.DefaultRoute})
		case len(vals) == 1 && (vals[0] == "false" || vals[0] == "no"):
			l.DefaultRoute = "no"
		case len(vals) == 1 && (vals[0] == "true" || vals[0] == "yes"):
			l.DefaultRoute = "yes"
		default:
			return netUnexpected("resolvectl", args)
		}
	case "revert":
		if len(vals) > 0 {
			return netUnexpected("resolvectl", args)
		}
		delete(o.Resolved, name)
		return "", nil
	default:
		return netUnexpected("resolvectl", args)
	}
	o.Resolved[name] = l
	return "", nil
}

func resolvedString(o *OS, b *strings.Builder) {
	names := make([]string, 0, len(o.Resolved))
	for n := range o.Resolved {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		l := o.Resolved[n]
		if len(l.DNS) == 0 && len(l.Domains) == 0 && l.DefaultRoute == "" {
			continue
		}
		fmt.Fprintf(b, "resolved %s dns=%s domain=%s default-route=%s\n", n, strings.Join(l.DNS, ","), strings.Join(l.Domains, ","), l.DefaultRoute)
	}
}
