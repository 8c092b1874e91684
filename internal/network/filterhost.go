package network

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// This file applies the filter changes of filter.go to the host, under
// filterMu so a list-then-change is not raced by another VM's change:
// changes of elements only through the Manager's elemWriter (netlink on
// a real host, nftlink.go), every other change as one nft script.

// nftScript runs an nft script as one transaction (`nft -f -`): all of it
// applies or none does.
func (m *Manager) nftScript(ctx context.Context, text string) error {
	if text == "" {
		return nil
	}
	sr, ok := m.run.(hostexec.StdinRunner)
	if !ok {
		return errors.New("nft: the runner cannot feed standard input")
	}
	if _, err := sr.RunStdin(ctx, strings.NewReader(text), "nft", "-f", "-"); err != nil {
		return err
	}
	return nil
}

// applyOp applies one change as one transaction: through the elemWriter
// when it changes elements only and the Manager has one, else as an nft
// script.
func (m *Manager) applyOp(ctx context.Context, op filterOp) error {
	if op.elementsOnly() && m.elems != nil {
		if len(op.dels) == 0 && len(op.adds) == 0 {
			return nil
		}
		return m.elems.apply(ctx, op.dels, op.adds)
	}
	return m.nftScript(ctx, op.script())
}

// listFilterState lists banger's tables, in whichever families they
// exist.
func (m *Manager) listFilterState(ctx context.Context) (nftState, error) {
	st := newNftState()
	out, err := m.run.Run(ctx, "nft", "-j", "list", "tables")
	if err != nil {
		return st, fmt.Errorf("list nft tables: %w", err)
	}
	if err := parseNftState(&st, out); err != nil {
		return st, err
	}
	for _, fam := range []string{"bridge", "inet"} {
		if !st.tables[fam] {
			continue
		}
		out, err := m.run.Run(ctx, "nft", "-j", "list", "table", fam, filterTable)
		if err != nil {
			return st, fmt.Errorf("list nft table %s %s: %w", fam, filterTable, err)
		}
		if err := parseNftState(&st, out); err != nil {
			return st, err
		}
	}
	return st, nil
}

// EnsureFilter makes banger's base filter: guests reach neither each
// other nor the host (except its DNS on the bridge IP), and banger taps
// without a VM pass nothing. Running it again rebuilds the base chains
// and keeps every VM's objects.
func (m *Manager) EnsureFilter(ctx context.Context) error {
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	// The base chains are rebuilt; the next change lists the tables.
	m.nft = nil
	if err := m.nftScript(ctx, baseScript(m.cfg)); err != nil {
		return fmt.Errorf("base filter: %w", err)
	}
	return nil
}

// EnableFilter installs, or replaces, a VM's filter: anti-spoofing on its
// tap and its egress policy. The change is atomic: the guest never runs
// without a filter between the old and the new one. The base filter is
// made first when its tables are missing. It lists nothing when the
// Manager's copy of the tables is known (filterChange).
func (m *Manager) EnableFilter(ctx context.Context, f Filter) error {
	f, err := f.validate()
	if err != nil {
		return err
	}
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	build := func(st nftState) filterOp {
		op := enableOp(st, f, m.cfg.EgressLogGroup)
		if !st.tables["bridge"] || !st.tables["inet"] {
			// The base first, in the same transaction; per-VM objects
			// the listing did not show cannot be in a missing table.
			op.make = append([]string{strings.TrimSuffix(baseScript(m.cfg), "\n")}, op.make...)
		}
		return op
	}
	update := func(st *nftState) {
		if !st.tables["bridge"] || !st.tables["inet"] {
			st.addBase()
		}
		st.enable(f, m.cfg.EgressLogGroup)
	}
	if err := m.filterChange(ctx, build, update); err != nil {
		return fmt.Errorf("enable filter for %s: %w", model.ShortID(f.VMID), err)
	}
	return nil
}

