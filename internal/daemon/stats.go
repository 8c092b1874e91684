package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/proc"
	"banger/internal/storage"

	"golang.org/x/sys/unix"
)

// Idle detection thresholds: a guest using more CPU than this (percent of
// one host CPU, over a poll interval), or moving disk or network bytes, is
// working, even when nobody touches it through the API.
const (
	activeCPUPercent = 15.0
	activeIOBytes    = 64 << 10
	// maxConsoleLog bounds a VM's console log (twice this with the
	// rotated copy).
	maxConsoleLog = 16 << 20
)

// cpuSample is a VMM's CPU time at one moment.
type cpuSample struct {
	at    time.Time
	ticks uint64
}

// pollState is the poller's memory between polls.
type pollState struct {
	mu  sync.Mutex
	cpu map[string]cpuSample
}

var clockTicks = 100.0 // USER_HZ on Linux

// pollStats collects stats for every running VM and stops those idle
// longer than their auto-stop time.
func (d *Daemon) pollStats(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.logger.Warn("stats poller", "err", err)
		return
	}
	// One pass over /proc per poll serves every VM's process tree.
	var procs proc.Table
	for _, vm := range vms {
		if vm.State != model.VMStateRunning {
			continue
		}
		if procs.Procs == nil {
			if procs, err = d.procs.Snapshot(); err != nil {
				d.logger.Warn("stats: read processes", "err", err)
				return
			}
		}
		stats, err := d.collectStats(ctx, vm, procs)
		if err != nil {
			d.logger.Debug("stats", "vm", vm.Name, "err", err)
			continue
		}
		if err := d.store.UpdateVMStats(ctx, vm.ID, stats); err != nil {
			d.logger.Warn("store stats", "vm", vm.Name, "err", err)
			continue
		}
		vm.Stats = stats
		firecracker.TrimLog(vm.Runtime.LogPath, maxConsoleLog)
		d.maybeAutoStop(ctx, vm)
	}
}

// collectStats measures one VM: CPU percent since the last poll, RSS and
// VSZ of the VMM and its children, allocated bytes of its disks, and
// Firecracker's latest metrics line.
func (d *Daemon) collectStats(ctx context.Context, vm model.VMRecord, procs proc.Table) (model.VMStats, error) {
	st := vm.Stats
	now := time.Now()
	st.CollectedAt = now.UTC().Truncate(time.Second)
	hint := 0
	if h, ok := d.handles.get(vm.ID); ok {
		hint = h.PID
	}
	var list []proc.Process
	if hint == 0 || !d.isVMM(d.procs, procs.Procs[hint], vm) {
		for _, p := range procs.Procs {
			list = append(list, p)
		}
		hint = d.findVMM(vm, 0, list).PID
	}
	pid := hint
	if pid == 0 {
		return st, fmt.Errorf("no vmm process")
	}
	ticks, rss, vsz := procs.Usage(pid)
	st.RSSBytes, st.VSZBytes = rss, vsz
	d.poll.mu.Lock()
	if d.poll.cpu == nil {
		d.poll.cpu = map[string]cpuSample{}
	}
	prev, ok := d.poll.cpu[vm.ID]
	d.poll.cpu[vm.ID] = cpuSample{at: now, ticks: ticks}
	d.poll.mu.Unlock()
	st.CPUPercent = 0
	if ok && ticks >= prev.ticks {
		secs := now.Sub(prev.at).Seconds()
		if secs > 0 {
			st.CPUPercent = float64(ticks-prev.ticks) / clockTicks / secs * 100
		}
	}
	st.SystemOverlayBytes, _ = storage.AllocatedBytes(vm.Runtime.SystemOverlay)
	st.WorkDiskBytes, _ = storage.AllocatedBytes(vm.Runtime.WorkDiskPath)

	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := d.vmmClient(vm).FlushMetrics(fctx)
	cancel()
	if err != nil {
		d.logger.Debug("flush metrics", "vm", vm.Name, "err", err)
	}
	moved := int64(0)
	if m, err := lastJSONLine(vm.Runtime.MetricsPath, vm.Runtime.VMMUID); err == nil {
		st.MetricsRaw = m
		moved = ioBytes(m)
	}
	st.Limits = d.vmLimitStats(vm)
	active := (ok && st.CPUPercent > activeCPUPercent) || moved > activeIOBytes
	if active {
		st.LastActiveAt = st.CollectedAt
	}
	return st, nil
}

