package daemon

import (
	"os"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/proc"
)

// pid is a running VM's VMM PID as the daemon knows it.
func (e *testEnv) pid(t *testing.T, name string) int {
	t.Helper()
	h, ok := e.d.handles.get(e.vm(t, name).ID)
	if !ok || h.PID == 0 {
		t.Fatalf("vm %s has no VMM pid", name)
	}
	return h.PID
}

// TestStopPressesCtrlAltDel: stop reaches the VMM through its API, the
// guest ends it, nothing is killed, the host is clean.
func TestStopPressesCtrlAltDel(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	p := e.vmms.get(e.pid(t, "dev"))
	var msgs []string
	if _, err := e.d.StopVM(e.ctx, "dev", func(p api.Progress) { msgs = append(msgs, p.Message) }); err != nil {
		t.Fatal(err)
	}
	if p.cads != 1 || p.killed {
		t.Errorf("ctrl-alt-del %d times, killed %v; want once, not killed", p.cads, p.killed)
	}
	if vm := e.vm(t, "dev"); vm.State != model.VMStateStopped || vm.Runtime.LastError != "" {
		t.Errorf("after stop: %s %q", vm.State, vm.Runtime.LastError)
	}
	want(t, "stopped", e.hostState(), hostWith("bgtap1", "bgtap2"))
	if !strings.Contains(strings.Join(msgs, "\n"), "Ctrl-Alt-Del") {
		t.Errorf("progress: %q", msgs)
	}
}

// TestStopKillsAHungGuest: a guest that ignores Ctrl-Alt-Del is killed
// after the stop timeout, and the user is told.
func TestStopKillsAHungGuest(t *testing.T) {
	e := newTestDaemon(t, false)
	e.d.cfg.StopTimeout = 200 * time.Millisecond
	e.vmms.ignoreCAD = true
	e.create(t, "dev", false)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	p := e.vmms.get(e.pid(t, "dev"))
	var warned bool
	if _, err := e.d.StopVM(e.ctx, "dev", func(p api.Progress) { warned = warned || p.Warning }); err != nil {
		t.Fatal(err)
	}
	if p.cads != 1 || !p.killed || !warned {
		t.Errorf("ctrl-alt-del %d, killed %v, warned %v; want 1, true, true", p.cads, p.killed, warned)
	}
	if vm := e.vm(t, "dev"); vm.State != model.VMStateStopped {
		t.Errorf("after stop: %s", vm.State)
	}
}

// TestKillSkipsCtrlAltDel: kill sends SIGKILL at once.
func TestKillSkipsCtrlAltDel(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	p := e.vmms.get(e.pid(t, "dev"))
	if _, err := e.d.KillVM(e.ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if p.cads != 0 || !p.killed {
		t.Errorf("ctrl-alt-del %d, killed %v; want 0, true", p.cads, p.killed)
	}
}

// waitVMState waits for the watcher to move a VM to state.
func waitVMState(t *testing.T, e *testEnv, name string, state model.VMState) model.VMRecord {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		vm := e.vm(t, name)
		if vm.State == state {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s is %s (%q); want %s", name, vm.State, vm.Runtime.LastError, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatcherSeesAVMMExit: a VMM that ends on its own is noticed at
// once: after a guest reboot (the console says so) the VM is stopped,
// after a crash it is in error; the runtime is cleaned up either way.
func TestWatcherSeesAVMMExit(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	os.WriteFile(vm.Runtime.LogPath, []byte("[   12.3] reboot: Restarting system\n"), 0o600)
	e.vmms.exit(e.pid(t, "dev"))
	waitVMState(t, e, "dev", model.VMStateStopped)
	want(t, "after reboot", e.hostState(), hostWith("bgtap1", "bgtap2"))

	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(vm.Runtime.LogPath, []byte("guest output\n"), 0o600)
	e.vmms.exit(e.pid(t, "dev"))
	vm = waitVMState(t, e, "dev", model.VMStateError)
	if !strings.Contains(vm.Runtime.LastError, "VMM exited") || vm.Runtime.TapDevice != "" {
		t.Errorf("after a crash: %q tap %q", vm.Runtime.LastError, vm.Runtime.TapDevice)
	}
	// The pool keeps two idle taps; the crashed VM's went back.
	if free, used := e.d.net.Pool(); len(used) != 0 || len(free) != 2 {
		t.Errorf("pool after a crash: free %v, in use %v", free, used)
	}
	if strings.Contains(e.hostState(), "rule ") {
		t.Errorf("rules left:\n%s", e.hostState())
	}
}

// TestVMMCopycatsAreNotTheVMM: a process that copies the VMM's command
// line but runs as another user or another binary is not taken for the
// VMM; a second process that fits as well makes the VM ambiguous, and
// then nothing of it is touched (not declared dead, not stopped).
func TestVMMCopycatsAreNotTheVMM(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	real := e.pid(t, "dev")
	argv := []string{"/bin/true", "--api-sock", vm.Runtime.APISockPath}
	// A user's process with the VMM's argv, and one as the VM's uid but
	// another binary.
	proc.WriteFake(e.vmms.root, proc.Process{PID: 50001, PPID: 1, UID: 1000, Argv: argv}, "/bin/true")
	proc.WriteFake(e.vmms.root, proc.Process{PID: 50002, PPID: 1, UID: vm.Runtime.VMMUID, Argv: argv}, "/usr/bin/python3")
	if m := e.d.findVMM(vm, 0, nil); m.PID != real || m.Ambiguous {
		t.Fatalf("findVMM = %+v; want the real VMM %d", m, real)
	}
	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if got := e.vm(t, "dev"); got.State != model.VMStateRunning || got.Runtime.TapDevice == "" {
		t.Errorf("copycats made the VM look dead: %s tap %q", got.State, got.Runtime.TapDevice)
	}
	// A copycat that fits in every way: ambiguous, left alone.
	proc.WriteFake(e.vmms.root, proc.Process{PID: 50003, PPID: 1, UID: vm.Runtime.VMMUID, Argv: argv}, "/bin/true")
	if m := e.d.findVMM(vm, 0, nil); !m.Ambiguous {
		t.Fatalf("findVMM = %+v; want ambiguous", m)
	}
	// Without a remembered PID (the daemon restarted and lost its
	// handles), the two cannot be told apart.
	e.d.clearVMHandles(vm.ID, vm.Runtime.VMDir)
	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if got := e.vm(t, "dev"); got.State != model.VMStateRunning || got.Runtime.TapDevice == "" {
		t.Errorf("an ambiguous VM was touched: %s tap %q", got.State, got.Runtime.TapDevice)
	}
	_, err := e.d.StopVM(e.ctx, "dev", api.NoProgress)
	if model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("stop of an ambiguous VM: %v", err)
	}
	os.RemoveAll(e.vmms.root + "/50003")
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if p := e.vmms.get(real); p.cads != 1 {
		t.Errorf("the real VMM got %d Ctrl-Alt-Del", p.cads)
	}
}
