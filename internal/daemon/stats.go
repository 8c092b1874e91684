package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/firecracker"
	"banger/internal/model"
	"banger/internal/storage"
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
	var procs procTable
	for _, vm := range vms {
		if vm.State != model.VMStateRunning {
			continue
		}
		if procs.procs == nil {
			procs = readProcTable()
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
func (d *Daemon) collectStats(ctx context.Context, vm model.VMRecord, procs procTable) (model.VMStats, error) {
	st := vm.Stats
	now := time.Now()
	st.CollectedAt = now.UTC().Truncate(time.Second)
	pid := 0
	if h, ok := d.handles.get(vm.ID); ok && firecracker.Serves(h.PID, vm.Runtime.APISockPath) {
		pid = h.PID
	} else if p, err := firecracker.FindPID(vm.Runtime.APISockPath); err == nil {
		pid = p
	}
	if pid == 0 {
		return st, fmt.Errorf("no vmm process")
	}
	ticks, rss, vsz := procs.tree(pid)
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
	err := firecracker.NewClient(vm.Runtime.APISockPath).FlushMetrics(fctx)
	cancel()
	if err != nil {
		d.logger.Debug("flush metrics", "vm", vm.Name, "err", err)
	}
	moved := int64(0)
	if m, err := lastJSONLine(vm.Runtime.MetricsPath); err == nil {
		st.MetricsRaw = m
		moved = ioBytes(m)
	}
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
	d.logger.Info("auto-stopping an idle vm", "vm", vm.Name, "idle_for", time.Since(last).Round(time.Second), "after", after)
	if _, err := d.stopLocked(ctx, fresh, false, api.NoProgress); err != nil {
		d.logger.Warn("auto-stop", "vm", vm.Name, "err", err)
	}
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

// procEntry is one process's /proc/pid/stat fields after the command.
type procEntry struct {
	ppid     int
	ticks    uint64
	rss, vsz int64
}

// procTable is a snapshot of /proc: every process's stat fields and its
// children, read once per poll.
type procTable struct {
	procs    map[int]procEntry
	children map[int][]int
}

func readProcTable() procTable {
	t := procTable{procs: map[int]procEntry{}, children: map[int][]int{}}
	entries, _ := os.ReadDir("/proc")
	page := int64(os.Getpagesize())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// Fields after the command: state(0) ppid(1) ... utime(11)
		// stime(12) ... vsize(20) rss(21).
		f := procStatFields(pid)
		if len(f) <= 21 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		u, _ := strconv.ParseUint(f[11], 10, 64)
		s, _ := strconv.ParseUint(f[12], 10, 64)
		v, _ := strconv.ParseInt(f[20], 10, 64)
		r, _ := strconv.ParseInt(f[21], 10, 64)
		t.procs[pid] = procEntry{ppid: ppid, ticks: u + s, vsz: v, rss: r * page}
		t.children[ppid] = append(t.children[ppid], pid)
	}
	return t
}

// tree sums CPU ticks, RSS and VSZ over pid and its descendants
// (banger-vmm-qemu's guest runs in a QEMU child).
func (t procTable) tree(pid int) (ticks uint64, rss, vsz int64) {
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if e, ok := t.procs[p]; ok {
			ticks += e.ticks
			rss += e.rss
			vsz += e.vsz
		}
		queue = append(queue, t.children[p]...)
	}
	return ticks, rss, vsz
}

// procStatFields returns /proc/pid/stat's fields after the command name.
func procStatFields(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// lastJSONLine reads the last complete JSON object of a metrics file.
func lastJSONLine(path string) (map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	start := fi.Size() - 256<<10
	if start < 0 {
		start = 0
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return nil, err
	}
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "{") && strings.HasSuffix(l, "}") {
			last = l
		}
	}
	if last == "" {
		return nil, errors.New("no metrics yet")
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(last), &m); err != nil {
		return nil, err
	}
	return m, nil
}

// ioBytes sums the byte counters of a Firecracker metrics line: block
// read/write and network rx/tx, which are deltas since the previous flush.
func ioBytes(m map[string]any) int64 {
	var total float64
	for k, v := range m {
		sub, ok := v.(map[string]any)
		if !ok || !(strings.HasPrefix(k, "block_") || strings.HasPrefix(k, "net_")) {
			continue
		}
		for _, c := range []string{"read_bytes", "write_bytes", "rx_bytes_count", "tx_bytes_count"} {
			if n, ok := sub[c].(float64); ok {
				total += n
			}
		}
	}
	return int64(total)
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
	return vm.Stats, nil
}
