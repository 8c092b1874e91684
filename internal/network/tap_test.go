package network

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

func testConfig(pool int) Config {
	return Config{BridgeName: "br-fc", BridgeIP: "172.16.0.1", CIDR: "24", TapPoolSize: pool, DNSDomain: "banger"}
}

func newTestManager(t *testing.T, o *fakeos.OS, pool int) *Manager {
	t.Helper()
	m, err := New(testConfig(pool), o.Runner(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if u := o.Runner().Unexpected(); len(u) > 0 {
			t.Errorf("commands the fake does not know: %q", u)
		}
	})
	return m
}

func wantState(t *testing.T, o *fakeos.OS, want string) {
	t.Helper()
	if got := o.String(); got != want {
		t.Errorf("host state:\n%s\nwant:\n%s", got, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func acquire(t *testing.T, m *Manager, want string) {
	t.Helper()
	got, err := m.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Acquire = %s, want %s", got, want)
	}
}

func wantPool(t *testing.T, m *Manager, free, inUse string) {
	t.Helper()
	f, u := m.Pool()
	if got := strings.Join(f, ","); got != free {
		t.Errorf("free taps %q, want %q", got, free)
	}
	if got := strings.Join(u, ","); got != inUse {
		t.Errorf("taps in use %q, want %q", got, inUse)
	}
}

func TestEnsureBridgeCreates(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 2)
	must(t, m.EnsureBridge(ctx))
	wantState(t, o, "link br-fc bridge up 172.16.0.1/24\nsysctl net.ipv4.ip_forward=0\n")
	// Its MAC is pinned (else it follows the lowest port's, and restored
	// guests' gateway entries go stale).
	if got := o.Links["br-fc"].MAC; got != "02:00:ac:10:00:01" {
		t.Errorf("bridge MAC %q, want 02:00:ac:10:00:01", got)
	}
	// A second call finds everything in place and only looks.
	o.Runner().Reset()
	must(t, m.EnsureBridge(ctx))
	if got := o.Runner().Calls(); !slices.Equal(got, []string{"ip -j -d addr show"}) {
		t.Errorf("second EnsureBridge ran %q", got)
	}
}

func TestEnsureBridgeExisting(t *testing.T) {
	tests := []struct {
		name     string
		link     fakeos.Link
		wantCode string
		want     string
	}{
		{"down with the address is brought up", fakeos.Link{Kind: "bridge", Addrs: []string{"172.16.0.1/24"}}, "",
			"link br-fc bridge up 172.16.0.1/24\n"},
		{"without the address is reported, not changed", fakeos.Link{Kind: "bridge", Up: true, Addrs: []string{"10.1.1.1/16"}}, model.ECONFLICT,
			"link br-fc bridge up 10.1.1.1/16\n"},
		{"with the address under another prefix is reported", fakeos.Link{Kind: "bridge", Up: true, Addrs: []string{"172.16.0.1/16"}}, model.ECONFLICT,
			"link br-fc bridge up 172.16.0.1/16\n"},
		{"a non-bridge of that name is refused", fakeos.Link{Kind: "tap"}, model.ECONFLICT,
			"link br-fc tap\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := fakeos.New()
			l := tt.link
			l.Name = "br-fc"
			o.Links["br-fc"] = &l
			m := newTestManager(t, o, 2)
			err := m.EnsureBridge(context.Background())
			if got := model.ErrorCode(err); got != tt.wantCode {
				t.Errorf("EnsureBridge: %v (code %q), want code %q", err, got, tt.wantCode)
			}
			wantState(t, o, tt.want+"sysctl net.ipv4.ip_forward=0\n")
		})
	}
}

