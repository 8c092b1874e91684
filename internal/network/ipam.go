// Package network owns the host side of VM networking: the bridge, the
// pool of taps, guest IPs and MACs, per-VM NAT rules, and the DNS server
// that resolves VM names.
package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"

	"banger/internal/model"
)

// Subnet returns the prefix the bridge serves.
func Subnet(bridgeIP, cidr string) (netip.Prefix, error) {
	addr, err := netip.ParseAddr(bridgeIP)
	if err != nil || !addr.Is4() {
		return netip.Prefix{}, fmt.Errorf("bridge ip %q: not an IPv4 address", bridgeIP)
	}
	bits, err := strconv.Atoi(cidr)
	if err != nil || bits < 1 || bits > 30 {
		return netip.Prefix{}, fmt.Errorf("cidr %q: not a prefix length", cidr)
	}
	return netip.PrefixFrom(addr, bits).Masked(), nil
}

// AllocateIP returns the lowest address of the bridge's subnet that is
// not the network, broadcast or bridge address and not in used.
func AllocateIP(bridgeIP, cidr string, used []string) (string, error) {
	prefix, err := Subnet(bridgeIP, cidr)
	if err != nil {
		return "", err
	}
	taken := map[netip.Addr]bool{}
	for _, u := range used {
		if a, err := netip.ParseAddr(u); err == nil {
			taken[a] = true
		}
	}
	bridge, _ := netip.ParseAddr(bridgeIP)
	taken[bridge] = true
	network := prefix.Addr()
	size := uint32(1) << (32 - prefix.Bits())
	base := binary.BigEndian.Uint32(network.AsSlice())
	for i := uint32(1); i < size-1; i++ {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+i)
		a := netip.AddrFrom4(b)
		if !taken[a] {
			return a.String(), nil
		}
	}
	return "", model.Errorf(model.ECONFLICT, "no free guest IP left in %s; remove a VM or widen cidr", prefix)
}

// MACForIP derives a stable, locally administered unicast MAC from a guest
// IPv4 address: 06:00 followed by the four address bytes.
func MACForIP(ip string) (string, error) { return macFromIP(0x06, "guest ip", ip) }

// macFromIP is first:00 followed by the four bytes of the IPv4 address
// ip; what names ip in the error.
func macFromIP(first byte, what, ip string) (string, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("%s %q: not an IPv4 address", what, ip)
	}
	b := a.As4()
	return fmt.Sprintf("%02x:00:%02x:%02x:%02x:%02x", first, b[0], b[1], b[2], b[3]), nil
}

// Netmask returns the dotted netmask of a prefix length.
func Netmask(cidr string) (string, error) {
	bits, err := strconv.Atoi(cidr)
	if err != nil || bits < 0 || bits > 32 {
		return "", fmt.Errorf("cidr %q: not a prefix length", cidr)
	}
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], m)
	return netip.AddrFrom4(b).String(), nil
}

// KernelIPArg returns the kernel's ip= argument for a guest: static
// address, gateway on the bridge, hostname, eth0, no autoconfiguration,
// and the DNS server (which the guest reads from /proc/net/pnp).
func KernelIPArg(guestIP, bridgeIP, cidr, hostname, dns string) (string, error) {
	mask, err := Netmask(cidr)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off:%s", guestIP, bridgeIP, mask, hostname, dns), nil
}
