package qemuvmm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// blockCounters are a drive's cumulative I/O counters.
type blockCounters struct {
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	ReadCount  uint64 `json:"read_count"`
	WriteCount uint64 `json:"write_count"`
	FlushCount uint64 `json:"flush_count"`
}

// netCounters are a NIC's cumulative counters, from the guest's point of
// view (rx is what the guest received), named as Firecracker names them.
type netCounters struct {
	RxBytes   uint64 `json:"rx_bytes_count"`
	TxBytes   uint64 `json:"tx_bytes_count"`
	RxPackets uint64 `json:"rx_packets_count"`
	TxPackets uint64 `json:"tx_packets_count"`
}

// counters is one reading of every device's counters, by Firecracker id.
type counters struct {
	Block map[string]blockCounters
	Net   map[string]netCounters
}

// delta returns cur - prev, or cur when the counter went backwards (the
// device was reset).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

func (c blockCounters) sub(p blockCounters) blockCounters {
	return blockCounters{
		ReadBytes: delta(c.ReadBytes, p.ReadBytes), WriteBytes: delta(c.WriteBytes, p.WriteBytes),
		ReadCount: delta(c.ReadCount, p.ReadCount), WriteCount: delta(c.WriteCount, p.WriteCount),
		FlushCount: delta(c.FlushCount, p.FlushCount),
	}
}

func (c blockCounters) add(d blockCounters) blockCounters {
	return blockCounters{
		ReadBytes: c.ReadBytes + d.ReadBytes, WriteBytes: c.WriteBytes + d.WriteBytes,
		ReadCount: c.ReadCount + d.ReadCount, WriteCount: c.WriteCount + d.WriteCount,
		FlushCount: c.FlushCount + d.FlushCount,
	}
}

func (c netCounters) sub(p netCounters) netCounters {
	return netCounters{
		RxBytes: delta(c.RxBytes, p.RxBytes), TxBytes: delta(c.TxBytes, p.TxBytes),
		RxPackets: delta(c.RxPackets, p.RxPackets), TxPackets: delta(c.TxPackets, p.TxPackets),
	}
}

func (c netCounters) add(d netCounters) netCounters {
	return netCounters{
		RxBytes: c.RxBytes + d.RxBytes, TxBytes: c.TxBytes + d.TxBytes,
		RxPackets: c.RxPackets + d.RxPackets, TxPackets: c.TxPackets + d.TxPackets,
	}
}

// metricsLine returns one Firecracker-shaped metrics line: a compact JSON
// object and a newline, with utc_timestamp_ms, block_<drive_id> and
// net_<iface_id> objects and the block and net totals over all devices.
// Like Firecracker's, the counters are deltas since the previous flush
// (prev), not running totals.
func metricsLine(now time.Time, prev, cur counters) []byte {
	obj := map[string]any{"utc_timestamp_ms": now.UnixMilli()}
	var blockTotal blockCounters
	for id, c := range cur.Block {
		d := c.sub(prev.Block[id])
		obj["block_"+id] = d
		blockTotal = blockTotal.add(d)
	}
	var netTotal netCounters
	for id, c := range cur.Net {
		d := c.sub(prev.Net[id])
		obj["net_"+id] = d
		netTotal = netTotal.add(d)
	}
	obj["block"] = blockTotal
	obj["net"] = netTotal
	raw, err := json.Marshal(obj) // keys sorted; cannot fail for these types
	if err != nil {
		panic(err)
	}
	return append(raw, '\n')
}

// qmpBlockStats is the part of QMP query-blockstats that metrics use.
type qmpBlockStats struct {
	Device string `json:"device"`
	Stats  struct {
		RdBytes  uint64 `json:"rd_bytes"`
		WrBytes  uint64 `json:"wr_bytes"`
		RdOps    uint64 `json:"rd_operations"`
		WrOps    uint64 `json:"wr_operations"`
		FlushOps uint64 `json:"flush_operations"`
	} `json:"stats"`
}

// blockCountersFromQMP maps query-blockstats entries to drive ids.
func blockCountersFromQMP(stats []qmpBlockStats) map[string]blockCounters {
	out := map[string]blockCounters{}
	for _, s := range stats {
		id, ok := driveIDFromNode(s.Device)
		if !ok {
			continue
		}
		out[id] = blockCounters{
			ReadBytes: s.Stats.RdBytes, WriteBytes: s.Stats.WrBytes,
			ReadCount: s.Stats.RdOps, WriteCount: s.Stats.WrOps, FlushCount: s.Stats.FlushOps,
		}
	}
	return out
}

// readTapCounters reads a tap's counters from sysfs (sysClassNet is
// /sys/class/net). QMP has no byte counters for a NIC, so they come from
// the host side of the tap; what the host's tap transmits is what the
// guest receives, so rx and tx are swapped to give the guest's view that
// Firecracker reports.
func readTapCounters(sysClassNet, tap string) (netCounters, error) {
	read := func(name string) (uint64, error) {
		raw, err := os.ReadFile(filepath.Join(sysClassNet, tap, "statistics", name))
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	}
	var c netCounters
	var err error
	for _, f := range []struct {
		name string
		dst  *uint64
	}{
		{"tx_bytes", &c.RxBytes}, {"rx_bytes", &c.TxBytes},
		{"tx_packets", &c.RxPackets}, {"rx_packets", &c.TxPackets},
	} {
		if *f.dst, err = read(f.name); err != nil {
			return netCounters{}, fmt.Errorf("read tap %s counters: %w", tap, err)
		}
	}
	return c, nil
}

// collectCounters reads every device's counters from the running machine.
func (v *VMM) collectCounters(ctx context.Context) (counters, error) {
	var stats []qmpBlockStats
	if err := v.m.Execute(ctx, "query-blockstats", nil, &stats); err != nil {
		return counters{}, fmt.Errorf("metrics: %w", err)
	}
	c := counters{Block: blockCountersFromQMP(stats), Net: map[string]netCounters{}}
	for _, n := range v.nics {
		nc, err := readTapCounters(v.cfg.SysClassNet, n.Tap)
		if err != nil {
			v.logger().Warn("metrics: skipping network interface", "iface", n.ID, "err", err)
			continue
		}
		c.Net[n.ID] = nc
	}
	return c, nil
}

// flushMetricsLocked writes one metrics line, if metrics are configured
// and the VM runs. The caller holds v.mu.
func (v *VMM) flushMetricsLocked(ctx context.Context) error {
	if v.metricsFile == nil || v.m == nil {
		return nil
	}
	cur, err := v.collectCounters(ctx)
	if err != nil {
		return err
	}
	line := metricsLine(v.cfg.Now(), v.metricsPrev, cur)
	// A FIFO without room loses the line, as in Firecracker.
	if _, err := v.metricsFile.Write(line); err != nil {
		return fmt.Errorf("metrics: write: %w", err)
	}
	v.metricsPrev = cur
	return nil
}

// metricsLoop flushes every period until the VM ends; it is started by
// InstanceStart when metrics are configured and waited for by Close.
func (v *VMM) metricsLoop(period time.Duration, done <-chan struct{}) {
	defer v.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-v.closing:
			return
		case <-t.C:
			v.mu.Lock()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := v.flushMetricsLocked(ctx)
			cancel()
			v.mu.Unlock()
			if err != nil {
				v.logger().Warn("periodic metrics flush failed", "err", err)
			}
		}
	}
}