func TestTapPool(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 2)
	must(t, m.EnsureBridge(ctx))
	must(t, m.Sync(ctx, nil))
	wantState(t, o, `link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`)
	wantPool(t, m, "bgtap0,bgtap1", "")

	acquire(t, m, "bgtap0")
	acquire(t, m, "bgtap1")
	// The pool is empty: the next tap is made beyond it.
	acquire(t, m, "bgtap2")
	wantPool(t, m, "", "bgtap0,bgtap1,bgtap2")
	wantState(t, o, `link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`)

	must(t, m.Release(ctx, "bgtap1"))
	must(t, m.Release(ctx, "bgtap2"))
	wantPool(t, m, "bgtap1,bgtap2", "bgtap0")
	// The pool is full now: a released tap is deleted.
	must(t, m.Release(ctx, "bgtap0"))
	wantPool(t, m, "bgtap1,bgtap2", "")
	wantState(t, o, `link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`)
	// Releasing twice, or releasing a tap that is gone, is not an error.
	must(t, m.Release(ctx, "bgtap1"))
	must(t, m.Release(ctx, "bgtap0"))
	must(t, m.Release(ctx, "bgtap9"))
	// A name that is not banger's is refused and nothing is deleted.
	o.Links["eth0"] = &fakeos.Link{Name: "eth0", Kind: "veth", Up: true}
	for _, name := range []string{"eth0", "bgtap", "bgtap01", "xbgtap1", ""} {
		if err := m.Release(ctx, name); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("Release(%q) = %v, want EINVALID", name, err)
		}
	}
	wantPool(t, m, "bgtap1,bgtap2", "")
	wantState(t, o, `link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link br-fc bridge up 172.16.0.1/24
link eth0 veth up
sysctl net.ipv4.ip_forward=0
`)
	taps, err := m.ListTaps(ctx)
	must(t, err)
	if got := fmt.Sprint(taps); got != "[{bgtap1 br-fc true} {bgtap2 br-fc true}]" {
		t.Errorf("ListTaps = %s", got)
	}
}

// TestTapSyncAfterRestart starts a fresh Manager on a host left behind by
// an earlier daemon: taps in use by running VMs, taps whose VM is gone,
// a tap someone detached, a foreign link with a banger-like name.
func TestTapSyncAfterRestart(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	o.Links["br-fc"] = &fakeos.Link{Name: "br-fc", Kind: "bridge", Up: true, Addrs: []string{"172.16.0.1/24"}}
	for i := range 6 {
		name := fmt.Sprintf("bgtap%d", i)
		o.Links[name] = &fakeos.Link{Name: name, Kind: "tap", Master: "br-fc", Up: true}
	}
	o.Links["bgtap2"].Master, o.Links["bgtap2"].Up = "", false
	o.Links["bgtap7"] = &fakeos.Link{Name: "bgtap7", Kind: "bridge"}
	o.Links["bgtap8"] = &fakeos.Link{Name: "bgtap8", Kind: "tun"}

	m := newTestManager(t, o, 2)
	must(t, m.EnsureBridge(ctx))
	// Running VMs hold bgtap1 and bgtap4; bgtap9 is recorded for a VM
	// whose tap has vanished. bgtap0, 2, 3 and 5 have no owner: the two
	// lowest go back to the pool, the others are deleted.
	must(t, m.Sync(ctx, []string{"bgtap1", "bgtap4", "bgtap9", "eth0"}))
	wantPool(t, m, "bgtap0,bgtap2", "bgtap1,bgtap4,bgtap9")
	wantState(t, o, `link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link bgtap2 tap master=br-fc up isolated
link bgtap4 tap master=br-fc up isolated
link bgtap7 bridge
link bgtap8 tun
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`)
	taps, err := m.ListTaps(ctx)
	must(t, err)
	var names []string
	for _, tp := range taps {
		names = append(names, tp.Name)
	}
	if got := strings.Join(names, ","); got != "bgtap0,bgtap1,bgtap2,bgtap4" {
		t.Errorf("ListTaps = %s", got)
	}

	acquire(t, m, "bgtap0")
	acquire(t, m, "bgtap2")
	// New taps skip names in use (bgtap4), reserved (bgtap9) or taken by
	// other links (bgtap7, bgtap8).
	acquire(t, m, "bgtap3")
	acquire(t, m, "bgtap5")
	acquire(t, m, "bgtap6")
	acquire(t, m, "bgtap10")

	// A VM stopped: Sync gives its tap back; the pool is refilled.
	must(t, m.Sync(ctx, []string{"bgtap0", "bgtap2", "bgtap3", "bgtap5", "bgtap6", "bgtap10"}))
	wantPool(t, m, "bgtap1,bgtap4", "bgtap0,bgtap2,bgtap3,bgtap5,bgtap6,bgtap10")
	must(t, m.Sync(ctx, nil))
	wantPool(t, m, "bgtap0,bgtap1", "")
	wantState(t, o, `link bgtap0 tap master=br-fc up isolated
link bgtap1 tap master=br-fc up isolated
link bgtap7 bridge
link bgtap8 tun
link br-fc bridge up 172.16.0.1/24
sysctl net.ipv4.ip_forward=0
`)
}

