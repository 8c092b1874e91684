package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/daemon"
	"banger/test/harness"
)

// TestFaultMatrix crashes the daemon (SIGKILL, from inside, at the named
// step) during every step of start, stop, kill, rm, suspend, resume and
// the stop of a suspended VM, restarts it, and checks that nothing is
// left that no row explains and that every row's state matches the host
// (a suspended VM must resume from its saved state). It prints the table
// of steps and outcomes. Rows can be picked with -run, e.g.
// 'TestFaultMatrix/(suspend|resume|discard):'.
func TestFaultMatrix(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	const vm = "crashy"
	create := func() {
		d.MustCLI("vm", "create", "--no-start", vm, "--nat", "--vcpus", "1", "--memory", "384M", "--disk-size", "1G", "--overlay-size", "2G")
	}
	create()

	var results []faultOutcome
	for _, step := range daemon.FaultMatrix() {
		// One subtest per crash point, so -run can pick rows
		// (TestFaultMatrix/resume: ...); each brings the VM to the
		// state its operation needs.
		t.Run(step.CrashAt, func(t *testing.T) {
			o := runFaultCell(t, d, vm, create, step)
			results = append(results, o)
			if !o.ok {
				t.Errorf("%s crashed at %s: after restart %s: %s", step.Op, step.CrashAt, o.after, o.detail)
			}
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\nfault matrix (generated from the daemon's step lists): daemon SIGKILLed at each step, then restarted\n")
	fmt.Fprintf(&b, "%-11s %-28s %-18s %-9s %s\n", "OP", "CRASH AT", "VM AFTER", "LEFTOVERS", "RESULT")
	for _, o := range results {
		res := "ok"
		if !o.ok {
			res = "FAIL " + o.detail
		}
		fmt.Fprintf(&b, "%-11s %-28s %-18s %-9d %s\n", o.step.Op, o.step.CrashAt, o.after, len(o.left), res)
	}
	t.Log(b.String())
	if out := os.Getenv("BANGER_FAULT_TABLE"); out != "" {
		os.WriteFile(out, []byte(b.String()), 0o644)
	}
}

// faultOutcome is one row of the fault matrix.
type faultOutcome struct {
	step   daemon.FaultCell
	after  string
	left   []string
	ok     bool
	detail string
}

// runFaultCell brings the VM to the state step's operation needs, has
// the daemon crash at step.CrashAt during it, restarts the daemon and
// checks what is left: nothing unexplained, no VM lost, a VM shown
// running runs, a VM shown suspended resumes from its saved state.
func runFaultCell(t *testing.T, d *harness.Daemon, vm string, create func(), step daemon.FaultCell) faultOutcome {
	v, exists := tryVM(d, vm)
	if !exists {
		create()
		v, _ = tryVM(d, vm)
	}
	switch {
	case step.NeedsSuspended:
		if v.State != "running" && v.State != "suspended" {
			d.MustCLI("vm", "start", vm)
		}
		if v, _ = tryVM(d, vm); v.State == "running" {
			d.MustCLI("vm", "suspend", vm)
		}
	case step.NeedsRunning:
		if v.State != "running" {
			d.MustCLI("vm", "start", vm)
		}
	case v.State == "running" || v.State == "suspended":
		d.MustCLI("vm", "stop", vm)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Fatalf("before %s/%s: leftovers %v", step.Op, step.CrashAt, lo)
	}

	if step.Op == "warm-create" && !strings.Contains(d.MustCLI("image", "inspect", "base").Stdout, "warm state:  valid") {
		d.MustCLI(warmArgs...)
	}

	// Restart the daemon armed with the crash point and run the op.
	d.Stop()
	d.SetEnv("BANGER_CRASH_AT=" + step.CrashAt)
	d.Start()
	var args []string
	switch step.Op {
	case "rm":
		args = []string{"vm", "rm", "--force", vm}
	case "warm":
		args = warmArgs
	case "warm-create":
		args = []string{"vm", "create", vm + "-w", "--vcpus", "1", "--memory", "384M"}
	default:
		args = []string{"vm", step.Op, vm}
	}
	r := d.CLI(args...)
	select {
	case <-d.Exited():
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s at %s: the daemon did not crash: %s", step.Op, step.CrashAt, r)
	}
	d.Crash() // reap
	d.SetEnv()
	d.Start()

	o := faultOutcome{step: step}
	v, exists = tryVM(d, vm)
	if exists {
		o.after = v.State
	} else {
		o.after = "(removed)"
	}
	o.left = d.Leftovers(t, 2)
	o.ok = len(o.left) == 0
	// A VM shown running must really run; one being removed may be
	// gone; any other must still exist (no lost VM); a suspended one
	// must resume from its saved state.
	switch {
	case !exists && step.Op != "rm":
		o.ok = false
		o.detail = "VM lost"
	case exists && v.State == "running":
		if r := d.CLI("exec", vm, "--", "true"); r.Code != 0 {
			// A crash after Ctrl-Alt-Del leaves a guest on its way
			// down: the restarted daemon adopts its VMM and must see
			// it exit. The VM may not stay shown running.
			deadline := time.Now().Add(90 * time.Second)
			for time.Now().Before(deadline) {
				if v, _ = tryVM(d, vm); v.State != "running" {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if v.State == "running" {
				o.ok = false
				o.detail = "shown running but exec fails: " + r.Stderr
			} else {
				o.after = "running→" + v.State
				o.left = d.Leftovers(t, 2)
				o.ok = len(o.left) == 0
			}
		}
	case exists && v.State == "suspended" && o.ok:
		// The saved state left is whole: the VM resumes from it, not
		// from its disks.
		r := d.CLI("vm", "start", vm)
		got := d.VM(t, vm)
		if r.Code != 0 || got.State != "running" || got.Runtime.LastError != "" {
			o.ok = false
			o.detail = fmt.Sprintf("the suspended VM did not resume from its saved state: %s (%s %q)", strings.TrimSpace(r.Stderr), got.State, got.Runtime.LastError)
		} else {
			o.after = "suspended→resumed"
		}
	}
	if step.Op == "fork" {
		// A child is whole or not at all: the crash came before any
		// child was its own machine.
		if _, ok := tryVM(d, vm+"-1"); ok {
			o.ok = false
			o.detail = "a half-made child survived the restart"
			d.CLI("vm", "rm", "--force", vm+"-1")
		}
	}
	if step.Op == "warm" || step.Op == "warm-create" {
		// The image's warm state is whole (the old one or the new) or
		// none, never shown invalid; no half-made VM is left.
		if strings.Contains(d.MustCLI("image", "inspect", "base").Stdout, "INVALID") {
			o.ok = false
			o.detail = "the image's warm state is invalid after the restart"
		}
		if _, ok := tryVM(d, vm+"-w"); ok {
			o.ok = false
			o.detail = "a half-made VM survived the restart"
			d.CLI("vm", "rm", "--force", vm+"-w")
		}
	}
	if o.detail == "" && !o.ok {
		o.detail = strings.Join(o.left, "; ")
	}
	return o
}

// warmArgs warm the image "base" as the fault matrix's warm cells need
// it.
var warmArgs = []string{"image", "warm", "base", "--vcpus", "1", "--memory", "384M"}

func tryVM(d *harness.Daemon, name string) (v vmState, ok bool) {
	r := d.CLI("vm", "inspect", name, "--json")
	if r.Code != 0 {
		return vmState{}, false
	}
	if strings.Contains(r.Stdout, `"state": "running"`) {
		return vmState{State: "running"}, true
	}
	for _, s := range []string{"created", "stopped", "error", "suspended"} {
		if strings.Contains(r.Stdout, `"state": "`+s+`"`) {
			return vmState{State: s}, true
		}
	}
	return vmState{State: "?"}, true
}

type vmState struct{ State string }

// TestSweepNoticesDeadVMM kills a VMM from outside and times how long the
// stale sweep takes to clean it up.
func TestSweepNoticesDeadVMM(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, `stale_sweep_interval = "3s"`)
	// The VMM watcher would see the exit first; this test is about the
	// sweep, the safety net behind it.
	d.Stop()
	d.SetEnv(daemon.EnvNoWatch + "=1")
	d.Start()
	d.MustCLI("vm", "create", "victim", "--nat", "--vcpus", "1", "--memory", "384M")
	v := d.VM(t, "victim")
	pid := v.PID
	if pid == 0 {
		t.Fatalf("no pid in inspect: %+v", v)
	}
	killed := time.Now()
	if err := syscallKill(pid); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 30*time.Second, "the sweep to mark the VM stopped", func() bool {
		return d.VM(t, "victim").State == "stopped"
	})
	took := time.Since(killed)
	t.Logf("VMM death to sweep cleanup: %s (sweep interval 3s)", took.Round(10*time.Millisecond))
	if out := os.Getenv("BANGER_SWEEP_TIME"); out != "" {
		os.WriteFile(out, []byte(took.String()), 0o644)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after the sweep: %v", lo)
	}
	if v := d.VM(t, "victim"); !strings.Contains(v.Runtime.LastError, "VMM exited") {
		t.Errorf("last error %q", v.Runtime.LastError)
	}
	// It starts again with its disks.
	d.MustCLI("vm", "start", "victim")
}

// TestHandlesJSONLossIsTolerated corrupts, then removes, a running VM's
// handles.json, restarts the daemon each time, and checks the VM is
// adopted and still reachable.
func TestHandlesJSONLossIsTolerated(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	d.MustCLI("vm", "create", "sturdy", "--nat", "--vcpus", "1", "--memory", "384M")
	v := d.VM(t, "sturdy")
	hj := filepath.Join(v.Runtime.VMDir, "handles.json")
	for _, damage := range []string{"corrupt", "remove"} {
		d.Stop()
		if damage == "corrupt" {
			os.WriteFile(hj, []byte("{not json"), 0o600)
		} else {
			os.Remove(hj)
		}
		d.Start()
		if got := d.VM(t, "sturdy"); got.State != "running" || got.Runtime.TapDevice != v.Runtime.TapDevice {
			t.Errorf("%s handles.json: state %s tap %q", damage, got.State, got.Runtime.TapDevice)
		}
		if r := d.CLI("exec", "sturdy", "--", "true"); r.Code != 0 {
			t.Errorf("%s handles.json: exec: %s", damage, r)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("%s handles.json: leftovers %v", damage, lo)
		}
		if _, err := os.Stat(hj); err != nil {
			t.Errorf("%s handles.json: not rewritten on adoption: %v", damage, err)
		}
	}
	// The adopted VM stops cleanly, NAT rules and tap included.
	d.MustCLI("vm", "stop", "sturdy")
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after stop: %v", lo)
	}
}
