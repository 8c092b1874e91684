package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// progressLog records a lifecycle's progress messages.
type progressLog struct {
	mu   sync.Mutex
	msgs []api.Progress
}

func (p *progressLog) add(pr api.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, pr)
}

func (p *progressLog) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, m := range p.msgs {
		if m.Warning {
			b.WriteString("warning: ")
		}
		b.WriteString(m.Step + ": " + m.Message + "\n")
	}
	return b.String()
}

func (e *testEnv) start(t *testing.T, name string) {
	t.Helper()
	if _, err := e.d.StartVM(e.ctx, name, api.NoProgress); err != nil {
		t.Fatal(err)
	}
}

func (e *testEnv) suspend(t *testing.T, name string) model.VMRecord {
	t.Helper()
	if _, err := e.d.SuspendVM(e.ctx, name, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	return e.vm(t, name)
}

// TestSuspendResumeOnTheFakeHost: a suspend pauses the guest, has the
// VMM write its state, ends the VMM and frees the tap and rules as a
// stop does, keeping the saved state where only root reaches it; a start
// restores it into a new VMM on a new tap, drops the saved state and
// lets the guest run; the host ends up as after a start.
func TestSuspendResumeOnTheFakeHost(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	before := e.vm(t, "dev")
	oldPID := e.pid(t, "dev")
	running := e.hostState()

	var prog progressLog
	if _, err := e.d.SuspendVM(e.ctx, "dev", prog.add); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateSuspended || vm.Runtime.SuspendedAt.IsZero() || vm.Runtime.SavedStateBytes <= 0 || vm.Runtime.TapDevice != "" || vm.Runtime.LastError != "" {
		t.Fatalf("after suspend: state %s at %s bytes %d tap %q err %q", vm.State, vm.Runtime.SuspendedAt, vm.Runtime.SavedStateBytes, vm.Runtime.TapDevice, vm.Runtime.LastError)
	}
	// The old VMM wrote one snapshot while paused and is gone.
	if got := e.vmms.snapOf(oldPID); got.took != 1 || !got.paused {
		t.Errorf("old vmm: %+v; want one snapshot taken while paused", got)
	}
	if p, _ := e.d.openProc(oldPID); p != nil {
		t.Error("the VMM of a suspended VM still runs")
	}
	// Tap, rules and filter are released as for a stop; the IP stays.
	want(t, "suspended", e.hostState(), hostWith("bgtap1", "bgtap2"))
	if vm.Runtime.GuestIP != before.Runtime.GuestIP {
		t.Errorf("guest ip %s; want %s kept", vm.Runtime.GuestIP, before.Runtime.GuestIP)
	}
	// The saved state: only root enters its directory; the VMM's
	// snapshot files are no longer in the VMM's own directory.
	info := readSavedState(vm.Runtime.VMDir)
	if !info.Complete || info.Partial || info.Bytes != vm.Runtime.SavedStateBytes {
		t.Errorf("saved state %+v; row says %d bytes", info, vm.Runtime.SavedStateBytes)
	}
	if fi, err := os.Stat(savedDir(vm.Runtime.VMDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("saved dir: %v %v", fi, err)
	}
	if !strings.Contains(prog.String(), "suspended: in ") || !strings.Contains(prog.String(), "saved state") {
		t.Errorf("progress:\n%s", prog.String())
	}
	// The view tells what the idle policy does and the stats the size.
	if v, _ := e.d.GetVM(e.ctx, "dev"); v.IdleAction != model.IdleSuspend || v.PID != 0 || v.AutoStopAt != nil {
		t.Errorf("view: idle %q pid %d auto-stop %v", v.IdleAction, v.PID, v.AutoStopAt)
	}
	if st, _ := e.d.VMStats(e.ctx, "dev"); st.SavedStateBytes != vm.Runtime.SavedStateBytes {
		t.Errorf("stats saved bytes %d", st.SavedStateBytes)
	}
	// A second suspend is refused.
	if _, err := e.d.SuspendVM(e.ctx, "dev", api.NoProgress); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("suspend of a suspended vm: %v", err)
	}

	prog = progressLog{}
	if _, err := e.d.StartVM(e.ctx, "dev", prog.add); err != nil {
		t.Fatal(err)
	}
	vm = e.vm(t, "dev")
	newPID := e.pid(t, "dev")
	if vm.State != model.VMStateRunning || vm.Runtime.LastError != "" || !vm.Runtime.SuspendedAt.IsZero() || vm.Runtime.SavedStateBytes != 0 {
		t.Fatalf("after resume: %s err %q at %s bytes %d", vm.State, vm.Runtime.LastError, vm.Runtime.SuspendedAt, vm.Runtime.SavedStateBytes)
	}
	snap := e.vmms.snapOf(newPID)
	if snap.loaded != "pid="+strconv.Itoa(oldPID)+" n=1" || snap.paused || snap.tap != vm.Runtime.TapDevice || snap.tap == "" {
		t.Errorf("new vmm %+v; want the old one's snapshot loaded, running, on tap %s", snap, vm.Runtime.TapDevice)
	}
	if vm.Runtime.SSHHostKey != before.Runtime.SSHHostKey {
		t.Error("the host key changed across suspend and resume")
	}
	e.d.drops.Wait() // the dropped state is removed in the background
	if info := readSavedState(vm.Runtime.VMDir); info.Complete || info.Partial {
		t.Errorf("saved state left after resume: %+v", info)
	}
	if !strings.Contains(prog.String(), "resume: restoring the state saved") || !strings.Contains(prog.String(), "resumed") || strings.Contains(prog.String(), "warning") {
		t.Errorf("progress:\n%s", prog.String())
	}
	// The host is as after a start (another tap from the pool).
	if got, w := anyTaps(e.hostState(), vm.Runtime.TapDevice), anyTaps(running, before.Runtime.TapDevice); got != w {
		t.Errorf("host after resume:\n%s\nwant as after the start:\n%s", got, w)
	}

	// It stops and is removed like any running VM.
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	want(t, "stopped", anyTaps(e.hostState(), ""), anyTaps(hostWith("bgtap1", "bgtap2"), ""))
}

// anyTaps makes a host state independent of which taps the pool handed
// out: the VM's tap is TAP, the pool's are bgtapN, lines sorted.
func anyTaps(state, vmTap string) string {
	if vmTap != "" {
		state = strings.ReplaceAll(state, vmTap+" ", "TAP ")
		state = strings.ReplaceAll(state, vmTap+":", "TAP:")
		state = strings.ReplaceAll(state, "="+vmTap+" ", "=TAP ")
	}
	state = regexp.MustCompile(`bgtap[0-9]+`).ReplaceAllString(state, "bgtapN")
	lines := strings.Split(strings.TrimSpace(state), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStopKillRmOfASuspendedVM: stop drops the saved state and says so;
// kill too; rm needs --force and leaves nothing.
func TestStopKillRmOfASuspendedVM(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	e.suspend(t, "dev")
	var prog progressLog
	if _, err := e.d.StopVM(e.ctx, "dev", prog.add); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateStopped || vm.Runtime.SavedStateBytes != 0 || !vm.Runtime.SuspendedAt.IsZero() {
		t.Errorf("after stop: %s bytes %d at %s", vm.State, vm.Runtime.SavedStateBytes, vm.Runtime.SuspendedAt)
	}
	if info := readSavedState(vm.Runtime.VMDir); info.Complete || info.Partial {
		t.Errorf("saved state left after stop: %+v", info)
	}
	if !strings.Contains(prog.String(), "dropped the saved state") {
		t.Errorf("stop does not say the saved state went:\n%s", prog.String())
	}
	for _, p := range []string{vm.Runtime.SystemOverlay, vm.Runtime.WorkDiskPath} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("disk gone after stop of a suspended vm: %v", err)
		}
	}
	want(t, "stopped", e.hostState(), hostWith("bgtap1", "bgtap2"))
	// The next start is a boot.
	e.start(t, "dev")
	if got := e.vmms.snapOf(e.pid(t, "dev")); got.loaded != "" {
		t.Errorf("start after the saved state was dropped loaded %q", got.loaded)
	}

	e.suspend(t, "dev")
	if _, err := e.d.KillVM(e.ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if vm := e.vm(t, "dev"); vm.State != model.VMStateStopped || readSavedState(vm.Runtime.VMDir).Complete {
		t.Errorf("after kill: %s saved %+v", vm.State, readSavedState(vm.Runtime.VMDir))
	}

	e.start(t, "dev")
	e.suspend(t, "dev")
	err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{}, api.NoProgress)
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "suspended") {
		t.Fatalf("rm of a suspended vm without force: %v", err)
	}
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.Runtime.VMDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vm dir left after rm: %v", err)
	}
	want(t, "removed", e.hostState(), hostWith("bgtap1", "bgtap2"))
}

