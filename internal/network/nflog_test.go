package network

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"
)

func TestNflogConfigMsg(t *testing.T) {
	got := nflogConfigMsg(1701, nfulnlCfgCmdBind, 7)
	var want []byte
	le := binary.NativeEndian
	want = le.AppendUint32(want, 16+4+8+12) // header, nfgenmsg, cmd, mode
	want = le.AppendUint16(want, 4<<8|1)    // NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG
	want = le.AppendUint16(want, 1|4)       // NLM_F_REQUEST|NLM_F_ACK
	want = le.AppendUint32(want, 7)
	want = le.AppendUint32(want, 0)
	want = append(want, 0, 0, 0x06, 0xa5) // AF_UNSPEC, v0, group 1701 big-endian
	want = le.AppendUint16(want, 5)
	want = le.AppendUint16(want, 1) // NFULA_CFG_CMD
	want = append(want, 1, 0, 0, 0) // bind, padding
	want = le.AppendUint16(want, 10)
	want = le.AppendUint16(want, 2)         // NFULA_CFG_MODE
	want = append(want, 0, 0, 0, 128, 2, 0) // range 128 big-endian, copy packet
	want = append(want, 0, 0)
	if hex.EncodeToString(got) != hex.EncodeToString(want) {
		t.Errorf("config message\n got %x\nwant %x", got, want)
	}
}

// nflogPacket builds an NFULNL_MSG_PACKET body with the given attributes.
func nflogPacket(attrs ...[]byte) []byte {
	b := []byte{2, 0, 0x06, 0xa5} // AF_INET, v0, group
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func attr(typ uint16, data []byte) []byte { return nlAttr(nil, typ, data) }

// ipv4 builds an IPv4 header (no options) plus a transport header start.
func ipv4(proto byte, dst string, fragOff uint16, l4 ...byte) []byte {
	p := make([]byte, 20)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[6:8], fragOff)
	p[9] = proto
	copy(p[12:16], []byte{172, 16, 0, 2})
	a := netip.MustParseAddr(dst).As4()
	copy(p[16:20], a[:])
	return append(p, l4...)
}

func TestParseNflogPacket(t *testing.T) {
	prefix := attr(nfulaPrefix, []byte("banger:vm=0123456789ab \x00"))
	tcp := ipv4(6, "10.99.0.2", 0, 0xc3, 0x50, 0x00, 0x50) // sport 50000, dport 80
	tests := []struct {
		name string
		body []byte
		want DeniedEvent
		ok   bool
	}{
		{"tcp", nflogPacket(attr(1, make([]byte, 4)), prefix, attr(nfulaPayload, tcp)), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.2"), "tcp", 80}, true},
		{"udp", nflogPacket(prefix, attr(nfulaPayload, ipv4(17, "10.99.0.3", 0, 0, 53, 0, 53))), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.3"), "udp", 53}, true},
		{"icmp", nflogPacket(prefix, attr(nfulaPayload, ipv4(1, "10.99.0.4", 0, 8, 0))), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.4"), "icmp", 0}, true},
		{"later fragment has no port", nflogPacket(prefix, attr(nfulaPayload, ipv4(6, "10.99.0.2", 0x10, 0, 1, 0, 2))), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.2"), "tcp", 0}, true},
		{"other protocol", nflogPacket(prefix, attr(nfulaPayload, ipv4(47, "10.99.0.5", 0))), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.5"), "47", 0}, true},
		{"truncated tcp", nflogPacket(prefix, attr(nfulaPayload, ipv4(6, "10.99.0.2", 0, 1))), DeniedEvent{"0123456789ab", netip.MustParseAddr("10.99.0.2"), "tcp", 0}, true},

		{"no prefix", nflogPacket(attr(nfulaPayload, tcp)), DeniedEvent{}, false},
		{"foreign prefix", nflogPacket(attr(nfulaPrefix, []byte("IN=eth0 \x00")), attr(nfulaPayload, tcp)), DeniedEvent{}, false},
		{"hostile vm id", nflogPacket(attr(nfulaPrefix, []byte("banger:vm=a;b\x00")), attr(nfulaPayload, tcp)), DeniedEvent{}, false},
		{"no payload", nflogPacket(prefix), DeniedEvent{}, false},
		{"ipv6 payload", nflogPacket(prefix, attr(nfulaPayload, append([]byte{0x60}, make([]byte, 39)...))), DeniedEvent{}, false},
		{"bad header length", nflogPacket(prefix, attr(nfulaPayload, append([]byte{0x4f}, make([]byte, 19)...))), DeniedEvent{}, false},
		{"attribute longer than the message", append(nflogPacket(prefix), 0xff, 0x00, 9, 0), DeniedEvent{}, false},
		{"attribute shorter than its header", append(nflogPacket(prefix), 2, 0, 9, 0), DeniedEvent{}, false},
		{"empty", nil, DeniedEvent{}, false},
	}
	for _, tt := range tests {
		got, ok := parseNflogPacket(tt.body)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("%s: %+v, %v; want %+v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestDeniedEventDestination(t *testing.T) {
	a := netip.MustParseAddr("10.99.0.2")
	if got := (DeniedEvent{Dst: a, Proto: "tcp", Port: 443}).Destination(); got != "10.99.0.2:443/tcp" {
		t.Error(got)
	}
	if got := (DeniedEvent{Dst: a, Proto: "icmp"}).Destination(); got != "10.99.0.2/icmp" {
		t.Error(got)
	}
}
