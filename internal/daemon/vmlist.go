package daemon

import (
	"context"
	"sync"

	"banger/internal/model"
)

// vmListCache keeps the VM rows the last list read, with the store's
// generation they were read under: while nothing was written since, a
// list reuses them instead of reading and decoding every row again (at
// 1,000 VMs, most of the cost of `vm ls`).
type vmListCache struct {
	mu  sync.Mutex
	ok  bool
	gen uint64
	vms []model.VMRecord
}

// listVMRows returns every VM row, from the cache when no change was
// made since it was read. The records are shared between callers: read
// them, never change them (nor their maps and slices).
func (d *Daemon) listVMRows(ctx context.Context) ([]model.VMRecord, error) {
	c := &d.vmList
	// The generation is read before the rows: a change committed in
	// between moves it past g, so the next list reads again.
	g := d.store.Generation()
	c.mu.Lock()
	if c.ok && c.gen == g {
		vms := c.vms
		c.mu.Unlock()
		return vms, nil
	}
	c.mu.Unlock()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if !c.ok || g >= c.gen {
		c.ok, c.gen, c.vms = true, g, vms
	}
	c.mu.Unlock()
	return vms, nil
}
