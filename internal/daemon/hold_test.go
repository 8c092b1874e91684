package daemon

import (
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

// TestHoldCountsAsASession: a hold is an open session of its VM (no idle
// policy acts on it) until released, once; only a running VM the caller
// sees can be held.
func TestHoldCountsAsASession(t *testing.T) {
	e := newTestDaemon(t, false)
	dev := e.create(t, "dev", false)
	if _, err := e.d.Hold(e.ctx, "dev"); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("hold of a created VM: %v; want ECONFLICT", err)
	}
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	release, err := e.d.Hold(e.ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if n := e.d.sessions.open(dev.ID); n != 1 {
		t.Errorf("%d open sessions while held; want 1", n)
	}
	release()
	release()
	if n := e.d.sessions.open(dev.ID); n != 0 {
		t.Errorf("%d open sessions after release; want 0", n)
	}
	other := api.WithCaller(e.ctx, api.Caller{UID: 4242, GID: 4242})
	if _, err := e.d.Hold(other, "dev"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("hold of another user's VM: %v; want ENOTFOUND", err)
	}
}

// TestHoldResumesASuspendedVM: a hold (port-forward) of a suspended VM
// resumes it, as a connect stream does, and then holds it.
func TestHoldResumesASuspendedVM(t *testing.T) {
	e := newTestDaemon(t, false)
	dev := e.create(t, "dev", true)
	e.start(t, "dev")
	e.suspend(t, "dev")
	release, err := e.d.Hold(e.ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if vm := e.vm(t, "dev"); vm.State != model.VMStateRunning {
		t.Errorf("after a hold of the suspended VM: state %s; want running", vm.State)
	}
	if n := e.d.sessions.open(dev.ID); n != 1 {
		t.Errorf("%d open sessions while held; want 1", n)
	}
}
