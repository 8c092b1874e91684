package daemon

import (
	"context"
	"fmt"

	"banger/internal/model"
	"banger/internal/network"
)

// capability is a per-VM feature with a start hook (run while the VM
// starts, after its tap exists) and a cleanup hook (run when it stops, on
// every path). Cleanup must be idempotent: removing what is gone is not
// an error.
type capability interface {
	name() string
	start(ctx context.Context, vm model.VMRecord, h vmHandles) error
	cleanup(ctx context.Context, vm model.VMRecord, h vmHandles) error
}

// filterCapability is a VM's packet filter: its tap may send only from
// its MAC and IP, it reaches neither other guests nor the host (except
// the daemon's DNS), and its egress policy decides what beyond the host
// it may connect to. It runs first, so a guest is never up unfiltered.
type filterCapability struct {
	net    *network.Manager
	denied *deniedLog
}

func (filterCapability) name() string { return "filter" }

func (c filterCapability) start(ctx context.Context, vm model.VMRecord, h vmHandles) error {
	f, err := guestFilter(vm, tapFor(vm, h))
	if err != nil {
		return err
	}
	c.denied.forget(model.ShortID(vm.ID))
	return c.net.EnableFilter(ctx, f)
}

// cleanup removes the VM's filter objects, whatever tap or IP they name.
func (c filterCapability) cleanup(ctx context.Context, vm model.VMRecord, _ vmHandles) error {
	c.denied.forget(model.ShortID(vm.ID))
	return c.net.DisableFilter(ctx, vm.ID)
}

// guestFilter is the filter of a VM on a tap.
func guestFilter(vm model.VMRecord, tap string) (network.Filter, error) {
	if tap == "" {
		return network.Filter{}, fmt.Errorf("filter: vm %s has no tap", vm.Name)
	}
	if vm.Runtime.GuestMAC == "" {
		return network.Filter{}, fmt.Errorf("filter: vm %s has no MAC address; recreate it", vm.Name)
	}
	return network.Filter{VMID: vm.ID, Tap: tap, GuestIP: vm.Runtime.GuestIP, GuestMAC: vm.Runtime.GuestMAC, Egress: vm.Spec.Egress}, nil
}

// natCapability gives a VM outbound NAT: a MASQUERADE rule and two
// FORWARD rules keyed off its tap.
type natCapability struct {
	net *network.Manager
}

func (natCapability) name() string { return "nat" }

func (c natCapability) start(ctx context.Context, vm model.VMRecord, h vmHandles) error {
	if !vm.Spec.NATEnabled {
		return nil
	}
	tap := tapFor(vm, h)
	if tap == "" {
		return fmt.Errorf("nat: vm %s has no tap", vm.Name)
	}
	// EnableNAT turns IP forwarding on as well.
	return c.net.EnableNAT(ctx, network.NAT{VMID: vm.ID, GuestIP: vm.Runtime.GuestIP, Tap: tap})
}

// cleanup removes the VM's rules whether or not NAT is enabled now (it may
// have been turned off while rules remained). The tap comes from the
// handle cache, else from Runtime.TapDevice; only when neither has one is
// there nothing to remove, because no tap was ever allocated.
func (c natCapability) cleanup(ctx context.Context, vm model.VMRecord, h vmHandles) error {
	tap := tapFor(vm, h)
	if tap == "" {
		return nil
	}
	return c.net.DisableNAT(ctx, network.NAT{VMID: vm.ID, GuestIP: vm.Runtime.GuestIP, Tap: tap})
}

// dnsCapability publishes <vm>.<domain> on the daemon's DNS server and
// tells it the guest's egress policy, which its forwarding follows.
type dnsCapability struct {
	dns *network.DNSServer
}

func (dnsCapability) name() string { return "dns" }

func (c dnsCapability) start(_ context.Context, vm model.VMRecord, _ vmHandles) error {
	if c.dns == nil {
		return nil
	}
	return c.dns.SetVM(vm.Name, vm.Runtime.GuestIP, vm.ID, vm.Spec.Egress)
}

func (c dnsCapability) cleanup(_ context.Context, vm model.VMRecord, _ vmHandles) error {
	if c.dns != nil {
		c.dns.Remove(vm.Name)
	}
	return nil
}

// tapFor is the fallback cascade for a VM's tap: the handle cache first,
// then the durable Runtime.TapDevice.
func tapFor(vm model.VMRecord, h vmHandles) string {
	if h.Tap != "" {
		return h.Tap
	}
	return vm.Runtime.TapDevice
}
