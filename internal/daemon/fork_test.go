package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/guest"
	"banger/internal/model"
)

// The fake booter's side of a fork's child: failAt "reidentify" and
// "admitted".

func (b fakeBooter) reidentify(ctx context.Context, s *startRun) error {
	if err := b.failed("reidentify"); err != nil {
		return err
	}
	if b.vmms.snapOf(s.h.PID).paused {
		return fmt.Errorf("fake: the guest is still paused; no SSH answer")
	}
	b.vmms.mu.Lock()
	f := b.vmms.onReidentify
	for _, r := range s.renames {
		b.vmms.renamed = append(b.vmms.renamed, s.vm.Name+" "+r.guestPath+" "+r.from+" -> "+r.to)
	}
	b.vmms.mu.Unlock()
	if f != nil {
		f(s)
	}
	return nil
}

func (b fakeBooter) waitAdmitted(ctx context.Context, s *startRun) error {
	if err := b.failed("admitted"); err != nil {
		return err
	}
	b.vmms.mu.Lock()
	f := b.vmms.onAdmitted
	b.vmms.mu.Unlock()
	if f != nil {
		f(s)
	}
	return nil
}

// TestForkOnTheFakeHost: a fork pauses the source once for one
// snapshot, resumes it, and brings up each child from a copy of that
// snapshot with its own IP, MAC, tap, host key and disks; a child is
// re-identified while its tap is quarantined and joins the bridge only
// after; nothing of the fork is left in the source's directory.
func TestForkOnTheFakeHost(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	src := e.vm(t, "dev")
	srcPID := e.pid(t, "dev")
	os.WriteFile(src.Runtime.WorkDiskPath, []byte("work of dev"), 0o600)
	// Two workspaces: one whose work ships on a branch, one metadata only.
	for _, w := range []model.WorkspacePrepareResult{
		{VMID: src.ID, GuestPath: "/root/repo", RepoName: "repo", Mode: model.WorkspacePrepareModeShallowOverlay, BranchName: "banger/dev", BaseCommit: strings.Repeat("b", 40), PreparedAt: model.Now()},
		{VMID: src.ID, GuestPath: "/root/meta", RepoName: "meta", Mode: model.WorkspacePrepareModeMetadataOnly, PreparedAt: model.Now()},
	} {
		if err := e.d.store.PutWorkspace(e.ctx, w, ""); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	seen := map[string]string{}
	e.vmms.onReidentify = func(s *startRun) {
		q, err := e.d.net.Quarantined(e.ctx, s.h.Tap)
		mu.Lock()
		defer mu.Unlock()
		seen[s.vm.Name] = fmt.Sprintf("reidentify quarantined=%v err=%v from=%s/%s", q, err, s.fork.srcName, s.fork.srcIP)
	}
	e.vmms.onAdmitted = func(s *startRun) {
		q, _ := e.d.net.Quarantined(e.ctx, s.h.Tap)
		mu.Lock()
		defer mu.Unlock()
		seen[s.vm.Name] += fmt.Sprintf("; admitted quarantined=%v", q)
	}
	var prog progressLog
	views, err := e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{Count: 2}, prog.add)
	if err != nil {
		t.Fatalf("fork: %v\n%s", err, prog.String())
	}
	if len(views) != 2 || views[0].Name != "dev-1" || views[1].Name != "dev-2" {
		t.Fatalf("children: %+v", views)
	}
	// The source was paused for one snapshot and runs on, same VMM.
	if got := e.vmms.snapOf(srcPID); got.took != 1 || got.paused {
		t.Errorf("source vmm after the fork: %+v; want one snapshot and running", got)
	}
	if e.pid(t, "dev") != srcPID || e.vm(t, "dev").State != model.VMStateRunning {
		t.Error("the source's VMM changed or it is not running")
	}
	if info := readSavedState(src.Runtime.VMDir); info.Complete || info.Partial {
		t.Errorf("the fork left files in the source's dir: %+v", info)
	}
	ips := map[string]bool{src.Runtime.GuestIP: true}
	macs := map[string]bool{src.Runtime.GuestMAC: true}
	keys := map[string]bool{src.Runtime.SSHHostKey: true}
	taps := map[string]bool{src.Runtime.TapDevice: true}
	for _, v := range views {
		c := e.vm(t, v.Name)
		if c.State != model.VMStateRunning || c.Runtime.ForkOf != "" || c.Runtime.LastError != "" {
			t.Errorf("%s: state %s forkOf %q err %q", c.Name, c.State, c.Runtime.ForkOf, c.Runtime.LastError)
		}
		for what, m := range map[string]map[string]bool{"ip " + c.Runtime.GuestIP: ips, "mac " + c.Runtime.GuestMAC: macs, "host key " + c.Runtime.SSHHostKey: keys, "tap " + c.Runtime.TapDevice: taps} {
			k := strings.SplitN(what, " ", 2)[1]
			if k == "" || m[k] {
				t.Errorf("%s: %s is empty or not its own", c.Name, what)
			}
			m[k] = true
		}
		if !reflect.DeepEqual(c.Spec, src.Spec) || c.ImageID != src.ImageID || c.OwnerUID != src.OwnerUID {
			t.Errorf("%s: spec %+v image %s owner %d; want the source's", c.Name, c.Spec, c.ImageID, c.OwnerUID)
		}
		// Restored from the source's snapshot, on its own tap.
		snap := e.vmms.snapOf(e.pid(t, c.Name))
		if snap.loaded != fmt.Sprintf("pid=%d n=1", srcPID) || snap.tap != c.Runtime.TapDevice || snap.paused {
			t.Errorf("%s: vmm %+v; want the source's snapshot on %s, running", c.Name, snap, c.Runtime.TapDevice)
		}
		if b, _ := os.ReadFile(c.Runtime.WorkDiskPath); string(b) != "work of dev" {
			t.Errorf("%s: work disk %q; want a copy of the source's", c.Name, b)
		}
		if _, err := os.Stat(c.Runtime.SystemOverlay); err != nil {
			t.Errorf("%s: system disk: %v", c.Name, err)
		}
		e.d.drops.Wait()
		if info := readSavedState(c.Runtime.VMDir); info.Complete || info.Partial {
			t.Errorf("%s: saved state left after the resume: %+v", c.Name, info)
		}
		if got, want := seen[c.Name], "reidentify quarantined=true err=<nil> from=dev/"+src.Runtime.GuestIP+"; admitted quarantined=false"; got != want {
			t.Errorf("%s: %q; want %q", c.Name, got, want)
		}
	}
	// Workspaces follow, each child's work on its own branch, renamed in
	// its guest (before it is admitted); the source's are as they were.
	// The children are restored side by side: any order.
	slices.Sort(e.vmms.renamed)
	if got, want := strings.Join(e.vmms.renamed, "; "), "dev-1 /root/repo banger/dev -> banger/dev-1; dev-2 /root/repo banger/dev -> banger/dev-2"; got != want {
		t.Errorf("branch renames %q; want %q", got, want)
	}
	for _, name := range []string{"dev", "dev-1", "dev-2"} {
		ws, err := e.d.store.ListWorkspaces(e.ctx, e.vm(t, name).ID)
		if err != nil || len(ws) != 2 {
			t.Fatalf("%s: workspaces %+v %v", name, ws, err)
		}
		byPath := map[string]model.Workspace{}
		for _, w := range ws {
			byPath[w.GuestPath] = w
		}
		wantBranch := "banger/" + name
		if r := byPath["/root/repo"]; r.BranchName != wantBranch || r.BaseCommit != strings.Repeat("b", 40) {
			t.Errorf("%s: /root/repo branch %q base %q; want %s", name, r.BranchName, r.BaseCommit, wantBranch)
		}
		if m := byPath["/root/meta"]; m.BranchName != "" || m.Mode != model.WorkspacePrepareModeMetadataOnly {
			t.Errorf("%s: /root/meta %+v", name, m)
		}
	}
	if !strings.Contains(prog.String(), "dev paused for") {
		t.Errorf("progress does not say how long the source was paused:\n%s", prog.String())
	}
	// Children are VMs like others: they stop, and rm leaves the host
	// as it was with only the source.
	for _, v := range views {
		if err := e.d.DeleteVM(e.ctx, v.Name, api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.d.DeleteVM(e.ctx, "dev", api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	st := e.hostState()
	if strings.Contains(st, "banger_q_") || strings.Contains(st, "169.254.169.1") {
		t.Errorf("quarantine left on the host:\n%s", st)
	}
	if ents, _ := os.ReadDir(filepath.Dir(src.Runtime.VMDir)); len(ents) != 0 {
		t.Errorf("vm dirs left: %v", ents)
	}
}

// TestFailedForkLeavesNoChild: whichever step fails (the snapshot, the
// child's re-identification, its admission to the bridge), the source
// runs on unpaused and no child, tap, quarantine or file is left.
func TestFailedForkLeavesNoChild(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(e *testEnv)
		failAt string
	}{
		{"snapshot", func(e *testEnv) { e.vmms.failSnapshot = "disk full" }, ""},
		{"load", func(e *testEnv) { e.vmms.failLoad = "bad memory file" }, ""},
		{"reidentify", nil, "reidentify"},
		{"admitted", nil, "admitted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestDaemon(t, false)
			e.create(t, "dev", true)
			e.start(t, "dev")
			srcPID := e.pid(t, "dev")
			before := e.hostState()
			if tc.setup != nil {
				e.vmms.mu.Lock()
				tc.setup(e)
				e.vmms.mu.Unlock()
			}
			if tc.failAt != "" {
				e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("boom at " + tc.failAt), failAt: tc.failAt}
			}
			_, err := e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{Names: []string{"a", "b"}}, api.NoProgress)
			if err == nil {
				t.Fatal("the fork succeeded")
			}
			if vms, _ := e.d.store.ListVMs(e.ctx); len(vms) != 1 {
				t.Errorf("%d rows after the failed fork (%v); want the source only", len(vms), err)
			}
			if got := e.vmms.snapOf(srcPID); got.paused {
				t.Error("the source is left paused")
			}
			if e.vm(t, "dev").State != model.VMStateRunning {
				t.Error("the source is not running")
			}
			want(t, "after a failed fork", anyTaps(e.hostState(), ""), anyTaps(before, ""))
			if ents, _ := os.ReadDir(filepath.Dir(e.vm(t, "dev").Runtime.VMDir)); len(ents) != 1 {
				t.Errorf("vm dirs: %d; want the source's", len(ents))
			}
			if info := readSavedState(e.vm(t, "dev").Runtime.VMDir); info.Partial || info.Complete {
				t.Errorf("the source's dir keeps fork files: %+v", info)
			}
		})
	}
}

