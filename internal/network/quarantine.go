package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"banger/internal/model"
)

// A forked VM is restored with its source's IP and MAC in its memory.
// Until the daemon has given it its own, it must answer nobody but the
// daemon: its tap is quarantined. A quarantined tap is not on the bridge
// (the guest cannot answer ARP or TCP for the source's address there);
// it carries the bridge's MAC (the restored guest's neighbour entry for
// its gateway names that MAC, so its frames reach the host) and the
// address QuarantineAddr, the daemon's end of the one path to the guest
// (guest.DialVia binds to the tap and that address); and an nftables
// table of its own drops everything the guest sends except the TCP
// replies from its SSH port, and from the port of the waiter a warm
// state leaves in it (WaiterPort), to QuarantineAddr: the restored copies of the
// source's connections never reach the host's sockets, and nothing it
// sends is forwarded or NATed. Admit undoes all of it and puts the tap on
// the bridge as an isolated port, once the guest is its own machine.

// QuarantineAddr is the host's address on a quarantined tap.
const QuarantineAddr = "169.254.169.1"

// WaiterPort is the port the waiter an image's warm state leaves in its
// VMs listens on (guest.WaiterCommand; the daemon's warm.go): the
// daemon reaches it on a quarantined tap. Nothing in banger's images
// uses the port, and the waiter is gone once a VM has its identity.
const WaiterPort = 7722

// quarantineTablePrefix names a quarantined tap's nftables table.
const quarantineTablePrefix = "banger_q_"

func quarantineTable(tap string) string { return quarantineTablePrefix + tap }

// quarantineScript is the nft script that shuts tap off but for the
// replies to the daemon's SSH and waiter connections. Only the tap's name (checked) appears in it.
func quarantineScript(tap string) string {
	var s script
	t := quarantineTable(tap)
	s.add("add table inet %s", t)
	s.add("add chain inet %s input { type filter hook input priority -20 ; policy accept ; }", t)
	s.add("add chain inet %s forward { type filter hook forward priority -20 ; policy accept ; }", t)
	s.add("flush chain inet %s input", t)
	s.add("flush chain inet %s forward", t)
	s.add("add rule inet %s input iifname %q ip daddr %s tcp sport { 22, %d } accept", t, tap, QuarantineAddr, WaiterPort)
	s.add("add rule inet %s input iifname %q drop", t, tap)
	s.add("add rule inet %s forward iifname %q drop", t, tap)
	return s.String()
}

// unquarantineScript removes tap's table; it is harmless when there is
// none.
func unquarantineScript(tap string) string {
	var s script
	s.add("add table inet %s", quarantineTable(tap))
	s.add("delete table inet %s", quarantineTable(tap))
	return s.String()
}

func nomasterArgv(dev string) []string { return []string{"link", "set", "dev", dev, "nomaster"} }

func setMACArgv(dev, mac string) []string {
	return []string{"link", "set", "dev", dev, "address", mac, "up"}
}

func delAddrArgv(dev, cidr string) []string { return []string{"addr", "del", cidr, "dev", dev} }

// Quarantine shuts a tap the caller holds off from everything but the
// daemon (see above). The caller launches the VMM on the tap only after
// it returns. The address comes before the table, and clearQuarantine
// removes them in the other order, so a tap with a table always has the
// address: whatever finds the address (attach, Release) clears both.
func (m *Manager) Quarantine(ctx context.Context, tap string) error {
	if !m.IsTapName(tap) {
		return model.Errorf(model.EINVALID, "quarantine tap %q: not a banger tap (%sN)", tap, m.cfg.TapPrefix)
	}
	links, err := m.listLinks(ctx)
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", tap, err)
	}
	br, ok := links[m.cfg.BridgeName]
	if !ok || br.MAC == "" {
		return fmt.Errorf("quarantine %s: bridge %s has no address", tap, m.cfg.BridgeName)
	}
	l, ok := links[tap]
	if !ok {
		return fmt.Errorf("quarantine %s: no such tap", tap)
	}
	if l.Master != "" {
		if _, err := m.ip(ctx, nomasterArgv(tap)...); err != nil {
			return fmt.Errorf("quarantine %s: detach: %w", tap, err)
		}
	}
	if _, err := m.ip(ctx, setMACArgv(tap, br.MAC)...); err != nil {
		return fmt.Errorf("quarantine %s: set address: %w", tap, err)
	}
	if !hasAddr(l.Addrs, QuarantineAddr+"/32") {
		if err := m.addAddr(ctx, tap, QuarantineAddr+"/32"); err != nil {
			return fmt.Errorf("quarantine %s: %w", tap, err)
		}
	}
	if err := m.nftScript(ctx, quarantineScript(tap)); err != nil {
		return fmt.Errorf("quarantine %s: %w", tap, err)
	}
	return nil
}