// TestResumeFallsBackToABoot: a saved state the VMM refuses to load is
// dropped and the VM boots from its disks; the reason is in LastError and
// in the progress, as a warning.
func TestResumeFallsBackToABoot(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	e.suspend(t, "dev")
	e.vmms.mu.Lock()
	e.vmms.failLoad = "the memory file is partial"
	e.vmms.mu.Unlock()
	var prog progressLog
	if _, err := e.d.StartVM(e.ctx, "dev", prog.add); err != nil {
		t.Fatal(err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateRunning || !strings.Contains(vm.Runtime.LastError, "resume failed") || !strings.Contains(vm.Runtime.LastError, "the memory file is partial") || !strings.Contains(vm.Runtime.LastError, "booted from its disks") {
		t.Errorf("after a failed restore: %s %q", vm.State, vm.Runtime.LastError)
	}
	if !strings.Contains(prog.String(), "warning: resume: restoring the saved state failed") || !strings.Contains(prog.String(), "ready: SSH answered") {
		t.Errorf("progress:\n%s", prog.String())
	}
	if got := e.vmms.snapOf(e.pid(t, "dev")); got.loaded != "" {
		t.Errorf("the fallback loaded %q; want a boot", got.loaded)
	}
	if info := readSavedState(vm.Runtime.VMDir); info.Complete || info.Partial {
		t.Errorf("saved state left: %+v", info)
	}
	// The guest that answered after the restore but never ran again
	// (SSH silent) also boots from its disks.
	e.vmms.mu.Lock()
	e.vmms.failLoad = ""
	e.vmms.mu.Unlock()
	e.suspend(t, "dev")
	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("no SSH answer"), failAt: "clock"}
	if _, err := e.d.StartVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if vm := e.vm(t, "dev"); vm.State != model.VMStateRunning || !strings.Contains(vm.Runtime.LastError, "no SSH answer") {
		t.Errorf("after a silent restored guest: %s %q", vm.State, vm.Runtime.LastError)
	}
	e.d.boot = fakeBooter{vmms: e.vmms}
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	want(t, "stopped", anyTaps(e.hostState(), ""), anyTaps(hostWith("bgtap1", "bgtap2"), ""))
}

// TestResumeThatCannotLaunchStaysSuspended: a failure of the host (here
// the VMM launch) keeps the saved state: the VM stays suspended and
// resumes once the cause is gone.
func TestResumeThatCannotLaunchStaysSuspended(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	e.suspend(t, "dev")
	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("fork failed")}
	_, err := e.d.StartVM(e.ctx, "dev", api.NoProgress)
	if err == nil || !strings.Contains(err.Error(), "still suspended") {
		t.Fatalf("resume that cannot launch: %v", err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateSuspended || !strings.Contains(vm.Runtime.LastError, "fork failed") || !readSavedState(vm.Runtime.VMDir).Complete || vm.Runtime.TapDevice != "" {
		t.Errorf("after: %s %q saved %+v tap %q", vm.State, vm.Runtime.LastError, readSavedState(vm.Runtime.VMDir), vm.Runtime.TapDevice)
	}
	want(t, "still suspended", e.hostState(), hostWith("bgtap1", "bgtap2"))
	e.d.boot = fakeBooter{vmms: e.vmms}
	e.start(t, "dev")
	if got := e.vmms.snapOf(e.pid(t, "dev")); got.loaded == "" {
		t.Error("the second try booted instead of restoring")
	}
}

// TestFailedSuspendKeepsTheVMRunning: a VMM that cannot write its
// snapshot leaves the VM running, its vCPUs resumed, nothing left in
// its directory; a VMM that cannot snapshot at all is refused before
// anything happens.
func TestFailedSuspendKeepsTheVMRunning(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	pid := e.pid(t, "dev")
	running := e.hostState()
	e.vmms.mu.Lock()
	e.vmms.failSnapshot = "No space left on device"
	e.vmms.mu.Unlock()
	_, err := e.d.SuspendVM(e.ctx, "dev", api.NoProgress)
	if err == nil || !strings.Contains(err.Error(), "No space left") || !strings.Contains(err.Error(), "keeps running") {
		t.Fatalf("suspend error %v", err)
	}
	vm := e.vm(t, "dev")
	if vm.State != model.VMStateRunning || e.pid(t, "dev") != pid || e.vmms.snapOf(pid).paused {
		t.Errorf("after a failed suspend: %s pid %d paused %v", vm.State, e.pid(t, "dev"), e.vmms.snapOf(pid).paused)
	}
	if info := readSavedState(vm.Runtime.VMDir); info.Complete || info.Partial {
		t.Errorf("saved state after a failed suspend: %+v", info)
	}
	want(t, "still running", e.hostState(), running)

	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("not this VMM"), failAt: "snapshots"}
	if _, err := e.d.SuspendVM(e.ctx, "dev", api.NoProgress); model.ErrorCode(err) != model.EUNAVAILABLE {
		t.Errorf("suspend without snapshots: %v", err)
	}
	if v, _ := e.d.GetVM(e.ctx, "dev"); v.IdleAction != model.IdleStop {
		t.Errorf("idle action without snapshots %q; want stop", v.IdleAction)
	}
}

// TestSetAndResetOfASuspendedVM: what the saved state holds cannot
// change (vCPUs, memory, disk size, the system disk) and the refusal says
// what to do; NAT, egress, the idle action and auto-stop can.
func TestSetAndResetOfASuspendedVM(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	e.start(t, "dev")
	e.suspend(t, "dev")
	two, mem, disk := 2, 512, int64(128<<20)
	for _, req := range []model.VMSetRequest{
		{IDOrName: "dev", VCPUCount: &two},
		{IDOrName: "dev", MemoryMiB: &mem},
		{IDOrName: "dev", WorkDiskSizeBytes: &disk},
	} {
		_, err := e.d.SetVM(e.ctx, req)
		if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "suspended") || !strings.Contains(err.Error(), "banger vm stop dev") {
			t.Errorf("set %+v: %v", req, err)
		}
	}
	_, err := e.d.ResetSystem(e.ctx, "dev")
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "banger vm stop dev") {
		t.Errorf("reset-system: %v", err)
	}
	on, stop := true, model.IdleStop
	v, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "dev", NATEnabled: &on, IdleAction: &stop})
	if err != nil || !v.Spec.NATEnabled || v.Spec.IdleAction != model.IdleStop || v.IdleAction != model.IdleStop || v.State != model.VMStateSuspended {
		t.Errorf("set nat and idle on a suspended vm: %+v %v", v.Spec, err)
	}
	bad := "hibernate"
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "dev", IdleAction: &bad}); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("idle hibernate: %v", err)
	}
	def := model.IdleDefault
	if v, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "dev", IdleAction: &def}); err != nil || v.Spec.IdleAction != "" || v.IdleAction != model.IdleSuspend {
		t.Errorf("idle default: %+v %v", v.Spec, err)
	}
	// The NAT set while suspended is there once it runs.
	e.start(t, "dev")
	if !strings.Contains(e.hostState(), "MASQUERADE") {
		t.Errorf("nat turned on while suspended is not applied at resume:\n%s", e.hostState())
	}
	if _, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "bad", ImageName: "base", IdleAction: "pause", NoStart: true}, api.NoProgress); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("create with idle pause: %v", err)
	}
}

