package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"banger/internal/model"
)

// This file changes the elements of banger's base sets and map over
// netlink, in the daemon's process: what a VM's start and stop do to
// the filter when its egress is open (filter.go). An nft process costs
// about ten milliseconds before it does anything; one netlink batch
// costs a fraction of one. The writer is a seam: the daemon on a real
// host uses netlinkElems (UseNetlink); a Manager on any other runner, as
// in unit tests on the fake host, sends the same change as an nft script.

// elemWriter deletes and adds elements of banger's base sets and map as
// one transaction: all of it applies or none does.
type elemWriter interface {
	apply(ctx context.Context, dels, adds []setElem) error
}

// netlinkElems is the elemWriter that speaks nftables' netlink protocol.
type netlinkElems struct {
	// netns is a file descriptor of the network namespace to change, 0
	// for the process's own.
	netns int
}

func (w *netlinkElems) apply(ctx context.Context, dels, adds []setElem) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	opts := []nftables.ConnOption{}
	if w.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(w.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables netlink: %w", err)
	}
	// Deletions first, element by element in one batch, then additions:
	// the batch is one transaction, as an nft script is.
	for _, group := range []struct {
		elems []setElem
		add   bool
	}{{dels, false}, {adds, true}} {
		for _, e := range group.elems {
			set, el, err := nlElem(e)
			if err != nil {
				return err
			}
			if group.add {
				err = c.SetAddElements(set, []nftables.SetElement{el})
			} else {
				err = c.SetDeleteElements(set, []nftables.SetElement{{Key: el.Key}})
			}
			if err != nil {
				return fmt.Errorf("nftables netlink: %s %s: %w", e.Set, e.Key, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables netlink: %w", err)
	}
	return nil
}

// nlElem is an element as netlink sends it: the set it belongs to and
// the element with its key encoded as the kernel compares it.
func nlElem(e setElem) (*nftables.Set, nftables.SetElement, error) {
	fam := nftables.TableFamilyINet
	if e.Family == "bridge" {
		fam = nftables.TableFamilyBridge
	}
	set := &nftables.Set{Table: &nftables.Table{Name: filterTable, Family: fam}, Name: e.Set}
	key, err := elemKeyBytes(e)
	if err != nil {
		return nil, nftables.SetElement{}, err
	}
	el := nftables.SetElement{Key: key}
	if e.Owner != "" {
		el.Comment = vmChain(e.Owner)
	}
	switch {
	case e.Verdict == "accept":
		set.IsMap = true
		el.VerdictData = &expr.Verdict{Kind: expr.VerdictAccept}
	case strings.HasPrefix(e.Verdict, "jump "):
		set.IsMap = true
		el.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: strings.TrimPrefix(e.Verdict, "jump ")}
	case e.Verdict != "":
		return nil, el, fmt.Errorf("nftables netlink: element %s: unknown verdict %q", e.Key, e.Verdict)
	}
	return set, el, nil
}

// elemKeyBytes encodes an element's key as nftables stores it: an
// interface name as 16 bytes padded with zeros, a MAC address as its 6
// bytes, an IPv4 address as its 4, each field of a concatenation padded
// to a multiple of 4 bytes. The fields are those of the base sets' key
// types: taps (ifname), ident (ifname . ether_addr . ipv4_addr), guests
// (ipv4_addr).
func elemKeyBytes(e setElem) ([]byte, error) {
	var types []string
	switch e.Family + "/" + e.Set {
	case "bridge/" + tapsSet, "bridge/ports":
		types = []string{"ifname"}
	case "bridge/" + identSet:
		types = []string{"ifname", "ether_addr", "ipv4_addr"}
	case "inet/" + guestsMap:
		types = []string{"ipv4_addr"}
	default:
		return nil, fmt.Errorf("nftables netlink: no key type for set %s %s", e.Family, e.Set)
	}
	fields := strings.Split(e.Key, " . ")
	if len(fields) != len(types) {
		return nil, model.Errorf(model.EINVALID, "nftables netlink: key %q of set %s: want %d fields", e.Key, e.Set, len(types))
	}
	var key []byte
	for i, f := range fields {
		var b []byte
		switch types[i] {
		case "ifname":
			if err := validIfName(f); err != nil {
				return nil, err
			}
			b = make([]byte, 16)
			copy(b, f)
		case "ether_addr":
			mac, err := net.ParseMAC(f)
			if err != nil || len(mac) != 6 {
				return nil, model.Errorf(model.EINVALID, "nftables netlink: %q: not an Ethernet address", f)
			}
			b = append([]byte(mac), 0, 0)
		case "ipv4_addr":
			a, err := netip.ParseAddr(f)
			if err != nil || !a.Is4() {
				return nil, model.Errorf(model.EINVALID, "nftables netlink: %q: not an IPv4 address", f)
			}
			v := a.As4()
			b = v[:]
		}
		key = append(key, b...)
	}
	return key, nil
}
