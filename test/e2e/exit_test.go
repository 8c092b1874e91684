package e2e

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/test/harness"
)

// waitGone waits until process pid has exited and returns when.
func waitGone(t *testing.T, pid int, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d did not exit within %s", pid, within)
	return time.Time{}
}

// waitState polls `vm inspect` until the VM is in state and returns how
// long after since that was.
func waitState(t *testing.T, d *harness.Daemon, name, state string, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := d.VM(t, name)
		if string(v.State) == state {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s still %s (%s) %s after the VMM exited; want %s", name, v.State, v.Runtime.LastError, within, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestVMMExitIsSeen: when the guest reboots, or the VMM is SIGKILLed
// from outside, `vm ls` shows the VM stopped (or in error) within 2 s,
// with its tap back in the pool and no rule left, while the stale sweep
// runs only once a minute (the default).
func TestVMMExitIsSeen(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, `stale_sweep_interval = "1m"`)
	d.MustCLI("vm", "create", "bye", "--nat", "--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G")

	check := func(step string, state string) {
		t.Helper()
		v := d.VM(t, "bye")
		if v.Runtime.TapDevice != "" {
			t.Errorf("%s: the VM still holds tap %s", step, v.Runtime.TapDevice)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("%s: leftovers %v", step, lo)
		}
		if rules, _ := d.InNetns("iptables-save"); strings.Contains(rules, "banger:vm=") {
			t.Errorf("%s: rules left:\n%s", step, rules)
		}
		if string(v.State) != state {
			t.Errorf("%s: state %s", step, v.State)
		}
	}

	// The guest reboots: a clean end, the VM is stopped.
	pid := d.VM(t, "bye").PID
	if pid == 0 {
		t.Fatal("no VMM pid")
	}
	d.CLI("exec", "bye", "--", "sh", "-c", "(sleep 1; reboot) >/dev/null 2>&1 &")
	gone := waitGone(t, pid, 2*time.Minute)
	took := waitState(t, d, "bye", "stopped", gone, 10*time.Second)
	t.Logf("guest reboot: stopped %s after the VMM exited", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("guest reboot noticed after %s; want within 2s", took)
	}
	check("after reboot", "stopped")

	// The VMM is killed from outside: the VM is in error, with the reason.
	d.MustCLI("vm", "start", "bye")
	pid = d.VM(t, "bye").PID
	syscall.Kill(pid, syscall.SIGKILL)
	gone = waitGone(t, pid, 30*time.Second)
	took = waitState(t, d, "bye", "error", gone, 10*time.Second)
	t.Logf("VMM SIGKILL: error %s after the VMM exited", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("VMM kill noticed after %s; want within 2s", took)
	}
	if v := d.VM(t, "bye"); !strings.Contains(v.Runtime.LastError, "killed") {
		t.Errorf("last error %q does not say the VMM was killed", v.Runtime.LastError)
	}
	check("after kill", "error")

	// After a daemon restart the VMM is adopted and still watched.
	d.MustCLI("vm", "start", "bye")
	d.Stop()
	d.Start()
	pid = d.VM(t, "bye").PID
	d.CLI("exec", "bye", "--", "sh", "-c", "(sleep 1; poweroff) >/dev/null 2>&1 &")
	gone = waitGone(t, pid, 2*time.Minute)
	took = waitState(t, d, "bye", "stopped", gone, 10*time.Second)
	t.Logf("poweroff of an adopted VM: stopped %s after the VMM exited", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("adopted VM's poweroff noticed after %s; want within 2s", took)
	}
	check("after poweroff of an adopted VM", "stopped")
	d.MustCLI("vm", "rm", "bye")
}
