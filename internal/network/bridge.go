package network

import (
	"context"
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