// filterChange applies the change build makes from the tables' state and
// then records the change in the Manager's copy with update. The copy
// spares a start the three nft listings: banger's tables change only
// through this Manager (under filterMu), and every full listing
// (FilterStatus, RemoveOrphanFilters) refreshes it. A copy gone stale
// behind banger's back (someone flushed the ruleset, deleted a chain)
// makes the change fail (the kernel refuses to delete what is gone, to
// add a key with other data, to jump to a missing chain); the tables are
// then listed and the change built and applied once more, so a stale
// copy costs a retry, never a wrong filter.
func (m *Manager) filterChange(ctx context.Context, build func(nftState) filterOp, update func(*nftState)) error {
	fresh := false
	if m.nft == nil {
		st, err := m.listFilterState(ctx)
		if err != nil {
			return err
		}
		m.nft, fresh = &st, true
	}
	for {
		err := m.applyOp(ctx, build(*m.nft))
		if err == nil {
			update(m.nft)
			return nil
		}
		m.nft = nil
		if fresh {
			return err
		}
		st, lerr := m.listFilterState(ctx)
		if lerr != nil {
			return errors.Join(err, lerr)
		}
		m.nft, fresh = &st, true
	}
}

// DisableFilter removes every object of a VM's filter (full or short ID).
// What is already gone is not an error.
func (m *Manager) DisableFilter(ctx context.Context, vmID string) error {
	if err := validVMID(vmID); err != nil {
		return fmt.Errorf("disable filter: %w", err)
	}
	short := model.ShortID(vmID)
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	build := func(st nftState) filterOp { return removeOp(st, short) }
	update := func(st *nftState) { st.remove(short, true) }
	if err := m.filterChange(ctx, build, update); err != nil {
		return fmt.Errorf("disable filter for %s: %w", short, err)
	}
	return nil
}

// ListFilters returns the VMs that have filter objects on the host, by
// short ID.
func (m *Manager) ListFilters(ctx context.Context) ([]FilterInfo, error) {
	infos, _, err := m.FilterStatus(ctx)
	return infos, err
}

// FilterStatus returns the VMs that have filter objects on the host, and
// whether the base filter is whole (EnsureFilter remakes it).
func (m *Manager) FilterStatus(ctx context.Context) (vms []FilterInfo, baseOK bool, err error) {
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	st, err := m.listFilterState(ctx)
	if err != nil {
		m.nft = nil
		return nil, false, fmt.Errorf("list filters: %w", err)
	}
	m.nft = &st
	return filterInfos(st), baseWhole(st), nil
}

// RemoveOrphanFilters removes the filter objects of every VM not in keep
// (full or short IDs) in one transaction and returns their short IDs.
func (m *Manager) RemoveOrphanFilters(ctx context.Context, keep []string) ([]string, error) {
	kept := map[string]bool{}
	for _, id := range keep {
		kept[model.ShortID(id)] = true
	}
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	m.nft = nil
	st, err := m.listFilterState(ctx)
	if err != nil {
		return nil, fmt.Errorf("remove orphan filters: %w", err)
	}
	var s strings.Builder
	var removed []string
	for _, fi := range filterInfos(st) {
		if kept[fi.VMID] {
			continue
		}
		s.WriteString(removeScript(st, fi.VMID))
		removed = append(removed, fi.VMID)
	}
	if err := m.nftScript(ctx, s.String()); err != nil {
		return nil, fmt.Errorf("remove orphan filters: %w", err)
	}
	for _, short := range removed {
		st.remove(short, true)
	}
	m.nft = &st
	for _, short := range removed {
		m.log.Info("removed orphan filter", "vm", short)
	}
	return removed, nil
}

// AllowResolved lets a VM reach addresses the daemon's DNS answered for a
// name its policy allows, each for its TTL (10 s to a day). It fails when
// the VM has no filter.
func (m *Manager) AllowResolved(ctx context.Context, vmID string, addrs []ResolvedAddr) error {
	if err := validVMID(vmID); err != nil {
		return fmt.Errorf("allow resolved: %w", err)
	}
	m.filterMu.Lock()
	defer m.filterMu.Unlock()
	if err := m.nftScript(ctx, allowResolvedScript(model.ShortID(vmID), addrs)); err != nil {
		return fmt.Errorf("allow resolved addresses for %s: %w", model.ShortID(vmID), err)
	}
	return nil
}

// DeniedCount returns how many connections a VM's policy refused since
// its filter was made; 0 when it has none.
func (m *Manager) DeniedCount(ctx context.Context, vmID string) (int64, error) {
	if err := validVMID(vmID); err != nil {
		return 0, fmt.Errorf("denied count: %w", err)
	}
	fis, err := m.ListFilters(ctx)
	if err != nil {
		return 0, err
	}
	for _, fi := range fis {
		if fi.VMID == model.ShortID(vmID) {
			return fi.Denied, nil
		}
	}
	return 0, nil
}
