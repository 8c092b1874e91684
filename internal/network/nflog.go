package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file reads the kernel's reports of denied guest connections: the
// egress rules log each new denied flow to an NFLOG group, with the VM's
// short ID in the prefix, and the daemon reads that group over netlink
// (nfnetlink_log). The message builders and the parser are pure
// functions; the socket is a netlink socket on the Go runtime's poller so
// that closing it ends a blocked read.

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h), which
// x/sys/unix does not carry.
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd  = 1
	nfulaCfgMode = 2

	nfulnlCfgCmdBind = 1

	nfulnlCopyPacket = 2

	nfulaPayload = 9
	nfulaPrefix  = 10

	// nlaTypeMask strips the nested and byte-order flags of an
	// attribute type.
	nlaTypeMask = 0x3fff

	// nflogCopyRange is how much of each packet the kernel copies: the
	// IPv4 header with options and the ports.
	nflogCopyRange = 128
)

// DeniedEvent is one connection a VM's egress policy refused, as the
// kernel reported it.
type DeniedEvent struct {
	// VMID is the VM's short ID.
	VMID  string
	Dst   netip.Addr
	Proto string // "tcp", "udp", "icmp" or the protocol number
	// Port is the destination port for TCP and UDP, else 0.
	Port uint16
}

// Destination names where the guest tried to go: "10.99.0.2:80/tcp",
// "10.99.0.2/icmp".
func (e DeniedEvent) Destination() string {
	if e.Port != 0 {
		return fmt.Sprintf("%s:%d/%s", e.Dst, e.Port, e.Proto)
	}
	return e.Dst.String() + "/" + e.Proto
}

// nlAttr appends one netlink attribute, padded to 4 bytes.
func nlAttr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nflogConfigMsg builds an NFULNL_MSG_CONFIG request for a group: a
// command, and for bind the copy mode (whole packets, up
// to nflogCopyRange bytes).
func nflogConfigMsg(group uint16, cmd byte, seq uint32) []byte {
	var body []byte
	body = append(body, unix.AF_UNSPEC, unix.NFNETLINK_V0)
	body = binary.BigEndian.AppendUint16(body, group)
	body = nlAttr(body, nfulaCfgCmd, []byte{cmd})
	if cmd == nfulnlCfgCmdBind {
		mode := binary.BigEndian.AppendUint32(nil, nflogCopyRange)
		mode = append(mode, nfulnlCopyPacket, 0)
		body = nlAttr(body, nfulaCfgMode, mode)
	}
	var b []byte
	b = binary.NativeEndian.AppendUint32(b, uint32(unix.NLMSG_HDRLEN+len(body)))
	b = binary.NativeEndian.AppendUint16(b, unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgConfig)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	return append(b, body...)
}

// parseNflogPacket reads an NFULNL_MSG_PACKET body (after the netlink
// header): the prefix names the VM, the payload is the IPv4 packet. It
// reports false for anything that is not one of banger's denied-flow
// reports.
func parseNflogPacket(body []byte) (DeniedEvent, bool) {
	if len(body) < 4 {
		return DeniedEvent{}, false
	}
	var prefix string
	var payload []byte
	for rest := body[4:]; len(rest) >= 4; {
		l := int(binary.NativeEndian.Uint16(rest[0:2]))
		typ := binary.NativeEndian.Uint16(rest[2:4]) & nlaTypeMask
		if l < 4 || l > len(rest) {
			return DeniedEvent{}, false
		}
		data := rest[4:l]
		switch typ {
		case nfulaPrefix:
			prefix = string(bytes.TrimRight(data, "\x00"))
		case nfulaPayload:
			payload = data
		}
		next := (l + 3) &^ 3
		if next > len(rest) {
			break
		}
		rest = rest[next:]
	}
	short, ok := strings.CutPrefix(strings.TrimSpace(prefix), "banger:vm=")
	if !ok || validVMID(short) != nil {
		return DeniedEvent{}, false
	}
	ev, ok := parseIPv4Dest(payload)
	ev.VMID = short
	return ev, ok
}

// parseIPv4Dest reads an IPv4 packet's destination, protocol and (for
// TCP and UDP, in a first fragment) destination port.
func parseIPv4Dest(p []byte) (DeniedEvent, bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return DeniedEvent{}, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return DeniedEvent{}, false
	}
	ev := DeniedEvent{Dst: netip.AddrFrom4([4]byte(p[16:20]))}
	proto := p[9]
	fragOff := binary.BigEndian.Uint16(p[6:8]) & 0x1fff
	switch proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		ev.Proto = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[proto]
		if fragOff == 0 && len(p) >= ihl+4 {
			ev.Port = binary.BigEndian.Uint16(p[ihl+2 : ihl+4])
		}
	case unix.IPPROTO_ICMP:
		ev.Proto = "icmp"
	default:
		ev.Proto = strconv.Itoa(int(proto))
	}
	return ev, true
}

// DeniedListener reads banger's denied-flow reports from an NFLOG group.
type DeniedListener struct {
	f      *os.File
	group  uint16
	closed atomic.Bool
}

// ListenDenied binds an NFLOG group in the caller's network namespace
// (CAP_NET_ADMIN). Binding errors, such as another program holding the
// group, come back here.
func ListenDenied(group int) (*DeniedListener, error) {
	if group <= 0 || group > 65535 {
		return nil, fmt.Errorf("nflog group %d: must be 1 to 65535", group)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nflog bind: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := nflogRequest(fd, nflogConfigMsg(uint16(group), nfulnlCfgCmdBind, 1)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nflog bind group %d: %w", group, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	return &DeniedListener{f: os.NewFile(uintptr(fd), "nflog"), group: uint16(group)}, nil
}

// nflogRequest sends a request on a blocking socket and waits for its
// acknowledgement.
func nflogRequest(fd int, msg []byte) error {
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}

// Serve calls fn for every report until ctx is done or Close is called,
// then returns nil. It returns the error of a socket that failed.
// Reports lost because the socket's buffer overflowed are skipped.
func (l *DeniedListener) Serve(ctx context.Context, fn func(DeniedEvent)) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	rc, err := l.f.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			if l.closed.Load() {
				return nil
			}
			return fmt.Errorf("nflog read: %w", err)
		case rerr == unix.ENOBUFS || rerr == unix.EINTR:
			continue
		case rerr != nil:
			return fmt.Errorf("nflog read: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket {
				continue
			}
			if ev, ok := parseNflogPacket(m.Data); ok {
				fn(ev)
			}
		}
	}
}

// Close closes the socket, which unbinds the group. It is safe to call
// after ctx ended Serve.
func (l *DeniedListener) Close() error {
	l.closed.Store(true)
	if err := l.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
