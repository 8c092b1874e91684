package api

import (
	"context"
	"sync"
	"testing"
	"time"

	"banger/internal/model"
)

// holdBackend holds VMs whose state the test sets.
type holdBackend struct {
	Backend
	mu    sync.Mutex
	state model.VMState
	held  int
}

func (b *holdBackend) GetVM(_ context.Context, ref string) (VMView, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ref != "dev" {
		return VMView{}, model.Errorf(model.ENOTFOUND, "vm %q not found", ref)
	}
	return VMView{VMRecord: model.VMRecord{Name: "dev", State: b.state}}, nil
}

func (b *holdBackend) Hold(ctx context.Context, ref string) (func(), error) {
	v, err := b.GetVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	if v.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm dev is %s", v.State)
	}
	b.mu.Lock()
	b.held++
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.held--
		b.mu.Unlock()
	}, nil
}

func (b *holdBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// TestHold: a hold counts while open, ends with the client's Close, and
// the daemon ends it when the VM stops running.
func TestHold(t *testing.T) {
	defer func(d time.Duration) { holdCheck = d }(holdCheck)
	holdCheck = 50 * time.Millisecond
	b := &holdBackend{state: model.VMStateRunning}
	c := serveTest(t, b)
	ctx := context.Background()

	h, err := c.Hold(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the hold", func() bool { return b.count() == 1 })
	time.Sleep(3 * holdCheck)
	select {
	case <-h.Done():
		t.Fatal("the hold of a running VM ended")
	default:
	}
	h.Close()
	waitFor(t, "the release", func() bool { return b.count() == 0 })

	h, err = c.Hold(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.state = model.VMStateStopped
	b.mu.Unlock()
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the hold of a stopped VM did not end")
	}
	h.Close()
	waitFor(t, "the release", func() bool { return b.count() == 0 })

	if _, err := c.Hold(ctx, "dev"); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("hold of a stopped VM: %v", err)
	}
	if _, err := c.Hold(ctx, "ghost"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("hold of an unknown VM: %v", err)
	}
}
