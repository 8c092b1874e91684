package daemon

import (
	"errors"
	"sync/atomic"
	"testing"
)

// TestAllAtOnce: every call runs, even after one fails, and the errors
// come back joined in the order the calls were given.
func TestAllAtOnce(t *testing.T) {
	var ran atomic.Int32
	e1, e3 := errors.New("first"), errors.New("third")
	call := func(err error) func() error {
		return func() error { ran.Add(1); return err }
	}
	err := allAtOnce(call(e1), call(nil), call(e3), call(nil))
	if ran.Load() != 4 {
		t.Errorf("%d calls ran, want 4", ran.Load())
	}
	if !errors.Is(err, e1) || !errors.Is(err, e3) || err.Error() != "first\nthird" {
		t.Errorf("err = %q, want first then third", err)
	}
	if err := allAtOnce(call(nil), call(nil)); err != nil {
		t.Errorf("no failure: %v", err)
	}
}