// TestForkRestoresChildrenSideBySide: a fork's children are restored
// and re-identified forkParallel at a time, never more, and each is
// still quarantined while it is re-identified.
func TestForkRestoresChildrenSideBySide(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	e.start(t, "dev")
	var mu sync.Mutex
	active, most := 0, 0
	var open []string
	e.vmms.onReidentify = func(s *startRun) {
		q, _ := e.d.net.Quarantined(e.ctx, s.h.Tap)
		mu.Lock()
		active++
		most = max(most, active)
		if !q {
			open = append(open, s.vm.Name)
		}
		mu.Unlock()
		time.Sleep(150 * time.Millisecond)
		mu.Lock()
		active--
		mu.Unlock()
	}
	views, err := e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{Count: 4}, api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range views {
		names = append(names, v.Name)
	}
	if got := strings.Join(names, " "); got != "dev-1 dev-2 dev-3 dev-4" {
		t.Errorf("children %q; want them in order", got)
	}
	if most != forkParallel {
		t.Errorf("%d children re-identified at once; want %d", most, forkParallel)
	}
	if len(open) > 0 {
		t.Errorf("children re-identified off quarantine: %v", open)
	}
}

// TestReconcileRemovesHalfForks: a crash at any fork step leaves rows
// marked ForkOf; reconcile removes them whole (VMM, tap, rules, files),
// but leaves alone a child a running fork holds.
func TestReconcileRemovesHalfForks(t *testing.T) {
	for _, at := range stepNames((&Daemon{}).forkSteps()) {
		t.Run(at, func(t *testing.T) {
			e := newTestDaemon(t, false)
			e.create(t, "dev", true)
			e.start(t, "dev")
			before := e.hostState()
			// A crash: the fork stops dead at the step (its locks go
			// with the daemon).
			e.d.onCrashPoint = func(s string) {
				if s == at {
					panic("crash at " + s)
				}
			}
			func() {
				defer func() { recover() }()
				e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{Count: 2}, api.NoProgress)
			}()
			e.d.onCrashPoint = nil
			// The source's vCPUs: a restarted daemon resumes them.
			e.d.vmmClient(e.vm(t, "dev")).Resume(e.ctx)
			if err := e.d.reconcile(e.ctx, "startup"); err != nil {
				t.Fatal(err)
			}
			vms, _ := e.d.store.ListVMs(e.ctx)
			if len(vms) != 1 || vms[0].Name != "dev" || vms[0].State != model.VMStateRunning {
				t.Fatalf("after reconcile: %+v", vms)
			}
			want(t, "after reconcile", anyTaps(e.hostState(), ""), anyTaps(before, ""))
			if ents, _ := os.ReadDir(filepath.Dir(vms[0].Runtime.VMDir)); len(ents) != 1 {
				t.Errorf("vm dirs: %d; want the source's", len(ents))
			}
		})
	}
	// A child a fork in progress holds is not touched.
	e := newTestDaemon(t, false)
	e.create(t, "dev", true)
	c := e.create(t, "held", false)
	c.Runtime.ForkOf = "x"
	if err := e.d.store.UpdateVM(e.ctx, c); err != nil {
		t.Fatal(err)
	}
	unlock := e.d.locks.lock(c.ID)
	e.d.removeHalfForks(e.ctx)
	unlock()
	if _, err := e.d.store.GetVM(e.ctx, "held"); err != nil {
		t.Errorf("a held child was removed: %v", err)
	}
	e.d.removeHalfForks(e.ctx)
	if _, err := e.d.store.GetVM(e.ctx, "held"); err == nil {
		t.Error("a half child no fork holds was kept")
	}
}

