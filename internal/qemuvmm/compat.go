package qemuvmm

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
)

// The rest of Firecracker's API, for its other clients: updates after
// boot (PATCH /drives/{id}, /network-interfaces/{id}), the balloon, the
// entropy device, and clear refusals for what QEMU's microvm cannot do.

// unavailable maps endpoint prefixes banger-vmm-qemu cannot serve to why.
var unavailable = []struct{ prefix, why string }{
	{"/mmds", "MMDS is not available on " + AppName + ": QEMU's network device cannot answer the guest's metadata requests; give the guest its data another way (kernel command line, a drive)."},
	{"/serial", "Serial output redirection is not available on " + AppName + ": the serial console goes to the VMM's standard output."},
	{"/cpu-config", "Custom CPU templates are not available on " + AppName + ": QEMU runs the guest with its own CPU model."},
	{"/hotplug/", "Memory hotplug (virtio-mem) is not available on " + AppName + "'s microvm machine."},
	{"/pmem/", "virtio-pmem devices are not available on " + AppName + "'s microvm machine."},
	{"/balloon/hinting/", "Balloon free page hinting is not available on " + AppName + "."},
}

// unavailableFault returns the refusal for path, or nil when it is served.
func unavailableFault(path string) error {
	for _, u := range unavailable {
		if path == strings.TrimSuffix(u.prefix, "/") || strings.HasPrefix(path, u.prefix) {
			return faultf("%s", u.why)
		}
	}
	return nil
}

// nextFDSet returns a QEMU fd set id for a descriptor passed at run time,
// above the descriptor numbers the command line's sets use.
func (v *VMM) nextFDSet() int {
	v.fdsetSeq++
	return 1000 + v.fdsetSeq
}

type partialDriveReq struct {
	DriveID     *string         `json:"drive_id"`
	PathOnHost  *string         `json:"path_on_host"`
	RateLimiter json.RawMessage `json:"rate_limiter"`
}

// patchDrive is PATCH /drives/{id} after boot: a new backing file for the
// drive, swapped under the running guest (QMP blockdev-add of the new
// file, blockdev-reopen of the drive's format node onto it) and announced
// to the guest with its size, as Firecracker does.
func (v *VMM) patchDrive(ctx context.Context, id string, body []byte) error {
	var req partialDriveReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := checkPathID("drive", id, req.DriveID, "drive_id"); err != nil {
		return err
	}
	if v.m == nil {
		return faultf(msgNotBeforeBoot)
	}
	i := -1
	for j := range v.drives {
		if v.drives[j].ID == id {
			i = j
		}
	}
	if i < 0 {
		return faultf("Unable to patch the block device: no drive %s.", id)
	}
	d := &v.drives[i]
	if rawSet(req.RateLimiter) {
		th, err := parseRateLimiter(req.RateLimiter, d.Throttle)
		if err != nil {
			return err
		}
		if err := v.m.Execute(ctx, "block_set_io_throttle", th.qmpArgs(id), nil); err != nil {
			return faultf("Unable to patch the block device: rate limiter: %v", err)
		}
		d.Throttle = th
	}
	if req.PathOnHost == nil {
		return nil
	}
	f, err := v.openDriveFile(*req.PathOnHost, d.ReadOnly)
	if err != nil {
		return faultf("Unable to patch the block device: %v", err)
	}
	driver, filename, fdset := "file", *req.PathOnHost, 0
	if f != nil {
		fdset = v.nextFDSet()
		if err := v.m.ExecuteFD(ctx, "add-fd", map[string]any{"fdset-id": fdset}, nil, f.f); err != nil {
			f.close()
			return faultf("Unable to patch the block device: %v", err)
		}
		filename = fmt.Sprintf("/dev/fdset/%d", fdset)
		if f.blockDev {
			driver = "host_device"
		}
	} else if st, err := os.Stat(filename); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		driver = "host_device"
	}
	undo := func() {
		if fdset != 0 {
			v.m.Execute(ctx, "remove-fd", map[string]any{"fdset-id": fdset}, nil)
		}
		f.close()
	}
	cache := map[string]any{"direct": false, "no-flush": d.Cache != "Writeback"}
	node := fileNodeID(id, d.gen+1)
	add := map[string]any{"driver": driver, "node-name": node, "filename": filename, "cache": cache, "read-only": d.ReadOnly}
	if err := v.m.Execute(ctx, "blockdev-add", add, nil); err != nil {
		undo()
		return faultf("Unable to patch the block device: %v", err)
	}
	reopen := map[string]any{"options": []map[string]any{{
		"driver": "raw", "node-name": formatNodeID(id), "file": node, "read-only": d.ReadOnly, "cache": cache,
	}}}
	if err := v.m.Execute(ctx, "blockdev-reopen", reopen, nil); err != nil {
		v.m.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		undo()
		return faultf("Unable to patch the block device: %v", err)
	}
	// The previous file node went with the reopen; its fd set goes now.
	if d.fdset != 0 {
		v.m.Execute(ctx, "remove-fd", map[string]any{"fdset-id": d.fdset}, nil)
	}
	d.file.close()
	d.Path, d.file, d.fdset = *req.PathOnHost, f, fdset
	d.gen++
	if !d.ReadOnly {
		// A resize to the new size makes virtio-blk tell the guest.
		if size, err := driveSize(*d); err == nil {
			if err := v.m.Execute(ctx, "block_resize", map[string]any{"node-name": formatNodeID(id), "size": size}, nil); err != nil {
				v.logger().Warn("patch drive: the guest was not told the new size", "drive", id, "err", err)
			}
		}
	}
	v.logger().Info("drive backing file replaced", "drive", id, "path_on_host", d.Path)
	return nil
}

