package daemon

import (
	"context"
	"time"
)

// startLoops runs the stale sweep and the stats poller until ctx ends.
// Close waits for them.
func (d *Daemon) startLoops(ctx context.Context) {
	d.runEvery(ctx, "stale sweep", d.cfg.StaleSweepInterval, func(ctx context.Context) {
		if err := d.reconcile(ctx, "sweep"); err != nil {
			d.logger.Warn("stale sweep", "err", err)
		}
	})
	d.runEvery(ctx, "stats poller", d.cfg.StatsPollInterval, d.pollStats)
}

// runEvery calls f every interval in a goroutine owned by the daemon.
func (d *Daemon) runEvery(ctx context.Context, name string, interval time.Duration, f func(context.Context)) {
	if interval <= 0 {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f(ctx)
			}
		}
	}()
	d.logger.Debug("loop started", "loop", name, "every", interval)
}