// Admit ends a tap's quarantine: the tap joins the bridge as an isolated
// port (where the VM's own anti-spoofing rules apply), then its address
// and its table go.
func (m *Manager) Admit(ctx context.Context, tap string) error {
	links, err := m.listLinks(ctx)
	if err != nil {
		return fmt.Errorf("admit %s: %w", tap, err)
	}
	l, ok := links[tap]
	if !ok {
		return fmt.Errorf("admit %s: no such tap", tap)
	}
	if err := m.clearQuarantine(ctx, l); err != nil {
		return fmt.Errorf("admit %s: %w", tap, err)
	}
	l.Addrs = nil
	if err := m.attach(ctx, l); err != nil {
		return fmt.Errorf("admit %s: %w", tap, err)
	}
	return nil
}

// Announce tells the host's neighbour table that ip is at mac on the
// bridge, for a VM just admitted from quarantine: the guest announced
// its address (arp_notify) while its tap was off the bridge, and an
// entry an earlier VM left at that address (failed, or still being
// resolved) would hold the host's first packets back for up to a second.
// The entry is left stale: used at once, confirmed by the kernel later.
// Both values are checked: ip in the bridge's subnet, mac a unicast
// Ethernet address.
func (m *Manager) Announce(ctx context.Context, ip, mac string) error {
	prefix, err := Subnet(m.cfg.BridgeIP, m.cfg.CIDR)
	if err != nil {
		return err
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() || !prefix.Contains(a) || a.String() == m.cfg.BridgeIP {
		return fmt.Errorf("announce %q: not a guest address in %s", ip, prefix)
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
		return fmt.Errorf("announce %s: %q is not a unicast Ethernet address", ip, mac)
	}
	if _, err := m.ip(ctx, "neigh", "replace", a.String(), "lladdr", hw.String(), "dev", m.cfg.BridgeName, "nud", "stale"); err != nil {
		return fmt.Errorf("announce %s at %s: %w", a, hw, err)
	}
	return nil
}

// clearQuarantine removes what Quarantine added to l; a tap never
// quarantined is left as it is.
func (m *Manager) clearQuarantine(ctx context.Context, l link) error {
	if err := m.nftScript(ctx, unquarantineScript(l.Name)); err != nil {
		return err
	}
	if slices.ContainsFunc(l.Addrs, isQuarantineAddr) {
		if _, err := m.ip(ctx, delAddrArgv(l.Name, QuarantineAddr+"/32")...); err != nil {
			return fmt.Errorf("remove the quarantine address: %w", err)
		}
	}
	return nil
}

func isQuarantineAddr(cidr string) bool {
	p, err := netip.ParsePrefix(cidr)
	return err == nil && p.Addr().String() == QuarantineAddr
}

// Quarantined reports whether tap carries the quarantine address, for
// tests.
func (m *Manager) Quarantined(ctx context.Context, tap string) (bool, error) {
	links, err := m.listLinks(ctx)
	if err != nil {
		return false, err
	}
	l, ok := links[tap]
	return ok && slices.ContainsFunc(l.Addrs, isQuarantineAddr), nil
}