// maybeAutoStop stops a VM idle past its auto-stop time: no API use, no
// open session through the daemon, and no guest work seen by the poller.
func (d *Daemon) maybeAutoStop(ctx context.Context, vm model.VMRecord) {
	after := d.autoStopAfter(vm)
	if after <= 0 || d.sessions.open(vm.ID) > 0 {
		return
	}
	last := latest(vm.LastTouchedAt, vm.Stats.LastActiveAt, vm.Runtime.StartedAt)
	if time.Since(last) < after {
		return
	}
	unlock, ok := d.locks.tryLock(vm.ID)
	if !ok {
		return
	}
	defer unlock()
	fresh, err := d.store.GetVM(ctx, vm.ID)
	if err != nil || fresh.State != model.VMStateRunning {
		return
	}
	if time.Since(latest(fresh.LastTouchedAt, fresh.Stats.LastActiveAt, fresh.Runtime.StartedAt)) < after {
		return
	}
	d.idleLocked(ctx, fresh, time.Since(last), after)
}

func latest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}

// Bounds on reading a VM's metrics file. The VMM writes it, and a VMM a
// guest took over writes what it likes: only the file's tail is read,
// and a line longer than a real metrics line is skipped.
const (
	maxMetricsTail = 256 << 10
	maxMetricsLine = 64 << 10
	// maxIOBytes bounds one counter of one metrics line (a delta since
	// the previous flush); a larger value is not believed.
	maxIOBytes = 1 << 50
)

// lastJSONLine reads the last complete JSON object of a metrics file: a
// regular file (a FIFO, device or symlink put in its place is refused
// without blocking), of which at most the last 256 KiB are read, lines
// over 64 KiB skipped.
func lastJSONLine(path string, uid int) (map[string]any, error) {
	// The file is in the VMM's own directory: never a link followed by
	// root, never a FIFO that blocks the poller, only a regular file of
	// the VM's uid.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("metrics file %s is not a regular file", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && uid > 0 && int(st.Uid) != uid {
		return nil, fmt.Errorf("metrics file %s belongs to uid %d, not the VM's %d", path, st.Uid, uid)
	}
	start := max(fi.Size()-maxMetricsTail, 0)
	buf := make([]byte, fi.Size()-start)
	n, err := f.ReadAt(buf, start)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	lines := strings.Split(string(buf[:n]), "\n")
	if start > 0 && len(lines) > 0 {
		lines = lines[1:] // the first is likely cut
	}
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if len(l) > maxMetricsLine || !strings.HasPrefix(l, "{") || !strings.HasSuffix(l, "}") {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			continue
		}
		return m, nil
	}
	return nil, errors.New("no metrics yet")
}

// ioBytes sums the byte counters of a Firecracker metrics line: block
// read/write and network rx/tx, which are deltas since the previous flush.
// A counter that is not a whole number from 0 to maxIOBytes is ignored.
func ioBytes(m map[string]any) int64 {
	var total int64
	for k, v := range m {
		sub, ok := v.(map[string]any)
		if !ok || !(strings.HasPrefix(k, "block_") || strings.HasPrefix(k, "net_")) {
			continue
		}
		for _, c := range []string{"read_bytes", "write_bytes", "rx_bytes_count", "tx_bytes_count"} {
			n, ok := sub[c].(float64)
			if !ok || n < 0 || n > maxIOBytes || n != math.Trunc(n) {
				continue
			}
			total = min(total+int64(n), maxIOBytes)
		}
	}
	return total
}

// VMStats implements api.Backend: the stats the poller last collected.
// Only the poller measures, so CPU percentages always span a full poll
// interval and a look at the stats never counts as guest activity.
func (d *Daemon) VMStats(ctx context.Context, ref string) (model.VMStats, error) {
	vm, err := d.findVM(ctx, ref)
	if err != nil {
		return model.VMStats{}, err
	}
	if vm.State == model.VMStateRunning {
		// Denied connections are counted by the kernel, read when asked.
		if n, err := d.net.DeniedCount(ctx, vm.ID); err == nil {
			vm.Stats.EgressDenied = n
		}
	}
	if vm.State == model.VMStateSuspended {
		vm.Stats.SavedStateBytes = vm.Runtime.SavedStateBytes
	}
	return vm.Stats, nil
}
