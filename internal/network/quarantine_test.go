package network

import (
	"context"
	"strings"
	"testing"

	"banger/internal/hostexec/fakeos"
)

// TestQuarantineAdmitRelease: a quarantined tap is off the bridge, has
// the bridge's MAC and the daemon's address, and a table that drops all
// but the daemon's SSH replies; Admit makes it an isolated bridge port
// with nothing of the quarantine left; Release of a quarantined tap
// clears it too; a name that is not a banger tap is refused.
func TestQuarantineAdmitRelease(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 1)
	must(t, m.EnsureBridge(ctx))
	acquire(t, m, "bgtap0")
	must(t, m.Quarantine(ctx, "bgtap0"))
	st := o.String()
	brMAC := o.Links["br-fc"].MAC
	for _, w := range []string{
		"link bgtap0 tap up 169.254.169.1/32\n",
		`nft inet banger_q_bgtap0 rule input iifname "bgtap0" ip daddr 169.254.169.1 tcp sport { 22, 7722 } accept`,
		`nft inet banger_q_bgtap0 rule input iifname "bgtap0" drop`,
		`nft inet banger_q_bgtap0 rule forward iifname "bgtap0" drop`,
	} {
		if !strings.Contains(st, w) {
			t.Errorf("quarantined: no %q in\n%s", w, st)
		}
	}
	if got := o.Links["bgtap0"].MAC; got == "" || (brMAC != "" && got != brMAC) {
		t.Errorf("tap MAC %q; want the bridge's %q", got, brMAC)
	}
	if q, err := m.Quarantined(ctx, "bgtap0"); !q || err != nil {
		t.Errorf("Quarantined = %v, %v", q, err)
	}
	// Twice is harmless.
	must(t, m.Quarantine(ctx, "bgtap0"))
	// A sync (every reconcile) leaves a quarantined tap in use alone.
	must(t, m.Sync(ctx, []string{"bgtap0"}))
	if q, _ := m.Quarantined(ctx, "bgtap0"); !q || strings.Contains(o.String(), "link bgtap0 tap master=") {
		t.Errorf("a sync undid the quarantine of a tap in use:\n%s", o.String())
	}
	must(t, m.Admit(ctx, "bgtap0"))
	st = o.String()
	if !strings.Contains(st, "link bgtap0 tap master=br-fc up isolated\n") || strings.Contains(st, "banger_q_") || strings.Contains(st, "169.254.169.1") {
		t.Errorf("admitted:\n%s", st)
	}
	must(t, m.Quarantine(ctx, "bgtap0"))
	must(t, m.Release(ctx, "bgtap0"))
	st = o.String()
	if strings.Contains(st, "banger_q_") || strings.Contains(st, "169.254.169.1") {
		t.Errorf("released:\n%s", st)
	}
	// A quarantine a crash left on a tap that became idle is cleared when
	// the pool hands it out again.
	tap, err := m.Acquire(ctx)
	must(t, err)
	must(t, m.Quarantine(ctx, tap))
	m2 := newTestManager(t, o, 1)
	must(t, m2.Sync(ctx, nil))
	st = o.String()
	if strings.Contains(st, "banger_q_") || strings.Contains(st, "169.254.169.1") || !strings.Contains(st, "link "+tap+" tap master=br-fc up isolated\n") {
		t.Errorf("re-acquired after a crash:\n%s", st)
	}
	if err := m.Quarantine(ctx, "eth0"); err == nil {
		t.Error("quarantine of eth0 accepted")
	}
}

// TestAnnounce: an admitted VM's address and MAC go into the host's
// neighbour table on the bridge, stale (used at once, confirmed later);
// an address off the guest subnet, the bridge's own, or a MAC that is
// not unicast Ethernet is refused and nothing is run.
func TestAnnounce(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 1)
	must(t, m.EnsureBridge(ctx))
	must(t, m.Announce(ctx, "172.16.0.7", "06:00:AC:10:00:07"))
	if got := o.Neigh["br-fc 172.16.0.7"]; got != "06:00:ac:10:00:07 stale" {
		t.Errorf("neighbour entry %q", got)
	}
	for _, bad := range [][2]string{
		{"10.9.9.9", "06:00:ac:10:00:07"},
		{"172.16.0.1", "06:00:ac:10:00:07"},
		{"172.16.0.7 dev lo", "06:00:ac:10:00:07"},
		{"172.16.0.7", "07:00:ac:10:00:07"},
		{"172.16.0.7", "06:00:ac:10:00:07:00:00"},
		{"172.16.0.7", "nope"},
	} {
		if err := m.Announce(ctx, bad[0], bad[1]); err == nil {
			t.Errorf("Announce(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if len(o.Neigh) != 1 {
		t.Errorf("refused announcements ran: %v", o.Neigh)
	}
}
