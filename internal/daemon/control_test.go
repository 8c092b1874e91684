package daemon

import (
	"errors"
	"os"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

func TestNeedVMMSearch(t *testing.T) {
	notExist := &os.PathError{Op: "open", Path: "handles.json", Err: os.ErrNotExist}
	corrupt := errors.New("corrupt handles.json")
	cases := []struct {
		state   model.VMState
		cached  bool
		fileErr error
		want    bool
	}{
		// Nothing known of a never-started or stopped VM: no VMM.
		{model.VMStateCreated, false, notExist, false},
		{model.VMStateStopped, false, notExist, false},
		// Handles known (cache or file): they are checked against the host.
		{model.VMStateCreated, true, nil, true},
		{model.VMStateStopped, false, nil, true},
		// An unreadable handles.json says nothing: search.
		{model.VMStateStopped, false, corrupt, true},
		// A running VM, or one in error, is searched for even without
		// handles (a daemon that lost them rebuilds them from the host).
		{model.VMStateRunning, false, notExist, true},
		{model.VMStateError, false, notExist, true},
		{model.VMStateSuspended, false, notExist, true},
	}
	for _, c := range cases {
		if got := needVMMSearch(c.state, c.cached, c.fileErr); got != c.want {
			t.Errorf("needVMMSearch(%s, cached %v, %v) = %v, want %v", c.state, c.cached, c.fileErr, got, c.want)
		}
	}
}

// TestDeleteStoppedVMWithHandlesFileKillsItsVMM: a stopped row whose
// handles.json still names a live VMM (the daemon lost its cache) is
// searched for, and the VMM is killed by the rm.
func TestDeleteStoppedVMWithHandlesFileKillsItsVMM(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(t, "dev")
	vm := e.vm(t, "dev")
	vm.State = model.VMStateStopped
	if err := e.d.store.UpdateVM(e.ctx, vm); err != nil {
		t.Fatal(err)
	}
	e.d.handles.clear(vm.ID) // handles.json stays
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if p := e.vmms.get(pid); !p.killed {
		t.Errorf("the VMM handles.json named was not killed")
	}
}

// TestStrayVMMOfRemovedCreatedVMIsSwept: rm of a never-started VM does not
// read the host's processes; a VMM no daemon recorded (none can exist
// without a daemon crash, which the startup reconcile covers) would be
// left to the next sweep, which kills any VMM whose socket no row names.
func TestStrayVMMOfRemovedCreatedVMIsSwept(t *testing.T) {
	e := newTestDaemon(t, false)
	vm := e.create(t, "dev", false)
	pid, err := e.vmms.start(vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.store.GetVM(e.ctx, "dev"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Fatalf("row after rm: %v", err)
	}
	if err := e.d.reconcile(e.ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if p := e.vmms.get(pid); !p.killed {
		t.Errorf("the stray VMM survived the sweep")
	}
}

// TestListVMsCache: a list with no change since the last one reuses its
// rows; any change through the store (a new VM, a state change, stats,
// a removal) is seen by the next list; users still see only their VMs.
func TestListVMsCache(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "a", false)
	names := func() []string {
		t.Helper()
		vs, err := e.d.ListVMs(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vs {
			out = append(out, v.Name+":"+string(v.State))
		}
		return out
	}
	first, _ := e.d.listVMRows(e.ctx)
	again, _ := e.d.listVMRows(e.ctx)
	if len(first) != 1 || &first[0] != &again[0] {
		t.Errorf("a list with nothing changed read the rows again")
	}
	e.create(t, "b", false)
	if got := names(); len(got) != 2 || got[1] != "b:created" {
		t.Errorf("after a create: %v", got)
	}
	vm := e.vm(t, "b")
	vm.State = model.VMStateStopped
	if err := e.d.store.UpdateVM(e.ctx, vm); err != nil {
		t.Fatal(err)
	}
	if got := names(); got[1] != "b:stopped" {
		t.Errorf("after an update: %v", got)
	}
	if err := e.d.store.UpdateVMStats(e.ctx, vm.ID, model.VMStats{RSSBytes: 42}); err != nil {
		t.Fatal(err)
	}
	if vs, _ := e.d.ListVMs(e.ctx); vs[1].Stats.RSSBytes != 42 {
		t.Errorf("after new stats: %+v", vs[1].Stats)
	}
	if err := e.d.DeleteVM(e.ctx, "a", api.VMDeleteOptions{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 1 || got[0] != "b:stopped" {
		t.Errorf("after a removal: %v", got)
	}
	// The cached rows are filtered per caller like fresh ones.
	other := api.WithCaller(e.ctx, api.Caller{UID: 4242, GID: 4242})
	if vs, err := e.d.ListVMs(other); err != nil || len(vs) != 0 {
		t.Errorf("another user sees %d VMs, %v", len(vs), err)
	}
}