type partialNICReq struct {
	IfaceID       *string         `json:"iface_id"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
}

// patchNIC is PATCH /network-interfaces/{id}: Firecracker updates the
// interface's rate limiters, which QEMU's tap backend does not have.
func (v *VMM) patchNIC(id string, body []byte) error {
	var req partialNICReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	if err := checkPathID("network interface", id, req.IfaceID, "iface_id"); err != nil {
		return err
	}
	if v.m == nil {
		return faultf(msgNotBeforeBoot)
	}
	found := false
	for _, n := range v.nics {
		found = found || n.ID == id
	}
	switch {
	case !found:
		return faultf("Unable to patch the network interface: no network interface %s.", id)
	case rawSet(req.RxRateLimiter) || rawSet(req.TxRateLimiter):
		return faultf("Network rate limiters are not available on %s: QEMU's tap backend has no rate limiting.", AppName)
	}
	return nil
}

// balloonConfig is the balloon device, as PUT /balloon configured it.
type balloonConfig struct {
	AmountMiB         int  `json:"amount_mib"`
	DeflateOnOOM      bool `json:"deflate_on_oom"`
	StatsInterval     int  `json:"stats_polling_interval_s"`
	FreePageReporting bool `json:"free_page_reporting,omitempty"`
}

type balloonReq struct {
	AmountMiB         *int  `json:"amount_mib"`
	DeflateOnOOM      *bool `json:"deflate_on_oom"`
	StatsInterval     *int  `json:"stats_polling_interval_s"`
	FreePageHinting   *bool `json:"free_page_hinting"`
	FreePageReporting *bool `json:"free_page_reporting"`
}

func (v *VMM) putBalloon(body []byte) error {
	var req balloonReq
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.AmountMiB == nil:
		return missing("amount_mib")
	case req.DeflateOnOOM == nil:
		return missing("deflate_on_oom")
	case *req.AmountMiB < 0 || req.StatsInterval != nil && *req.StatsInterval < 0:
		return faultf("An error occurred when deserializing the json body of a request: invalid value: integer, expected u32.")
	case req.FreePageHinting != nil && *req.FreePageHinting:
		return faultf("Balloon free page hinting is not available on %s.", AppName)
	}
	b := &balloonConfig{AmountMiB: *req.AmountMiB, DeflateOnOOM: *req.DeflateOnOOM}
	if req.StatsInterval != nil {
		b.StatsInterval = *req.StatsInterval
	}
	if req.FreePageReporting != nil {
		b.FreePageReporting = *req.FreePageReporting
	}
	v.balloon = b
	v.configured = true
	return nil
}

func (v *VMM) getBalloon() (any, error) {
	if v.balloon == nil {
		return nil, faultf("The balloon device is not configured.")
	}
	return map[string]any{
		"amount_mib": v.balloon.AmountMiB, "deflate_on_oom": v.balloon.DeflateOnOOM,
		"stats_polling_interval_s": v.balloon.StatsInterval,
		"free_page_hinting":        false, "free_page_reporting": v.balloon.FreePageReporting,
	}, nil
}

// patchBalloon changes the balloon's target, before boot in the
// configuration, after boot in the guest (QMP balloon: QEMU's value is
// the memory the guest keeps, Firecracker's the memory the balloon takes).
func (v *VMM) patchBalloon(ctx context.Context, body []byte) error {
	var req struct {
		AmountMiB *int `json:"amount_mib"`
	}
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.AmountMiB == nil:
		return missing("amount_mib")
	case v.balloon == nil:
		return faultf("The balloon device is not configured.")
	case *req.AmountMiB < 0 || *req.AmountMiB > v.memMiB:
		return faultf("Amount of pages requested is too large: the balloon can take at most the guest's %d MiB.", v.memMiB)
	}
	if v.m != nil {
		if err := v.setBalloonTarget(ctx, *req.AmountMiB); err != nil {
			return faultf("Unable to update the balloon device: %v", err)
		}
	}
	v.balloon.AmountMiB = *req.AmountMiB
	return nil
}

func (v *VMM) setBalloonTarget(ctx context.Context, amountMiB int) error {
	return v.m.Execute(ctx, "balloon", map[string]any{"value": int64(v.memMiB-amountMiB) << 20}, nil)
}

func (v *VMM) patchBalloonStats(ctx context.Context, body []byte) error {
	var req struct {
		StatsInterval *int `json:"stats_polling_interval_s"`
	}
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	switch {
	case req.StatsInterval == nil:
		return missing("stats_polling_interval_s")
	case v.balloon == nil:
		return faultf("The balloon device is not configured.")
	case *req.StatsInterval < 0:
		return faultf("An error occurred when deserializing the json body of a request: invalid value: integer, expected u16.")
	case v.m != nil && (v.balloon.StatsInterval == 0) != (*req.StatsInterval == 0):
		return faultf("Statistics for the balloon device cannot be turned on or off after boot.")
	}
	if v.m != nil {
		if err := v.setBalloonStatsInterval(ctx, *req.StatsInterval); err != nil {
			return faultf("Unable to update the balloon statistics interval: %v", err)
		}
	}
	v.balloon.StatsInterval = *req.StatsInterval
	return nil
}

func (v *VMM) setBalloonStatsInterval(ctx context.Context, seconds int) error {
	return v.m.Execute(ctx, "qom-set", map[string]any{
		"path": "/machine/peripheral/" + balloonID, "property": "guest-stats-polling-interval", "value": seconds,
	}, nil)
}

// balloonStatNames maps QEMU's guest-stats to Firecracker's BalloonStats.
var balloonStatNames = map[string]string{
	"stat-swap-in": "swap_in", "stat-swap-out": "swap_out",
	"stat-major-faults": "major_faults", "stat-minor-faults": "minor_faults",
	"stat-free-memory": "free_memory", "stat-total-memory": "total_memory",
	"stat-available-memory": "available_memory", "stat-disk-caches": "disk_caches",
	"stat-htlb-pgalloc": "hugetlb_allocations", "stat-htlb-pgfail": "hugetlb_failures",
}

func (v *VMM) getBalloonStats(ctx context.Context) (any, error) {
	switch {
	case v.balloon == nil:
		return nil, faultf("The balloon device is not configured.")
	case v.balloon.StatsInterval == 0:
		return nil, faultf("The balloon device statistics were not enabled when the device was configured.")
	case v.m == nil:
		return nil, faultf(msgNotBeforeBoot)
	}
	var bal struct {
		Actual int64 `json:"actual"`
	}
	if err := v.m.Execute(ctx, "query-balloon", nil, &bal); err != nil {
		return nil, faultf("Unable to read the balloon statistics: %v", err)
	}
	var gs struct {
		Stats map[string]uint64 `json:"stats"`
	}
	if err := v.m.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + balloonID, "property": "guest-stats"}, &gs); err != nil {
		return nil, faultf("Unable to read the balloon statistics: %v", err)
	}
	const page = 4096
	actualMiB := v.memMiB - int(bal.Actual>>20)
	out := map[string]any{
		"target_pages": v.balloon.AmountMiB << 20 / page, "target_mib": v.balloon.AmountMiB,
		"actual_pages": actualMiB << 20 / page, "actual_mib": actualMiB,
	}
	for q, f := range balloonStatNames {
		if val, ok := gs.Stats[q]; ok && val != math.MaxUint64 {
			out[f] = val
		}
	}
	return out, nil
}

// entropyConfig is the virtio-rng device of PUT /entropy.
type entropyConfig struct {
	MaxBytes int64 `json:"max_bytes,omitempty"`
	PeriodMS int64 `json:"period_ms,omitempty"`
}

type tokenBucketReq struct {
	Size         *int64 `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst"`
	RefillTime   *int64 `json:"refill_time"`
}

