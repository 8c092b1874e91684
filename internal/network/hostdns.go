package network

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Host name resolution: on a host with systemd-resolved, the host's own
// queries for <vm>.<domain> go to the daemon's DNS server when the bridge
// carries that server as its per-link DNS server and ~<domain> as a
// routing-only domain (not a default route, so nothing else is asked
// there). systemd-resolved keeps these settings as long as the link
// exists: they go with the bridge.

// LinkDNS is what systemd-resolved holds for a link.
type LinkDNS struct {
	Servers []string
	Domains []string
}

// Argv builders for resolvectl(1). Each returns the arguments after
// "resolvectl".

func resolvectlGetArgv(what, link string) []string { return []string{what, link} }

func resolvectlDNSArgv(link, server string) []string { return []string{"dns", link, server} }

func resolvectlDomainArgv(link, domain string) []string {
	return []string{"domain", link, "~" + domain}
}

func resolvectlDefaultRouteArgv(link string) []string {
	return []string{"default-route", link, "false"}
}

func resolvectlRevertArgv(link string) []string { return []string{"revert", link} }

// parseResolvectlLink reads resolvectl's answer for one link,
// "Link 5 (br-fc): 172.16.0.1 10.0.0.1", into its values.
func parseResolvectlLink(out []byte) ([]string, error) {
	line := strings.TrimSpace(string(out))
	if !strings.HasPrefix(line, "Link ") {
		return nil, fmt.Errorf("resolvectl answered %q, not \"Link N (NAME): ...\"", line)
	}
	_, vals, ok := strings.Cut(line, "):")
	if !ok {
		return nil, fmt.Errorf("resolvectl answered %q, not \"Link N (NAME): ...\"", line)
	}
	return strings.Fields(vals), nil
}

// BridgeDNS returns what systemd-resolved holds for the bridge. An error
// means it cannot be asked (no resolvectl, systemd-resolved not running,
// no bridge).
func (m *Manager) BridgeDNS(ctx context.Context) (LinkDNS, error) {
	var out LinkDNS
	for _, what := range []string{"dns", "domain"} {
		b, err := m.run.Run(ctx, "resolvectl", resolvectlGetArgv(what, m.cfg.BridgeName)...)
		if err != nil {
			return LinkDNS{}, fmt.Errorf("ask systemd-resolved about %s: %w", m.cfg.BridgeName, err)
		}
		vals, err := parseResolvectlLink(b)
		if err != nil {
			return LinkDNS{}, err
		}
		if what == "dns" {
			out.Servers = vals
		} else {
			out.Domains = vals
		}
	}
	return out, nil
}

// Routes reports whether d sends the domain's queries to server.
func (d LinkDNS) Routes(server, domain string) bool {
	return slices.Contains(d.Servers, server) && slices.Contains(d.Domains, "~"+domain)
}

// RouteDomain makes systemd-resolved send the host's queries for the DNS
// domain to server (the daemon's DNS on the bridge IP), through the
// bridge: server as the bridge's DNS server, ~domain as its routing
// domain, and the bridge no default route. It changes nothing when that
// is already so, and reports whether it changed something.
func (m *Manager) RouteDomain(ctx context.Context, server string) (bool, error) {
	link, domain := m.cfg.BridgeName, m.cfg.DNSDomain
	cur, err := m.BridgeDNS(ctx)
	if err != nil {
		return false, err
	}
	if cur.Routes(server, domain) && len(cur.Servers) == 1 && len(cur.Domains) == 1 {
		return false, nil
	}
	for _, argv := range [][]string{resolvectlDNSArgv(link, server), resolvectlDomainArgv(link, domain), resolvectlDefaultRouteArgv(link)} {
		if _, err := m.run.Run(ctx, "resolvectl", argv...); err != nil {
			return false, fmt.Errorf("route %s to %s through systemd-resolved: %w", domain, server, err)
		}
	}
	m.log.Info("host resolves the dns domain through the bridge", "domain", domain, "server", server, "link", link)
	return true, nil
}

// UnrouteDomain drops systemd-resolved's settings of the bridge.
func (m *Manager) UnrouteDomain(ctx context.Context) error {
	if _, err := m.run.Run(ctx, "resolvectl", resolvectlRevertArgv(m.cfg.BridgeName)...); err != nil {
		return fmt.Errorf("revert systemd-resolved's settings of %s: %w", m.cfg.BridgeName, err)
	}
	return nil
}
