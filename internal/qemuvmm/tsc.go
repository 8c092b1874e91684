package qemuvmm

import (
	"runtime"
	"time"
)

// MeasureTSCkHz measures the host's TSC frequency in kHz over window, or
// returns 0 where there is no TSC. Under TCG the guest's TSC is the host's
// (QEMU reads it with RDTSC), so this is the frequency the guest kernel
// would calibrate. It matters because Linux calibrates the TSC against the
// PIT, and under TCG on a busy host that calibration fails ("tsc: Unable
// to calibrate against PIT"; microvm has no HPET or ACPI PM timer to fall
// back on) and the boot then hangs; tsc_early_khz= on the guest command
// line skips the calibration.
func MeasureTSCkHz(window time.Duration) uint64 {
	if !haveTSC {
		return 0
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0, c0 := tscSample()
	time.Sleep(window)
	t1, c1 := tscSample()
	ns := t1.Sub(t0).Nanoseconds()
	if ns <= 0 || c1 <= c0 {
		return 0
	}
	return uint64(float64(c1-c0) * 1e6 / float64(ns))
}

// tscSample reads the monotonic clock and the TSC together, keeping the
// tightest of a few brackets so that a preemption between the two reads
// does not skew the result.
func tscSample() (time.Time, uint64) {
	var bestT time.Time
	var bestC uint64
	best := time.Duration(1<<63 - 1)
	for i := 0; i < 20; i++ {
		a := time.Now()
		c := rdtsc()
		b := time.Now()
		if d := b.Sub(a); d < best {
			best, bestC = d, c
			bestT = a.Add(d / 2)
		}
		if best < 200*time.Nanosecond {
			break
		}
	}
	return bestT, bestC
}
