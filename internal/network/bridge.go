package network

import (
	"context"
	"fmt"
	"strings"

	"banger/internal/model"
)

// EnsureBridge makes sure the bridge exists, is up and carries
// BridgeIP/CIDR.
//
// A missing bridge is created with its address and brought up. A bridge
// that already exists is left as it is, except that it is brought up if
// it is down: banger does not add addresses to, or remove them from, a
// bridge it did not just create, since someone else may own it. If an
// existing bridge lacks BridgeIP/CIDR, EnsureBridge returns an ECONFLICT
// error that says how to fix it, because guests would have no gateway
// and the DNS server nothing to bind. A link of that name that is not a
// bridge is an ECONFLICT too.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	name, want := m.cfg.BridgeName, m.cfg.bridgeCIDR()
	links, err := m.listLinks(ctx)
	if err != nil {
		return err
	}
	l, ok := links[name]
	if !ok {
		if err := m.addBridge(ctx, name); err != nil {
			return err
		}
		// A bridge's MAC follows the lowest of its ports' unless it was
		// set: pinned, it stays the gateway MAC that restored guests
		// (forks, warm creates, resumes) have in their neighbour tables,
		// and that a quarantined tap takes on.
		mac, err := bridgeMAC(m.cfg.BridgeIP)
		if err != nil {
			return err
		}
		if _, err := m.ip(ctx, setMACArgv(name, mac)...); err != nil {
			return fmt.Errorf("set bridge %s's MAC: %w", name, err)
		}
		if err := m.addAddr(ctx, name, want); err != nil {
			return err
		}
		if err := m.linkUp(ctx, name); err != nil {
			return err
		}
		m.log.Info("created bridge", "bridge", name, "addr", want)
		return nil
	}
	if l.Kind != "bridge" {
		return model.Errorf(model.ECONFLICT, "bridge %s: a %s link of that name exists; delete it or set bridge_name to another name", name, kindName(l.Kind))
	}
	if !l.Up {
		if err := m.linkUp(ctx, name); err != nil {
			return err
		}
		m.log.Info("brought bridge up", "bridge", name)
	}
	if hasAddr(l.Addrs, want) {
		return nil
	}
	have := "no IPv4 address"
	if len(l.Addrs) > 0 {
		have = strings.Join(l.Addrs, ", ")
	}
	return model.Errorf(model.ECONFLICT,
		"bridge %s exists with %s but not %s; banger leaves existing bridges alone: run `ip addr add %s dev %s`, delete the bridge so banger recreates it, or set bridge_ip/cidr to match",
		name, have, want, want, name)
}

// bridgeMAC is the MAC banger gives a bridge it creates: locally
// administered, 02:00 then the bridge IP's four bytes (guests' MACs start
// 06:00), so it is the same every time the bridge is made.
func bridgeMAC(bridgeIP string) (string, error) { return macFromIP(0x02, "bridge ip", bridgeIP) }

func hasAddr(addrs []string, want string) bool {
	for _, a := range addrs {
		if a == want {
			return true
		}
	}
	return false
}

func kindName(kind string) string {
	if kind == "" {
		return "non-bridge"
	}
	return kind
}