// TestForkNames: names are checked before anything happens; --count
// picks the first free numbers.
func TestForkNames(t *testing.T) {
	e := newTestDaemon(t, false)
	e.create(t, "dev", false)
	e.create(t, "dev-1", false)
	for _, tc := range []struct {
		req  model.VMForkRequest
		want string
	}{
		{model.VMForkRequest{}, "dev-2"},
		{model.VMForkRequest{Count: 2}, "dev-2 dev-3"},
		{model.VMForkRequest{Names: []string{"x", "y"}}, "x y"},
		{model.VMForkRequest{Names: []string{"x", "x"}}, "EINVALID"},
		{model.VMForkRequest{Names: []string{"Bad_Name"}}, "EINVALID"},
		{model.VMForkRequest{Names: []string{"a;rm -rf /"}}, "EINVALID"},
		{model.VMForkRequest{Names: []string{"dev-1"}}, "ECONFLICT"},
		{model.VMForkRequest{Names: []string{"x"}, Count: 2}, "EINVALID"},
		{model.VMForkRequest{Count: -1}, "EINVALID"},
		{model.VMForkRequest{Count: model.MaxForkChildren + 1}, "EINVALID"},
	} {
		got, err := e.d.forkNames(e.ctx, "dev", tc.req)
		s := strings.Join(got, " ")
		if err != nil {
			s = string(model.ErrorCode(err))
		}
		if s != tc.want {
			t.Errorf("forkNames(%+v) = %q (%v); want %q", tc.req, s, err, tc.want)
		}
	}
	// A stopped VM cannot be forked; nothing is made.
	if _, err := e.d.ForkVM(e.ctx, "dev", model.VMForkRequest{}, api.NoProgress); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("fork of a stopped vm: %v", err)
	}
}

