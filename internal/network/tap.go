package network

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"banger/internal/model"
)

// Tap is a banger tap that exists on the host.
type Tap struct {
	Name string
	// Master is the bridge the tap is enslaved to, or "".
	Master string
	// Up says whether the tap is administratively up.
	Up bool
}

// tapIndex returns N for a name of the form TapPrefix+N (N in canonical
// decimal), and whether the name has that form.
func (m *Manager) tapIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, m.cfg.TapPrefix)
	if !ok || rest == "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// IsTapName reports whether name is shaped like one of banger's taps.
func (m *Manager) IsTapName(name string) bool {
	_, ok := m.tapIndex(name)
	return ok
}

// isOurTap reports whether a link is one of banger's taps: a tap device
// whose name has banger's shape.
func (m *Manager) isOurTap(l link) bool {
	return l.Kind == "tap" && m.IsTapName(l.Name)
}

// sortTaps sorts tap names by their number.
func (m *Manager) sortTaps(names []string) {
	sort.Slice(names, func(i, j int) bool {
		a, _ := m.tapIndex(names[i])
		b, _ := m.tapIndex(names[j])
		return a < b
	})
}

// ListTaps returns banger's taps present on the host, by number.
func (m *Manager) ListTaps(ctx context.Context) ([]Tap, error) {
	links, err := m.listLinks(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for name, l := range links {
		if m.isOurTap(l) {
			names = append(names, name)
		}
	}
	m.sortTaps(names)
	taps := make([]Tap, 0, len(names))
	for _, n := range names {
		l := links[n]
		taps = append(taps, Tap{Name: n, Master: l.Master, Up: l.Up})
	}
	return taps, nil
}

// Pool returns the idle taps and the taps handed out, by number.
func (m *Manager) Pool() (free, inUse []string) {
	m.poolMu.Lock()
	defer m.poolMu.Unlock()
	for t := range m.free {
		free = append(free, t)
	}
	for t := range m.inUse {
		inUse = append(inUse, t)
	}
	m.sortTaps(free)
	m.sortTaps(inUse)
	return free, inUse
}

// Acquire hands out an idle tap from the pool, enslaved to the bridge and
// up. When the pool is empty it creates a new tap beyond it. A pooled tap
// that has vanished from the host is dropped from the pool, never handed
// out.
func (m *Manager) Acquire(ctx context.Context) (string, error) {
	m.poolMu.Lock()
	defer m.poolMu.Unlock()
	// Only the tap handed out is read from the host, not every link: a
	// start costs no listing while the pool has taps.
	free := make([]string, 0, len(m.free))
	for t := range m.free {
		free = append(free, t)
	}
	m.sortTaps(free)
	for _, t := range free {
		l, ok, err := m.readLink(ctx, t)
		if err != nil {
			return "", fmt.Errorf("acquire tap: %w", err)
		}
		if !ok || !m.isOurTap(l) {
			m.log.Warn("pooled tap vanished from the host", "tap", t)
			delete(m.free, t)
			continue
		}
		if err := m.attach(ctx, l); err != nil {
			return "", fmt.Errorf("acquire tap: %w", err)
		}
		delete(m.free, t)
		m.inUse[t] = true
		return t, nil
	}
	links, err := m.listLinks(ctx)
	if err != nil {
		return "", fmt.Errorf("acquire tap: %w", err)
	}
	name, err := m.nextTapName(links)
	if err != nil {
		return "", fmt.Errorf("acquire tap: %w", err)
	}
	if err := m.createTap(ctx, name); err != nil {
		return "", fmt.Errorf("acquire tap: %w", err)
	}
	m.log.Info("pool empty: created tap beyond it", "tap", name)
	m.inUse[name] = true
	return name, nil
}

// Refill creates idle taps until the pool holds TapPoolSize of them, so
// the next Acquire is instant. The daemon calls it after an Acquire.
func (m *Manager) Refill(ctx context.Context) error {
	m.poolMu.Lock()
	defer m.poolMu.Unlock()
	if len(m.free) >= m.cfg.TapPoolSize {
		return nil
	}
	links, err := m.listLinks(ctx)
	if err != nil {
		return fmt.Errorf("refill tap pool: %w", err)
	}
	for len(m.free) < m.cfg.TapPoolSize {
		name, err := m.nextTapName(links)
		if err != nil {
			return fmt.Errorf("refill tap pool: %w", err)
		}
		if err := m.createTap(ctx, name); err != nil {
			return fmt.Errorf("refill tap pool: %w", err)
		}
		links[name] = link{Name: name}
		m.free[name] = true
	}
	return nil
}

// Release gives a tap back: it becomes idle in the pool, or is deleted if
// the pool already holds TapPoolSize idle taps. Releasing a tap that no
// longer exists, or that is already idle, is not an error; a name that is
// not shaped like banger's taps is refused with EINVALID, so that banger
// never deletes someone else's device.
func (m *Manager) Release(ctx context.Context, tap string) error {
	if !m.IsTapName(tap) {
		return model.Errorf(model.EINVALID, "release tap %q: not a banger tap (%sN)", tap, m.cfg.TapPrefix)
	}
	m.poolMu.Lock()
	defer m.poolMu.Unlock()
	delete(m.inUse, tap)
	if m.free[tap] {
		return nil
	}
	links, err := m.listLinks(ctx)
	if err != nil {
		return fmt.Errorf("release tap %s: %w", tap, err)
	}
	l, ok := links[tap]
	if !ok || !m.isOurTap(l) {
		return nil
	}
	// A tap quarantined for a forked VM loses its quarantine, whether it
	// goes back to the pool or away (the table names it, not the link).
	if slices.ContainsFunc(l.Addrs, isQuarantineAddr) {
		if err := m.clearQuarantine(ctx, l); err != nil {
			return fmt.Errorf("release tap %s: %w", tap, err)
		}
		l.Addrs = slices.DeleteFunc(l.Addrs, isQuarantineAddr)
	}
	if len(m.free) < m.cfg.TapPoolSize {
		if err := m.attach(ctx, l); err != nil {
			return fmt.Errorf("release tap %s: %w", tap, err)
		}
		m.free[tap] = true
		return nil
	}
	if err := m.delLink(ctx, tap); err != nil {
		return fmt.Errorf("release tap %s: %w", tap, err)
	}
	return nil
}

// Sync reconciles the pool with the host and with the daemon's view of
// which taps its VMs hold (inUse; names not shaped like banger's taps are
// ignored). Every banger tap on the host that is not in use is idle: the
// lowest-numbered TapPoolSize of them stay in the pool, enslaved and up;
// the rest are deleted. The pool is then refilled to TapPoolSize. Taps in
// inUse stay reserved even when they are missing from the host, so their
// names are not handed to another VM. Sync is how the pool is rebuilt
// after a daemon restart; it does what it can and returns every failure.
func (m *Manager) Sync(ctx context.Context, inUse []string) error {
	m.poolMu.Lock()
	defer m.poolMu.Unlock()
	links, err := m.listLinks(ctx)
	if err != nil {
		return fmt.Errorf("sync taps: %w", err)
	}
	used := map[string]bool{}
	for _, t := range inUse {
		if m.IsTapName(t) {
			used[t] = true
		}
	}
	var idle []string
	for name, l := range links {
		if m.isOurTap(l) && !used[name] {
			idle = append(idle, name)
		}
	}
	m.sortTaps(idle)
	keep := idle[:min(len(idle), m.cfg.TapPoolSize)]
	extra := idle[len(keep):]

	var errs []error
	m.inUse = used
	m.free = map[string]bool{}
	for _, t := range extra {
		if err := m.delLink(ctx, t); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(links, t)
		m.log.Info("deleted tap beyond the pool", "tap", t)
	}
	for _, t := range keep {
		if err := m.attach(ctx, links[t]); err != nil {
			errs = append(errs, err)
			continue
		}
		m.free[t] = true
	}
	for t := range used {
		if l, ok := links[t]; ok && m.isOurTap(l) {
			// A fork's child on a quarantined tap joins the bridge only
			// when the fork admits it (quarantine.go).
			if slices.ContainsFunc(l.Addrs, isQuarantineAddr) {
				continue
			}
			if err := m.attach(ctx, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for len(m.free) < m.cfg.TapPoolSize {
		name, err := m.nextTapName(links)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if err := m.createTap(ctx, name); err != nil {
			errs = append(errs, err)
			break
		}
		m.free[name] = true
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sync taps: %w", err)
	}
	return nil
}

// attach enslaves a tap to the bridge as an isolated port and brings it
// up, unless it already is.
func (m *Manager) attach(ctx context.Context, l link) error {
	// A quarantine a crash left (network/quarantine.go) goes first.
	if slices.ContainsFunc(l.Addrs, isQuarantineAddr) {
		if err := m.clearQuarantine(ctx, l); err != nil {
			return err
		}
	}
	if l.Master != m.cfg.BridgeName || !l.Up {
		if err := m.setMaster(ctx, l.Name, m.cfg.BridgeName); err != nil {
			return err
		}
		if l.Master != m.cfg.BridgeName {
			l.Isolated = false // a new port starts unisolated
		}
	}
	if l.Isolated {
		return nil
	}
	return m.isolate(ctx, l.Name)
}

// createTap adds a tap, enslaves it as an isolated port and brings it up;
// if that fails it deletes the tap again.
func (m *Manager) createTap(ctx context.Context, name string) error {
	if err := m.addTap(ctx, name); err != nil {
		return err
	}
	err := m.setMaster(ctx, name, m.cfg.BridgeName)
	if err == nil {
		err = m.isolate(ctx, name)
	}
	if err != nil {
		if derr := m.delLink(context.WithoutCancel(ctx), name); derr != nil {
			m.log.Warn("could not delete half-made tap", "tap", name, "err", derr)
		}
		return err
	}
	return nil
}

// nextTapName returns the lowest-numbered tap name that no link on the
// host has and that the pool does not know.
func (m *Manager) nextTapName(links map[string]link) (string, error) {
	for i := 0; ; i++ {
		name := m.cfg.TapPrefix + strconv.Itoa(i)
		if len(name) > maxIfNameLen {
			return "", model.Errorf(model.EUNAVAILABLE, "no tap name left under prefix %q", m.cfg.TapPrefix)
		}
		if _, taken := links[name]; taken || m.free[name] || m.inUse[name] {
			continue
		}
		return name, nil
	}
}
