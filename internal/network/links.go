package network

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
)

// link is one interface as `ip -j -d addr show` reports it.
type link struct {
	Name   string
	Kind   string // "bridge", "tap", "tun", "veth", ... ("" for plain devices)
	Master string
	Up     bool     // administratively up
	Addrs  []string // IPv4 addresses in CIDR notation
	// Isolated says the link is a bridge port that may not talk to other
	// isolated ports (bridge_slave isolated on).
	Isolated bool
	// MAC is the link's Ethernet address.
	MAC string
}

// ipLinkJSON is the part of iproute2's JSON output that banger reads.
type ipLinkJSON struct {
	IfName   string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Address  string   `json:"address"`
	LinkInfo *struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			Type string `json:"type"`
		} `json:"info_data"`
		InfoSlaveData struct {
			Isolated bool `json:"isolated"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

// parseLinks parses the output of `ip -j -d addr show`. A tun device in
// tap mode has kind "tap".
func parseLinks(out []byte) ([]link, error) {
	var raw []ipLinkJSON
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("parse ip -j output: %w", err)
	}
	links := make([]link, 0, len(raw))
	for _, r := range raw {
		l := link{Name: r.IfName, Master: r.Master, Up: slices.Contains(r.Flags, "UP"), MAC: r.Address}
		if r.LinkInfo != nil {
			l.Kind = r.LinkInfo.InfoKind
			if l.Kind == "tun" && r.LinkInfo.InfoData.Type == "tap" {
				l.Kind = "tap"
			}
			l.Isolated = r.LinkInfo.InfoSlaveData.Isolated
		}
		for _, a := range r.AddrInfo {
			if a.Family == "inet" {
				l.Addrs = append(l.Addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			}
		}
		links = append(links, l)
	}
	return links, nil
}

// Argv builders for ip(8). Each returns the arguments after "ip".

func listLinksArgv() []string { return []string{"-j", "-d", "addr", "show"} }

func addBridgeArgv(name string) []string { return []string{"link", "add", name, "type", "bridge"} }

func addAddrArgv(dev, cidr string) []string { return []string{"addr", "add", cidr, "dev", dev} }

func linkUpArgv(dev string) []string { return []string{"link", "set", "dev", dev, "up"} }

func addTapArgv(name string) []string {
	return []string{"tuntap", "add", "dev", name, "mode", "tap"}
}

func setMasterArgv(dev, master string) []string {
	return []string{"link", "set", "dev", dev, "master", master, "up"}
}

func delLinkArgv(name string) []string { return []string{"link", "del", "dev", name} }

// isolateArgv makes a bridge port isolated: the bridge forwards nothing
// between two isolated ports, so guests cannot reach each other at layer
// 2. It cannot share one `ip link set` with the master change.
func isolateArgv(dev string) []string {
	return []string{"link", "set", "dev", dev, "type", "bridge_slave", "isolated", "on"}
}

// listLinks returns every interface of the host with its addresses.
func (m *Manager) listLinks(ctx context.Context) (map[string]link, error) {
	out, err := m.ip(ctx, listLinksArgv()...)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	links, err := parseLinks(out)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]link, len(links))
	for _, l := range links {
		byName[l.Name] = l
	}
	return byName, nil
}

func (m *Manager) addBridge(ctx context.Context, name string) error {
	if _, err := m.ip(ctx, addBridgeArgv(name)...); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	return nil
}

func (m *Manager) addAddr(ctx context.Context, dev, cidr string) error {
	if _, err := m.ip(ctx, addAddrArgv(dev, cidr)...); err != nil {
		return fmt.Errorf("add address %s to %s: %w", cidr, dev, err)
	}
	return nil
}

func (m *Manager) linkUp(ctx context.Context, dev string) error {
	if _, err := m.ip(ctx, linkUpArgv(dev)...); err != nil {
		return fmt.Errorf("bring %s up: %w", dev, err)
	}
	return nil
}

func (m *Manager) addTap(ctx context.Context, name string) error {
	if _, err := m.ip(ctx, addTapArgv(name)...); err != nil {
		return fmt.Errorf("add tap %s: %w", name, err)
	}
	return nil
}

func (m *Manager) setMaster(ctx context.Context, dev, master string) error {
	if _, err := m.ip(ctx, setMasterArgv(dev, master)...); err != nil {
		return fmt.Errorf("attach %s to %s: %w", dev, master, err)
	}
	return nil
}

func (m *Manager) isolate(ctx context.Context, dev string) error {
	if _, err := m.ip(ctx, isolateArgv(dev)...); err != nil {
		return fmt.Errorf("isolate %s: %w", dev, err)
	}
	return nil
}

func (m *Manager) delLink(ctx context.Context, name string) error {
	if _, err := m.ip(ctx, delLinkArgv(name)...); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
