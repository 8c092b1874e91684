package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
)

// This file reads one interface's state for the start path: handing out
// a pooled tap needs to know that tap only, and asking the kernel over
// netlink costs a fraction of a millisecond where an `ip` process costs
// ten. The reader is a seam: the daemon on a real host reads through
// netlink (UseNetlink); a Manager built on any other runner, as in unit
// tests on the fake host, reads through `ip -j -d addr show dev NAME`.

// linkReader returns one interface's state and whether it exists.
type linkReader func(ctx context.Context, name string) (link, bool, error)

// UseNetlink makes the Manager read single interfaces over netlink
// instead of running ip, and change filter elements over netlink instead
// of running nft (nftlink.go). Call it before the Manager is used.
func (m *Manager) UseNetlink() {
	m.readLink = netlinkLink
	m.elems = &netlinkElems{}
}

// readLinkIP reads one interface through the runner.
func (m *Manager) readLinkIP(ctx context.Context, name string) (link, bool, error) {
	out, err := m.ip(ctx, "-j", "-d", "addr", "show", "dev", name)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return link{}, false, nil
		}
		return link{}, false, fmt.Errorf("show link %s: %w", name, err)
	}
	ls, err := parseLinks(out)
	if err != nil {
		return link{}, false, err
	}
	if len(ls) != 1 || ls[0].Name != name {
		return link{}, false, fmt.Errorf("show link %s: ip listed %d links", name, len(ls))
	}
	return ls[0], true, nil
}

// netlinkLink reads one interface over netlink: what `ip -j -d addr show
// dev NAME` would report of it.
func netlinkLink(_ context.Context, name string) (link, bool, error) {
	nl, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return link{}, false, nil
		}
		return link{}, false, fmt.Errorf("netlink: link %s: %w", name, err)
	}
	a := nl.Attrs()
	l := link{Name: a.Name, Kind: nl.Type(), Up: a.Flags&net.FlagUp != 0, MAC: a.HardwareAddr.String()}
	if t, ok := nl.(*netlink.Tuntap); ok {
		l.Kind = "tun"
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			l.Kind = "tap"
		}
	}
	if a.MasterIndex > 0 {
		master, err := netlink.LinkByIndex(a.MasterIndex)
		if err != nil {
			return link{}, false, fmt.Errorf("netlink: master of %s: %w", name, err)
		}
		l.Master = master.Attrs().Name
		pi, err := netlink.LinkGetProtinfo(nl)
		if err != nil {
			return link{}, false, fmt.Errorf("netlink: bridge port flags of %s: %w", name, err)
		}
		l.Isolated = pi.Isolated
	}
	addrs, err := netlink.AddrList(nl, netlink.FAMILY_V4)
	if err != nil {
		return link{}, false, fmt.Errorf("netlink: addresses of %s: %w", name, err)
	}
	for _, ad := range addrs {
		l.Addrs = append(l.Addrs, ad.IPNet.String())
	}
	return l, true, nil
}