func TestAcquireSkipsVanishedTap(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 2)
	must(t, m.EnsureBridge(ctx))
	must(t, m.Sync(ctx, nil))
	// Someone deletes a pooled tap and detaches the other.
	delete(o.Links, "bgtap0")
	o.Links["bgtap1"].Master = ""
	acquire(t, m, "bgtap1")
	if l := o.Links["bgtap1"]; l.Master != "br-fc" || !l.Up {
		t.Errorf("handed-out tap not re-attached: %+v", l)
	}
	acquire(t, m, "bgtap0")
	wantPool(t, m, "", "bgtap0,bgtap1")
}

// TestAcquireReadsOneTap checks that handing out a pooled tap reads
// that tap only, through the Manager's link reader, and lists no links.
func TestAcquireReadsOneTap(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 2)
	must(t, m.EnsureBridge(ctx))
	must(t, m.Sync(ctx, nil))
	o.Runner().Reset()
	acquire(t, m, "bgtap0")
	if got, want := o.Runner().Calls(), []string{"ip -j -d addr show dev bgtap0"}; !slices.Equal(got, want) {
		t.Errorf("Acquire ran %q; want %q", got, want)
	}
	// The reader is the seam: a reader that fails fails the Acquire and
	// hands nothing out.
	m.readLink = func(context.Context, string) (link, bool, error) { return link{}, false, fmt.Errorf("netlink: boom") }
	if _, err := m.Acquire(ctx); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Acquire with a failing reader = %v", err)
	}
	wantPool(t, m, "bgtap1", "bgtap0")
}

func TestTapPoolErrors(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 1)
	must(t, m.EnsureBridge(ctx))
	// Enslaving a new tap fails: the half-made tap is deleted again.
	o.Fail["ip link set dev bgtap0 master"] = "RTNETLINK answers: Operation not supported"
	if _, err := m.Acquire(ctx); err == nil {
		t.Fatal("Acquire: want error")
	}
	wantState(t, o, "link br-fc bridge up 172.16.0.1/24\nsysctl net.ipv4.ip_forward=0\n")
	wantPool(t, m, "", "")
	// Listing fails: Sync says so.
	o.Fail["ip -j"] = "boom"
	if err := m.Sync(ctx, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Sync = %v, want the listing failure", err)
	}
}

func TestTapPoolConcurrent(t *testing.T) {
	ctx := context.Background()
	o := fakeos.New()
	m := newTestManager(t, o, 3)
	must(t, m.EnsureBridge(ctx))
	must(t, m.Sync(ctx, nil))
	const n = 8
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tap, err := m.Acquire(ctx)
			if err != nil {
				t.Error(err)
			}
			got[i] = tap
		}()
	}
	wg.Wait()
	slices.Sort(got)
	if d := slices.Compact(slices.Clone(got)); len(d) != n {
		t.Fatalf("taps handed out twice: %q", got)
	}
	for _, tap := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Release(ctx, tap); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	free, inUse := m.Pool()
	if len(free) != 3 || len(inUse) != 0 {
		t.Errorf("after releasing all: free %q, in use %q", free, inUse)
	}
	taps, err := m.ListTaps(ctx)
	must(t, err)
	if len(taps) != 3 {
		t.Errorf("taps on the host: %v, want the 3 pooled", taps)
	}
}
