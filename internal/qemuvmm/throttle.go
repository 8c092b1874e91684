package qemuvmm

import (
	"encoding/json"
	"fmt"
)

// Firecracker's drive rate limiter is two token buckets (bytes and
// operations), each of size tokens refilled every refill_time ms, with an
// optional one_time_burst; QEMU throttles a drive with a leaky bucket per
// unit: an average rate, and a burst rate allowed for a burst length. A
// bucket maps to average = size*1000/refill_time per second and burst =
// size+one_time_burst per second over one second (never below the
// average): the same sustained rate, and about the same room for a burst.
// A bucket with size or refill_time 0 is off, as in Firecracker.

// Throttle is a drive's QEMU throttling: per second averages and bursts,
// 0 for none.
type Throttle struct {
	BPS, BPSMax, IOPS, IOPSMax int64
}

// Zero reports whether nothing is throttled.
func (t Throttle) Zero() bool { return t == Throttle{} }

type rateLimiterReq struct {
	Bandwidth *tokenBucketReq `json:"bandwidth"`
	Ops       *tokenBucketReq `json:"ops"`
}

// bucket returns a token bucket's average and burst rates per second;
// set is false when the bucket was not given (PATCH keeps the old one).
func (b *tokenBucketReq) rates() (avg, burst int64, err error) {
	switch {
	case b.Size == nil:
		return 0, 0, missing("size")
	case b.RefillTime == nil:
		return 0, 0, missing("refill_time")
	case *b.Size < 0 || *b.RefillTime < 0 || b.OneTimeBurst != nil && *b.OneTimeBurst < 0:
		return 0, 0, faultf("An error occurred when deserializing the json body of a request: invalid value: integer, expected u64.")
	case *b.Size == 0 || *b.RefillTime == 0:
		return 0, 0, nil
	}
	avg = *b.Size * 1000 / *b.RefillTime
	if avg < 1 {
		avg = 1
	}
	burst = *b.Size
	if b.OneTimeBurst != nil {
		burst += *b.OneTimeBurst
	}
	return avg, max(burst, avg), nil
}

// parseRateLimiter applies a rate_limiter body over cur: a bucket given
// replaces that unit's limits, one left out keeps them (a PUT starts from
// none).
func parseRateLimiter(raw json.RawMessage, cur Throttle) (Throttle, error) {
	if !rawSet(raw) {
		return cur, nil
	}
	var rl rateLimiterReq
	if err := decodeStrict(raw, &rl); err != nil {
		return cur, err
	}
	if rl.Bandwidth != nil {
		avg, burst, err := rl.Bandwidth.rates()
		if err != nil {
			return cur, err
		}
		cur.BPS, cur.BPSMax = avg, burst
	}
	if rl.Ops != nil {
		avg, burst, err := rl.Ops.rates()
		if err != nil {
			return cur, err
		}
		cur.IOPS, cur.IOPSMax = avg, burst
	}
	return cur, nil
}

// driveOpts renders t as -drive throttling options ("" for none).
func (t Throttle) driveOpts() string {
	s := ""
	if t.BPS > 0 {
		s += fmt.Sprintf(",throttling.bps-total=%d,throttling.bps-total-max=%d", t.BPS, t.BPSMax)
	}
	if t.IOPS > 0 {
		s += fmt.Sprintf(",throttling.iops-total=%d,throttling.iops-total-max=%d", t.IOPS, t.IOPSMax)
	}
	return s
}

// qmpArgs renders t as block_set_io_throttle's arguments for drive id.
func (t Throttle) qmpArgs(id string) map[string]any {
	args := map[string]any{
		"device": blockNodeID(id),
		"bps":    t.BPS, "bps_rd": 0, "bps_wr": 0,
		"iops": t.IOPS, "iops_rd": 0, "iops_wr": 0,
	}
	if t.BPS > 0 {
		args["bps_max"] = t.BPSMax
	}
	if t.IOPS > 0 {
		args["iops_max"] = t.IOPSMax
	}
	return args
}

// rateLimiterJSON renders t back as Firecracker's rate_limiter, for GET
// /vm/config (nil for none).
func (t Throttle) rateLimiterJSON() any {
	if t.Zero() {
		return nil
	}
	bucket := func(avg, burst int64) any {
		if avg == 0 {
			return nil
		}
		return map[string]any{"size": burst, "refill_time": burst * 1000 / avg}
	}
	return map[string]any{"bandwidth": bucket(t.BPS, t.BPSMax), "ops": bucket(t.IOPS, t.IOPSMax)}
}
