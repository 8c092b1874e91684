package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"

	"banger/internal/model"
	"banger/internal/network"
)

// This file wires the guests' network containment into the daemon: the
// DNS server's guest side, live egress changes, the report of denied
// connections, and the nameserver guests are told to use.

// maxLoggedDestinations bounds how many denied destinations are logged
// per VM run; a guest scanning the world does not flood the log.
const maxLoggedDestinations = 256

// deniedLog remembers, per VM (short ID), the destinations whose denial
// was logged during its current run, so each is logged once.
type deniedLog struct {
	mu   sync.Mutex
	seen map[string]map[string]bool
}

func newDeniedLog() *deniedLog { return &deniedLog{seen: map[string]map[string]bool{}} }

// note records a denied destination. first says it was not seen before
// in this run; full says this is the first one over the limit.
func (l *deniedLog) note(short, dst string) (first, full bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.seen[short]
	if m == nil {
		m = map[string]bool{}
		l.seen[short] = m
	}
	if m[dst] {
		return false, false
	}
	switch {
	case len(m) < maxLoggedDestinations:
		m[dst] = true
		return true, false
	case len(m) == maxLoggedDestinations:
		m[dst] = true // one past the limit: reported once, then silence
		return false, true
	}
	return false, false
}

// forget starts a new run for a VM.
func (l *deniedLog) forget(short string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, short)
}

// listenDenied reads the kernel's reports of denied connections until
// ctx ends, in a goroutine the daemon owns, and logs each destination
// once per VM run. Without the NFLOG group (egress_log_group = 0, or
// binding failed) denials are still counted, only not logged.
func (d *Daemon) listenDenied(ctx context.Context) {
	if d.cfg.EgressLogGroup <= 0 {
		return
	}
	l, err := network.ListenDenied(d.cfg.EgressLogGroup)
	if err != nil {
		d.logger.Warn("denied guest connections will be counted but not logged", "nflog_group", d.cfg.EgressLogGroup, "err", err)
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer l.Close()
		if err := l.Serve(ctx, d.onDenied); err != nil {
			d.logger.Warn("stopped reading denied guest connections", "err", err)
		}
	}()
}

// onDenied logs a denied connection the first time its VM tries that
// destination.
func (d *Daemon) onDenied(ev network.DeniedEvent) {
	first, full := d.denied.note(ev.VMID, ev.Destination())
	if !first && !full {
		return
	}
	name := ev.VMID
	if vms, err := d.store.ListVMs(context.Background()); err == nil {
		for _, vm := range vms {
			if model.ShortID(vm.ID) == ev.VMID {
				name = vm.Name
			}
		}
	}
	if full {
		d.logger.Warn("egress denied to more destinations than are logged; further ones are only counted", "vm", name, "id", ev.VMID, "logged", maxLoggedDestinations)
		return
	}
	d.logger.Warn("egress denied", "vm", name, "id", ev.VMID, "dst", ev.Destination())
}

// forwardConfig is the DNS server's guest side: the guest subnet, the
// upstreams, and the filter that learns the addresses of allowed names.
func (d *Daemon) forwardConfig() network.ForwardConfig {
	subnet, _ := network.Subnet(d.cfg.BridgeIP, d.cfg.CIDR)
	gw, _ := netip.ParseAddr(d.cfg.BridgeIP)
	ups := d.cfg.UpstreamDNS
	if len(ups) == 0 && d.cfg.DefaultDNS != "" {
		ups = []string{d.cfg.DefaultDNS}
	}
	return network.ForwardConfig{Guests: subnet, Gateway: gw, Upstreams: ups, Allow: d.net.AllowResolved}
}

// guestNameserver is the nameserver a guest's ip= names: the daemon's
// DNS on the bridge IP when it listens there (the only DNS the filter
// lets guests reach on the host), else the first upstream.
func (d *Daemon) guestNameserver() string {
	if d.dns != nil && dnsOnBridge(d.cfg) {
		return d.cfg.BridgeIP
	}
	return d.cfg.DefaultDNS
}

// dnsOnBridge reports whether the DNS server listens on the bridge IP's
// port 53.
func dnsOnBridge(cfg model.DaemonConfig) bool {
	if cfg.DNSListen == "" {
		return true
	}
	host, port, err := net.SplitHostPort(cfg.DNSListen)
	if err != nil || port != "53" {
		return false
	}
	return host == cfg.BridgeIP || host == "" || host == "0.0.0.0"
}

// applyEgressLive puts a running VM's new egress policy in force: its
// filter is rebuilt in one transaction (connections the new policy does
// not allow stop) and the DNS server forwards for it accordingly.
func (d *Daemon) applyEgressLive(ctx context.Context, vm model.VMRecord, next model.EgressPolicy) error {
	vm.Spec.Egress = next
	f, err := guestFilter(vm, tapFor(vm, d.currentHandles(ctx, vm)))
	if err != nil {
		return err
	}
	if err := d.net.EnableFilter(ctx, f); err != nil {
		return err
	}
	if d.dns != nil {
		if err := d.dns.SetVM(vm.Name, vm.Runtime.GuestIP, vm.ID, next); err != nil {
			return err
		}
	}
	d.logger.Info("egress changed", "vm", vm.Name, "egress", next.String())
	return nil
}

// filterPlan is what reconcile does to the VMs' filters.
type filterPlan struct {
	// Keep are the IDs whose filters stay; every other VM's goes.
	Keep []string
	// Restore are the live VMs whose filter is missing or partial.
	Restore []string
}

// planFilters decides, from the observed rows, whose filters stay and
// which are rebuilt. It is pure. Busy rows keep theirs untouched; live
// adopted VMs keep theirs and get them back when missing; every other
// VM's filter is an orphan.
func planFilters(rows []vmObservation) filterPlan {
	var p filterPlan
	for _, r := range rows {
		switch {
		case r.Busy:
			p.Keep = append(p.Keep, r.VM.ID)
		case r.PID > 0 && r.VM.State == model.VMStateRunning:
			p.Keep = append(p.Keep, r.VM.ID)
			if !r.FilterFull {
				p.Restore = append(p.Restore, r.VM.ID)
			}
		}
	}
	return p
}

// applyFilterPlan remakes the base filter (someone may have flushed the
// host's ruleset), rebuilds the filters of live VMs that lost theirs and
// removes every filter no kept VM owns.
func (d *Daemon) applyFilterPlan(ctx context.Context, p filterPlan, rows []vmObservation) error {
	byID := map[string]vmObservation{}
	for _, r := range rows {
		byID[r.VM.ID] = r
	}
	var errs []error
	if d.netReady() {
		if err := d.net.EnsureFilter(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range p.Restore {
		r := byID[id]
		f, err := guestFilter(r.VM, r.Handles.Tap)
		if err == nil {
			err = d.net.EnableFilter(ctx, f)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.logger.Info("reconcile: restored the packet filter", "vm", r.VM.Name)
	}
	// A VM created since the rows were read may be starting now, its
	// filter already made: it is no orphan.
	keep := p.Keep
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, vm := range vms {
		if _, observed := byID[vm.ID]; !observed {
			keep = append(keep, vm.ID)
		}
	}
	if removed, err := d.net.RemoveOrphanFilters(ctx, keep); err != nil {
		errs = append(errs, err)
	} else if len(removed) > 0 {
		d.logger.Warn("removed orphan packet filters", "vms", len(removed))
	}
	return errors.Join(errs...)
}