// putEntropy adds a virtio-rng device fed from the host's /dev/urandom;
// its bandwidth bucket becomes QEMU's max-bytes per period.
func (v *VMM) putEntropy(body []byte) error {
	var req struct {
		RateLimiter *struct {
			Bandwidth *tokenBucketReq `json:"bandwidth"`
			Ops       json.RawMessage `json:"ops"`
		} `json:"rate_limiter"`
	}
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	e := &entropyConfig{}
	if rl := req.RateLimiter; rl != nil {
		if rawSet(rl.Ops) {
			return faultf("An ops rate limit for the entropy device is not available on %s; limit its bandwidth.", AppName)
		}
		if b := rl.Bandwidth; b != nil {
			switch {
			case b.Size == nil:
				return missing("size")
			case b.RefillTime == nil:
				return missing("refill_time")
			case *b.Size < 0 || *b.RefillTime < 0:
				return faultf("An error occurred when deserializing the json body of a request: invalid value: integer, expected u64.")
			}
			if b.OneTimeBurst != nil && *b.OneTimeBurst > 0 {
				v.logger().Info("entropy rate limiter: one_time_burst is ignored")
			}
			e.MaxBytes, e.PeriodMS = *b.Size, *b.RefillTime
		}
	}
	v.entropy = e
	v.configured = true
	return nil
}

// applyRuntimeDevices sets what QEMU takes only once the machine runs:
// the balloon's target and statistics interval.
func (v *VMM) applyRuntimeDevices(ctx context.Context) error {
	if v.balloon == nil {
		return nil
	}
	if v.balloon.AmountMiB > 0 {
		if err := v.setBalloonTarget(ctx, v.balloon.AmountMiB); err != nil {
			return fmt.Errorf("balloon target: %w", err)
		}
	}
	if v.balloon.StatsInterval > 0 {
		if err := v.setBalloonStatsInterval(ctx, v.balloon.StatsInterval); err != nil {
			return fmt.Errorf("balloon statistics: %w", err)
		}
	}
	return nil
}