// TestReidentifyArgs: the programs get only checked values; a host key
// that could break out of its quoting is refused.
func TestReidentifyArgs(t *testing.T) {
	cfg := model.DaemonConfig{BridgeIP: "172.16.0.1", CIDR: "24"}
	vm := model.VMRecord{Name: "dev-1", Runtime: model.VMRuntime{GuestIP: "172.16.0.7", GuestMAC: "02:fc:ac:10:00:07", SSHHostKey: "ssh-ed25519 AAAA"}}
	id := forkIdentity{srcName: "dev", srcIP: "172.16.0.2"}
	batch, err := readdressBatch(cfg, vm)
	if err != nil {
		t.Fatal(err)
	}
	if want := "link set dev eth0 down\nlink set dev eth0 address 02:fc:ac:10:00:07\naddr flush dev eth0\naddr add 172.16.0.7/24 dev eth0\nlink set dev eth0 up\nroute replace default via 172.16.0.1 dev eth0\n"; batch != want {
		t.Errorf("batch %q, want %q", batch, want)
	}
	args, err := identityArgs(id, vm, []byte{1, 2}, []byte{0xab}, 399, true, batch)
	if err != nil {
		t.Fatal(err)
	}
	nrSync, nrTime := syscallNumbers()
	if got, want := strings.Join(args[:10], " "), fmt.Sprintf("0102 ab dev dev-1 ssh-ed25519 AAAA 399 %d %d  1", nrSync, nrTime); got != want || args[10] != batch {
		t.Errorf("args %q, want %q and the batch", args, want)
	}
	for _, bad := range []func(v *model.VMRecord, n *int){
		func(v *model.VMRecord, _ *int) { v.Runtime.SSHHostKey = "ssh-ed25519 A'; reboot; '" },
		func(v *model.VMRecord, _ *int) { v.Runtime.SSHHostKey = "ssh-ed25519 A\nB" },
		func(v *model.VMRecord, _ *int) { v.Name = "x y" },
		func(_ *model.VMRecord, n *int) { *n = 0 },
	} {
		v, n := vm, 399
		bad(&v, &n)
		if _, err := identityArgs(id, v, nil, nil, n, false, ""); err == nil {
			t.Errorf("identityArgs accepted %+v (key of %d bytes)", v.Runtime, n)
		}
	}
	for _, bad := range []func(v *model.VMRecord){
		func(v *model.VMRecord) { v.Runtime.GuestIP = "10.0.0.9" },
		func(v *model.VMRecord) { v.Runtime.GuestIP = "172.16.0.7\nlink del eth0" },
		func(v *model.VMRecord) { v.Runtime.GuestMAC = "nope" },
		func(v *model.VMRecord) { v.Runtime.GuestMAC = "02:fc:ac:10:00:07\nlink del eth0" },
	} {
		v := vm
		bad(&v)
		if _, err := readdressBatch(cfg, v); err == nil {
			t.Errorf("readdressBatch accepted %+v", v.Runtime)
		}
	}
	cmd := identityCommand(args)
	if !strings.HasPrefix(cmd, "perl -e '") || !strings.Contains(cmd, "'dev-1' 'ssh-ed25519 AAAA' '399' ") {
		t.Errorf("identity command %q", cmd)
	}
	// One process sets the clock, and says ready once.
	if n := strings.Count(identityProgram, `"ready`); n != 1 {
		t.Errorf("the program says ready %d times", n)
	}
	rc := readdressCommand(batch)
	if !strings.HasPrefix(rc, "sh -c ") || !strings.HasSuffix(rc, " sh "+guest.Quote(batch)) {
		t.Errorf("readdress command %q", rc)
	}
	for _, c := range []string{rc, readdressScript, authorizeKeysScript} {
		if out, err := exec.Command("sh", "-n", "-c", c).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v %s\n%s", err, out, c)
		}
	}
	if _, err := exec.LookPath("perl"); err == nil {
		for _, p := range []string{identityProgram, authorizeKeysProgram} {
			if out, err := exec.Command("perl", "-c", "-e", p).CombinedOutput(); err != nil {
				t.Errorf("perl -c: %v %s", err, out)
			}
		}
	}
}