// TestIdlePolicy: an idle VM is suspended by default, stopped when its
// idle action (or the daemon's auto_stop_mode) says stop, and stopped
// when the VMM cannot snapshot.
func TestIdlePolicy(t *testing.T) {
	e := newTestDaemon(t, false)
	idle := func(name string) model.VMRecord {
		t.Helper()
		vm := e.vm(t, name)
		one := int64(60)
		vm.Spec.AutoStopAfterSeconds = &one
		vm.LastTouchedAt = time.Now().Add(-time.Hour).UTC()
		vm.Runtime.StartedAt = vm.LastTouchedAt
		if err := e.d.store.UpdateVM(e.ctx, vm); err != nil {
			t.Fatal(err)
		}
		// The poller skips a VM whose lock is held (a watcher finishing
		// after the previous stop): it tries again at its next poll.
		for range 50 {
			e.d.maybeAutoStop(e.ctx, e.vm(t, name))
			if e.vm(t, name).State != model.VMStateRunning {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return e.vm(t, name)
	}
	e.create(t, "a", false)
	e.start(t, "a")
	if vm := idle("a"); vm.State != model.VMStateSuspended {
		t.Errorf("idle vm with the default policy: %s", vm.State)
	}
	// A suspended VM is not touched by the poller again.
	if vm := idle("a"); vm.State != model.VMStateSuspended {
		t.Errorf("idle suspended vm: %s", vm.State)
	}
	e.start(t, "a")
	stop := model.IdleStop
	if _, err := e.d.SetVM(e.ctx, model.VMSetRequest{IDOrName: "a", IdleAction: &stop}); err != nil {
		t.Fatal(err)
	}
	if vm := idle("a"); vm.State != model.VMStateStopped {
		t.Errorf("idle vm with idle stop: %s", vm.State)
	}
	e.d.cfg.AutoStopMode = model.IdleStop
	e.create(t, "b", false)
	e.start(t, "b")
	if vm := idle("b"); vm.State != model.VMStateStopped {
		t.Errorf("idle vm with auto_stop_mode stop: %s", vm.State)
	}
	e.d.cfg.AutoStopMode = ""
	e.start(t, "b")
	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("no snapshots"), failAt: "snapshots"}
	if vm := idle("b"); vm.State != model.VMStateStopped {
		t.Errorf("idle vm on a VMM without snapshots: %s", vm.State)
	}
	// A suspend that fails leaves no idle VM holding its VMM.
	e.d.boot = fakeBooter{vmms: e.vmms}
	e.start(t, "b")
	e.vmms.mu.Lock()
	e.vmms.failSnapshot = "disk full"
	e.vmms.mu.Unlock()
	if vm := idle("b"); vm.State != model.VMStateStopped {
		t.Errorf("idle vm whose suspend failed: %s", vm.State)
	}
}

// TestReconcileKnowsSavedStates: a row left running with a saved state
// (a suspend cut short after the state was kept) becomes suspended; a
// suspended row whose saved state is gone is stopped; a saved state of a
// stopped VM and the leftovers of a cut-short move go; a saved state with
// no row goes with its dir.
func TestReconcileKnowsSavedStates(t *testing.T) {
	e := newTestDaemon(t, false)
	e.d.noWatch = true
	for _, n := range []string{"cut", "lost", "stale", "partial"} {
		e.create(t, n, false)
		e.start(t, n)
		e.suspend(t, n)
	}
	// cut: the row still says running (the crash came before the state
	// was recorded).
	cut := e.vm(t, "cut")
	savedAt := cut.Runtime.SuspendedAt
	cut.State = model.VMStateRunning
	cut.Runtime.SuspendedAt, cut.Runtime.SavedStateBytes = time.Time{}, 0
	e.d.store.UpdateVM(e.ctx, cut)
	// lost: the saved state is gone.
	os.RemoveAll(savedDir(e.vm(t, "lost").Runtime.VMDir))
	// stale: stopped, with a saved state left.
	stale := e.vm(t, "stale")
	stale.State = model.VMStateStopped
	e.d.store.UpdateVM(e.ctx, stale)
	// partial: a move cut short next to its complete saved state, and
	// snapshot files the VMM left in its directory.
	partial := e.vm(t, "partial")
	os.Mkdir(filepath.Join(partial.Runtime.VMDir, savedNewDirName), 0o700)
	st, _ := stagingPaths(partial.Runtime.VMDir)
	os.WriteFile(st, []byte("x"), 0o600)
	// A VM dir no row owns, holding a saved state.
	orphan := filepath.Join(e.d.layout.vmsDir(), "orphan")
	os.MkdirAll(savedDir(orphan), 0o700)
	os.WriteFile(filepath.Join(savedDir(orphan), savedStateName), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(savedDir(orphan), savedMemName), []byte("x"), 0o600)

	if err := e.d.reconcile(e.ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if vm := e.vm(t, "cut"); vm.State != model.VMStateSuspended || vm.Runtime.SavedStateBytes <= 0 || vm.Runtime.SuspendedAt.Sub(savedAt).Abs() > 5*time.Second || !strings.Contains(vm.Runtime.LastError, "suspend was interrupted") {
		t.Errorf("cut: %s bytes %d at %s (saved %s) %q", vm.State, vm.Runtime.SavedStateBytes, vm.Runtime.SuspendedAt, savedAt, vm.Runtime.LastError)
	}
	if vm := e.vm(t, "lost"); vm.State != model.VMStateStopped || vm.Runtime.SavedStateBytes != 0 || !strings.Contains(vm.Runtime.LastError, "saved state is gone") {
		t.Errorf("lost: %s bytes %d %q", vm.State, vm.Runtime.SavedStateBytes, vm.Runtime.LastError)
	}
	if vm := e.vm(t, "stale"); vm.State != model.VMStateStopped || readSavedState(vm.Runtime.VMDir).Complete {
		t.Errorf("stale: %s saved %+v", vm.State, readSavedState(vm.Runtime.VMDir))
	}
	if info := readSavedState(partial.Runtime.VMDir); !info.Complete || info.Partial {
		t.Errorf("partial: %+v; want the complete saved state alone", info)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan dir kept: %v", err)
	}
	// Each comes back: the suspended ones restored, the others booted.
	for _, n := range []string{"cut", "partial"} {
		e.start(t, n)
		if got := e.vmms.snapOf(e.pid(t, n)); got.loaded == "" {
			t.Errorf("%s was booted, not restored", n)
		}
	}
	for _, n := range []string{"lost", "stale"} {
		e.start(t, n)
		if got := e.vmms.snapOf(e.pid(t, n)); got.loaded != "" {
			t.Errorf("%s was restored from %q", n, got.loaded)
		}
	}
}

// TestStartupResumesAPausedVM: a VM left paused by a daemon that died
// during a suspend runs again after the restart's reconcile.
func TestStartupResumesAPausedVM(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	e.start(t, "dev")
	pid := e.pid(t, "dev")
	vm := e.vm(t, "dev")
	if err := e.d.vmmClient(vm).Pause(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.d.reconcile(e.ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if !e.vmms.snapOf(pid).paused {
		t.Fatal("a sweep resumed a paused VM; only the startup reconcile should")
	}
	if err := e.d.reconcile(e.ctx, "startup"); err != nil {
		t.Fatal(err)
	}
	if e.vmms.snapOf(pid).paused {
		t.Error("the startup reconcile left the adopted VM paused")
	}
	if vm := e.vm(t, "dev"); vm.State != model.VMStateRunning {
		t.Errorf("state %s", vm.State)
	}
}

// TestAdoptSnapshotRefusesWhatTheVMMCouldPlant: in place of its
// snapshot files a VMM could leave a link to a root file, a FIFO, or a
// hard link; none is taken as a saved state.
func TestAdoptSnapshotRefusesWhatTheVMMCouldPlant(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
		want  string
	}{
		{"symlink", func(t *testing.T, p string) { os.Symlink("/etc/passwd", p) }, "not a regular file"},
		{"fifo", func(t *testing.T, p string) { mkfifo(t, p) }, "not a regular file"},
		{"hard link", func(t *testing.T, p string) {
			other := filepath.Join(filepath.Dir(p), "other")
			os.WriteFile(other, []byte("x"), 0o600)
			os.Link(other, p)
		}, "2 links"},
		{"missing", func(t *testing.T, p string) {}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmDir := t.TempDir()
			os.MkdirAll(vmmDir(vmDir), 0o700)
			st, mem := stagingPaths(vmDir)
			os.WriteFile(st, []byte("state"), 0o600)
			tc.plant(t, mem)
			_, err := adoptSnapshot(vmDir, os.Geteuid())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("adopt: %v; want %q", err, tc.want)
			}
			if info := readSavedState(vmDir); info.Complete {
				t.Errorf("a planted file was taken as a saved state: %+v", info)
			}
		})
	}
	// A plain pair is taken.
	vmDir := t.TempDir()
	os.MkdirAll(vmmDir(vmDir), 0o700)
	st, mem := stagingPaths(vmDir)
	os.WriteFile(st, []byte("state"), 0o600)
	os.WriteFile(mem, []byte(strings.Repeat("m", 8192)), 0o600)
	n, err := adoptSnapshot(vmDir, os.Geteuid())
	if err != nil || n <= 0 || !readSavedState(vmDir).Complete {
		t.Errorf("adopt a plain pair: %d %v %+v", n, err, readSavedState(vmDir))
	}
	// openSaved refuses a link put in the saved dir.
	sst, _ := savedPaths(vmDir)
	os.Remove(sst)
	os.Symlink("/etc/passwd", sst)
	if _, err := openSaved(sst); err == nil {
		t.Error("openSaved followed a link")
	}
}

// TestRestoreFilesComeAfterTheDrives: the saved state's files are passed
// after what a boot passes (disks, kernel, initrd, tap), so the drives
// keep the descriptor numbers the snapshot recorded; a link in the saved
// directory is refused.
func TestRestoreFilesComeAfterTheDrives(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(savedDir(dir), 0o700)
	st, mem := savedPaths(dir)
	os.WriteFile(st, []byte("state"), 0o600)
	os.WriteFile(mem, []byte("mem"), 0o600)
	l := &vmmLaunch{cgroupFD: -1}
	defer l.close()
	var boot []string
	for range 4 { // root, work, kernel, tap
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		boot = append(boot, l.addFile(f))
	}
	r := &restoreFiles{state: st, mem: mem}
	if err := r.pass(l); err != nil {
		t.Fatal(err)
	}
	if boot[0] != "/dev/fd/3" || r.vmmState != "/dev/fd/7" || r.vmmMem != "/dev/fd/8" {
		t.Errorf("boot files %v, state %s, mem %s; want the saved state after the boot's", boot, r.vmmState, r.vmmMem)
	}
	os.Remove(mem)
	os.Symlink("/etc/shadow", mem)
	if err := (&restoreFiles{state: st, mem: mem}).pass(l); err == nil {
		t.Error("a link in the saved directory was passed to the VMM")
	}
}

// TestResumeSetsTheClockOverTheHeldSession: the session a suspend leaves
// in the guest sets its clock at the resume, with no new connection;
// without it (the daemon restarted) the resume connects again; a stop of
// a suspended VM closes it unused.
func TestResumeSetsTheClockOverTheHeldSession(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	e.start(t, "dev")
	e.suspend(t, "dev")
	e.start(t, "dev")
	e.vmms.mu.Lock()
	holds, dialled := e.vmms.holds, e.vmms.dialled
	e.vmms.mu.Unlock()
	if len(holds) != 1 || holds[0].set != 1 || dialled != 0 {
		t.Fatalf("holds %d (set %v), dialled %d; want one hold used, no dial", len(holds), holds, dialled)
	}

	e.suspend(t, "dev")
	e.d.clocks.closeAll() // what a daemon restart loses
	e.start(t, "dev")
	e.vmms.mu.Lock()
	holds, dialled = e.vmms.holds, e.vmms.dialled
	e.vmms.mu.Unlock()
	if len(holds) != 2 || holds[1].set != 0 || !holds[1].closed || dialled != 1 {
		t.Errorf("after the hold was lost: set %d closed %v, dialled %d; want a new connection", holds[1].set, holds[1].closed, dialled)
	}

	e.suspend(t, "dev")
	if _, err := e.d.StopVM(e.ctx, "dev", api.NoProgress); err != nil {
		t.Fatal(err)
	}
	e.vmms.mu.Lock()
	last := e.vmms.holds[len(e.vmms.holds)-1]
	e.vmms.mu.Unlock()
	if !last.closed || last.set != 0 {
		t.Errorf("the stop of a suspended vm left its hold: closed %v set %d", last.closed, last.set)
	}
	// A guest that could not flush or hold still suspends.
	e.start(t, "dev")
	e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("no ssh"), failAt: "sync"}
	var prog progressLog
	if _, err := e.d.SuspendVM(e.ctx, "dev", prog.add); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(prog.String(), "warning: suspend: the guest could not flush its disks (no ssh)") {
		t.Errorf("progress:\n%s", prog.String())
	}
}
