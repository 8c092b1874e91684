package daemon

import (
	"sort"
	"strings"
	"sync"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

// TestFaultMatrixCoversEveryCrashPoint runs every lifecycle operation on
// the fake host and fails if the daemon passed a crash point that the
// end-to-end fault matrix (FaultMatrix) has no cell for.
func TestFaultMatrixCoversEveryCrashPoint(t *testing.T) {
	e := newTestDaemon(t, false)
	var mu sync.Mutex
	passed := map[string]bool{}
	e.d.onCrashPoint = func(s string) {
		mu.Lock()
		passed[s] = true
		mu.Unlock()
	}
	e.create(t, "dev", true)
	for _, op := range []func() error{
		func() error { _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.KillVM(e.ctx, "dev"); return err },
		func() error { _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.SuspendVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{}, api.NoProgress); return err },
		func() error {
			return e.d.DeleteVM(e.ctx, "dev-1", api.VMDeleteOptions{Force: true}, api.NoProgress)
		},
		func() error { _, err := e.d.SuspendVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); return err },
		func() error { return e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{Force: true}, api.NoProgress) },
		func() error {
			_, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress)
			return err
		},
		func() error {
			_, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "warmed", ImageName: "base"}, api.NoProgress)
			return err
		},
		func() error { return e.d.DeleteVM(e.ctx, "warmed", api.VMDeleteOptions{Force: true}, api.NoProgress) },
	} {
		if err := op(); err != nil {
			t.Fatal(err)
		}
	}
	cells := map[string]bool{}
	for _, c := range FaultMatrix() {
		if cells[c.CrashAt] {
			t.Errorf("crash point %s has two cells", c.CrashAt)
		}
		cells[c.CrashAt] = true
	}
	var missing []string
	for p := range passed {
		if !cells[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("crash points the fault matrix does not cover: %s", strings.Join(missing, ", "))
	}
	// And every cell is a point the lifecycle really passes.
	for c := range cells {
		if !passed[c] {
			t.Errorf("fault matrix cell %s is never passed", c)
		}
	}
}