// TestIdentityProgram runs identityProgram with perl against a
// directory standing for a guest's root: the files are replaced, not
// written through, the hostname is the new one in the kernel's file and
// in /etc/hosts (the old one elsewhere in a line is kept), sshd gets
// SIGHUP, and a host key cut short changes nothing. Root only: it feeds
// the host's kernel RNG (RNDADDENTROPY), which is harmless.
func TestIdentityProgram(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (RNDADDENTROPY)")
	}
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl")
	}
	root := t.TempDir()
	for _, d := range []string{"dev", "etc/ssh", "var/lib/systemd", "var/lib/dbus", "proc/sys/kernel", "proc/sys/net/ipv4/conf/eth0", "run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/dev/urandom", filepath.Join(root, "dev/urandom")); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write("var/lib/systemd/random-seed", "seed")
	write("etc/machine-id", "old-id\n")
	write("var/lib/dbus/machine-id", "old-id\n")
	write("etc/ssh/ssh_host_ed25519_key", "OLD KEY")
	write("etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 OLD\n")
	write("proc/sys/kernel/hostname", "dev\n")
	write("etc/hostname", "dev\n")
	write("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1 dev dev.banger\n10.0.0.1 devbox dev-2\n")
	// A hard link to the old key must keep the old key: a replaced file
	// is a new file.
	if err := os.Link(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key"), filepath.Join(root, "keep")); err != nil {
		t.Fatal(err)
	}
	// The stand-in for sshd takes SIGHUP's default action even when the
	// tests run with it ignored (nohup, some CI runners): an ignored
	// signal stays ignored across exec, and sleep(1) would never end.
	sshd := exec.Command("perl", "-e", `$SIG{HUP} = "DEFAULT"; sleep 60`)
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	defer sshd.Process.Kill()
	write("run/sshd.pid", strconv.Itoa(sshd.Process.Pid)+"\n")
	nrSync, _ := syscallNumbers()
	key := "-----BEGIN OPENSSH PRIVATE KEY-----\nNEW\n-----END OPENSSH PRIVATE KEY-----\n"
	run := func(key string, keyLen int) (string, error) {
		cmd := exec.Command("perl", "-e", identityProgram, "0102ff", "00112233445566778899aabbccddeeff", "dev", "dev-1", "ssh-ed25519 NEW", strconv.Itoa(keyLen), strconv.Itoa(nrSync), "-", root, "1", "")
		cmd.Stdin = strings.NewReader(key + "ssh-ed25519 USER u@h\n")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Cut short: nothing changes.
	if out, err := run(key[:10], len(key)); err == nil || !strings.Contains(out, "cut short") {
		t.Fatalf("a host key cut short: %v %s", err, out)
	}
	if read("etc/ssh/ssh_host_ed25519_key") != "OLD KEY" || read("etc/machine-id") != "old-id\n" {
		t.Fatalf("a failed run changed files")
	}
	out, err := run(key, len(key))
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out != "hostname dev-1\n" {
		t.Errorf("said %q", out)
	}
	for p, want := range map[string]string{
		"etc/machine-id":                         "00112233445566778899aabbccddeeff\n",
		"var/lib/dbus/machine-id":                "00112233445566778899aabbccddeeff\n",
		"etc/ssh/ssh_host_ed25519_key":           key,
		"etc/ssh/ssh_host_ed25519_key.pub":       "ssh-ed25519 NEW\n",
		"proc/sys/kernel/hostname":               "dev-1",
		"etc/hostname":                           "dev-1\n",
		"etc/hosts":                              "127.0.0.1\tlocalhost\n127.0.1.1 dev-1 dev.banger\n10.0.0.1 devbox dev-2\n",
		"proc/sys/net/ipv4/conf/eth0/arp_notify": "1\n",
		"root/.ssh/authorized_keys":              "ssh-ed25519 USER u@h\n",
		"keep":                                   "OLD KEY",
	} {
		if got := read(p); got != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
	for p, mode := range map[string]os.FileMode{"etc/ssh/ssh_host_ed25519_key": 0o600, "etc/ssh/ssh_host_ed25519_key.pub": 0o644, "etc/machine-id": 0o444} {
		if fi, err := os.Stat(filepath.Join(root, p)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode().Perm(), err, mode)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/systemd/random-seed")); !os.IsNotExist(err) {
		t.Errorf("random seed kept: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "etc/ssh/*.new")); len(left) > 0 {
		t.Errorf("left %v", left)
	}
	if err := sshd.Wait(); err == nil || !strings.Contains(err.Error(), "hangup") {
		t.Errorf("sshd: %v, want killed by SIGHUP", err)
	}
}

// TestAuthorizeKeys runs the user's keys script against a directory
// standing for a guest's root, the perl way (the shell way, for guests
// without perl, writes the real /root: its syntax only is checked): keys
// already there are not added again, blank lines are skipped, the
// directory and file are root's alone.
func TestAuthorizeKeys(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl")
	}
	root := t.TempDir()
	f := filepath.Join(root, "root/.ssh/authorized_keys")
	run := func(in string) {
		t.Helper()
		cmd := exec.Command("sh", "-c", authorizeKeysCommand())
		cmd.Env = append(os.Environ(), "BANGER_ROOT="+root)
		cmd.Stdin = strings.NewReader(in)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	run("ssh-ed25519 AAA a@b\n\nssh-ed25519 BBB c@d\nssh-ed25519 AAA a@b\n")
	run("ssh-ed25519 BBB c@d\nssh-ed25519 CCC e@f")
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "ssh-ed25519 AAA a@b\nssh-ed25519 BBB c@d\nssh-ed25519 CCC e@f\n"; got != want {
		t.Errorf("authorized_keys %q, want %q", got, want)
	}
	for p, mode := range map[string]os.FileMode{f: 0o600, filepath.Dir(f): 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode().Perm(), err, mode)
		}
	}
	// The shell way writes the guest's /root: only its syntax is checked.
	if out, err := exec.Command("sh", "-n", "-c", authorizeKeysScript).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v %s", err, out)
	}
}

// TestIdentityThroughWaiter runs identityProgram as a warm state's
// waiter runs it: a waiter on 127.0.0.1 started as the daemon starts
// it in a guest, then called with the token (guest.CallWaiter), the
// host key first, the time when it asks, the user's keys last. The
// clock call is sched_yield's number here (a call that succeeds and
// changes nothing), so the host's clock is left alone: amd64 only. A
// call with another token runs nothing. Root only (RNDADDENTROPY).
func TestIdentityThroughWaiter(t *testing.T) {
	if os.Geteuid() != 0 || runtime.GOARCH != "amd64" {
		t.Skip("needs root (RNDADDENTROPY) on amd64 (a harmless clock call)")
	}
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl")
	}
	root := t.TempDir()
	for _, d := range []string{"dev", "etc/ssh", "var/lib/systemd", "proc/sys/kernel", "proc/sys/net/ipv4/conf/eth0", "run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/dev/urandom", filepath.Join(root, "dev/urandom")); err != nil {
		t.Fatal(err)
	}
	for p, s := range map[string]string{"etc/machine-id": "old\n", "etc/ssh/ssh_host_ed25519_key": "OLD", "proc/sys/kernel/hostname": "dev\n", "etc/hostname": "dev\n"} {
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	token, err := guest.NewWaiterToken()
	if err != nil {
		t.Fatal(err)
	}
	start, err := guest.WaiterCommand(identityProgram, "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := guest.WaiterInput(token)
	sc := exec.Command("sh", "-c", start)
	sc.Stdin = strings.NewReader(string(in))
	if out, err := sc.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "listening" {
		t.Fatalf("start the waiter: %v %q", err, out)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	key := "-----BEGIN OPENSSH PRIVATE KEY-----\nNEW\n-----END OPENSSH PRIVATE KEY-----\n"
	nrSync, _ := syscallNumbers()
	args := []string{"0102ff", "00112233445566778899aabbccddeeff", "dev", "dev-7", "ssh-ed25519 NEW", strconv.Itoa(len(key)), strconv.Itoa(nrSync), "24", root, "1", ""}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(token string, said *boundedBuffer) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return guest.CallWaiter(ctx, c, token, args, time.Now, guest.ClockRun{Head: []byte(key), Tail: []byte("ssh-ed25519 USER u@h\n"), Stdout: said})
	}
	other, _ := guest.NewWaiterToken()
	if err := call(other, &boundedBuffer{}); err == nil {
		t.Fatal("another token ran the program")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "dev\n" {
		t.Fatalf("another token changed the hostname: %q", b)
	}
	var said boundedBuffer
	if err := call(token, &said); err != nil {
		t.Fatalf("through the waiter: %v (said %q)", err, said.b)
	}
	if said.hostname() != "dev-7" {
		t.Errorf("said %q", said.b)
	}
	for p, want := range map[string]string{
		"etc/machine-id":               "00112233445566778899aabbccddeeff\n",
		"etc/ssh/ssh_host_ed25519_key": key,
		"etc/hostname":                 "dev-7\n",
		"root/.ssh/authorized_keys":    "ssh-ed25519 USER u@h\n",
	} {
		if b, _ := os.ReadFile(filepath.Join(root, p)); string(b) != want {
			t.Errorf("%s: %q, want %q", p, b, want)
		}
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the waiter still listens after its program ran")
	}
}

// freePort is a TCP port of 127.0.0.1 nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
