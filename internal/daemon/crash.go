package daemon

import (
	"os"
	"syscall"
)

// EnvCrashAt names a step at which the daemon kills itself with SIGKILL,
// for the fault-injection tests: "start:tap-acquired", "stop:vmm-exited",
// and so on (see the crashPoint calls). It is read at every step, so a
// test sets it when starting the daemon. It has no other use.
const EnvCrashAt = "BANGER_CRASH_AT"

// EnvNoWatch, when set to 1, turns off the watching of VMMs (watch.go), so
// a test can show the stale sweep catching a VMM's exit on its own. It
// has no other use.
const EnvNoWatch = "BANGER_NO_WATCH"

// crashPoint dies here when the test asked for it.
func (d *Daemon) crashPoint(step string) {
	if d.onCrashPoint != nil {
		d.onCrashPoint(step)
	}
	if d.crashAt == "" || d.crashAt != step {
		return
	}
	d.logger.Warn("crashing on purpose", "step", step)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
