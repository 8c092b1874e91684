package daemon

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/model"
	"banger/internal/storage"
)

// warmVM creates name from the image "base" with req's fields, started
// (a first start: from the warm state when it fits).
func (e *testEnv) createStarted(t *testing.T, req model.VMCreateRequest) model.VMRecord {
	t.Helper()
	req.ImageName = "base"
	var prog progressLog
	if _, err := e.d.CreateVM(e.ctx, req, prog.add); err != nil {
		t.Fatalf("create %s: %v\n%s", req.Name, err, prog.String())
	}
	return e.vm(t, req.Name)
}

// warmState reads the image "base"'s warm state as `image inspect` shows
// it.
func (e *testEnv) warmState(t *testing.T) *api.WarmState {
	t.Helper()
	det, err := e.d.GetImage(e.ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	return det.Warm
}

// TestWarmCreateOnTheFakeHost: `image warm` leaves a warm state and
// nothing of its hidden VM; a create that fits restores a copy of it,
// re-identified behind a quarantined tap as a fork's child with the
// first boot's setup after; each such VM has its own address, MAC, tap
// and host key; a create that does not fit, or asks --cold, boots cold
// and says why; a new daemon key or a changed image invalidates the
// warm state; --rm and image rm remove it.
func TestWarmCreateOnTheFakeHost(t *testing.T) {
	e := newTestDaemon(t, false)
	before := e.hostState()
	var prog progressLog
	w, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, prog.add)
	if err != nil {
		t.Fatalf("warm: %v\n%s", err, prog.String())
	}
	if !w.Valid || w.VCPUCount != 1 || w.MemoryMiB != 256 || w.WorkDiskSizeBytes != 64<<20 || w.SizeBytes <= 0 {
		t.Errorf("warm state %+v", w)
	}
	// Nothing of the hidden VM is left: no row, dir, tap, rule, VMM.
	if vms, _ := e.d.store.ListVMs(e.ctx); len(vms) != 0 {
		t.Errorf("rows after the warm run: %+v", vms)
	}
	if ents, _ := os.ReadDir(e.d.layout.vmsDir()); len(ents) != 0 {
		t.Errorf("vm dirs after the warm run: %d", len(ents))
	}
	want(t, "after image warm", anyTaps(e.hostState(), ""), anyTaps(before, ""))
	dir := e.d.layout.warmDir(strings.Repeat("a", 64))
	meta, err := readWarm(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{warmMetaName, warmSystemName, warmWorkName, savedStateName, savedMemName} {
		fi, err := os.Lstat(filepath.Join(dir, n))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v; want mode 0600", n, fi.Mode(), err)
		}
	}

	// Two VMs from it: each its own machine, restored behind a
	// quarantined tap from the hidden VM's identity, with the first
	// boot's setup once admitted.
	seen := map[string]string{}
	e.vmms.onReidentify = func(s *startRun) {
		q, _ := e.d.net.Quarantined(e.ctx, s.h.Tap)
		seen[s.vm.Name] = "from=" + s.fork.srcName + "/" + s.fork.srcIP + " quarantined=" + boolStr(q)
	}
	e.vmms.onAdmitted = func(s *startRun) { seen[s.vm.Name] += " firstBoot=" + boolStr(s.fork.firstBoot) }
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q user@host"
	// The hidden VM's address may be given again (it is gone); its
	// host key never.
	ips := map[string]bool{}
	keys := map[string]bool{meta.SrcHostKey: true}
	macs, taps := map[string]bool{}, map[string]bool{}
	for _, name := range []string{"w1", "w2"} {
		v := e.createStarted(t, model.VMCreateRequest{Name: name, SSHPublicKeys: []string{key}})
		if v.State != model.VMStateRunning || v.Runtime.ForkOf != "" || v.Runtime.CreatedFrom != "warm state of base" {
			t.Errorf("%s: state %s forkOf %q created from %q", name, v.State, v.Runtime.ForkOf, v.Runtime.CreatedFrom)
		}
		if got, want := seen[name], "from="+meta.SrcName+"/"+meta.SrcIP+" quarantined=true firstBoot=true"; got != want {
			t.Errorf("%s: %q; want %q", name, got, want)
		}
		for what, m := range map[string]map[string]bool{v.Runtime.GuestIP: ips, v.Runtime.SSHHostKey: keys, v.Runtime.GuestMAC: macs, v.Runtime.TapDevice: taps} {
			if what == "" || m[what] {
				t.Errorf("%s: %q is empty or not its own", name, what)
			}
			m[what] = true
		}
		a, _ := os.ReadFile(v.Runtime.WorkDiskPath)
		b, _ := os.ReadFile(filepath.Join(dir, warmWorkName))
		if len(a) == 0 || string(a) != string(b) {
			t.Errorf("%s: work disk is not a copy of the warm state's", name)
		}
		if _, err := os.Stat(userKeysPath(v.Runtime.VMDir)); err != nil {
			t.Errorf("%s: the user's keys are not kept for the first boot: %v", name, err)
		}
	}
	// The warm state is as it was: a create copies it.
	if m2, err := readWarm(dir, ""); err != nil || m2.MadeAt != meta.MadeAt {
		t.Errorf("warm state after the creates: %+v %v", m2, err)
	}

	// Other memory, or --cold: a cold boot that says why.
	for _, tc := range []struct {
		req  model.VMCreateRequest
		want string
	}{
		{model.VMCreateRequest{Name: "c1", MemoryMiB: 512}, "cold boot (the warm state of base does not fit: it has 1 vCPUs and 256 MiB, this VM asks 1 and 512 MiB)"},
		{model.VMCreateRequest{Name: "c2", WorkDiskSizeBytes: 128 << 20}, "cold boot (the warm state of base does not fit: it has a 64M system disk and a 64M work disk, this VM asks 64M and 128M)"},
		{model.VMCreateRequest{Name: "c3", Cold: true}, "cold boot (--cold)"},
	} {
		v := e.createStarted(t, tc.req)
		if v.State != model.VMStateRunning || v.Runtime.CreatedFrom != tc.want {
			t.Errorf("%s: state %s created from %q; want %q", tc.req.Name, v.State, v.Runtime.CreatedFrom, tc.want)
		}
		if _, ok := seen[tc.req.Name]; ok {
			t.Errorf("%s was restored, not booted", tc.req.Name)
		}
	}

	// A new daemon key invalidates it: shown, never used.
	os.Remove(e.d.cfg.SSHKeyPath)
	if _, _, err := image.EnsureSSHKey(e.d.cfg.SSHKeyPath); err != nil {
		t.Fatal(err)
	}
	if ws := e.warmState(t); ws == nil || ws.Valid || !strings.Contains(ws.Invalid, "SSH key changed") {
		t.Errorf("after a new key: %+v", ws)
	}
	if v := e.createStarted(t, model.VMCreateRequest{Name: "k1"}); !strings.Contains(v.Runtime.CreatedFrom, "cold boot (the warm state of base is invalid: the daemon's SSH key changed") {
		t.Errorf("k1 created from %q", v.Runtime.CreatedFrom)
	}
	// Warming again makes it valid, in place of the old one.
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if ws := e.warmState(t); ws == nil || !ws.Valid {
		t.Errorf("after warming again: %+v", ws)
	}
	// A rebuilt image (its files change) invalidates it.
	img, err := e.d.store.GetImage(e.ctx, strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	os.Chtimes(img.RootfsPath, later, later)
	if ws := e.warmState(t); ws == nil || ws.Valid || !strings.Contains(ws.Invalid, "the image changed") {
		t.Errorf("after a rebuild: %+v", ws)
	}
	if v := e.createStarted(t, model.VMCreateRequest{Name: "r1"}); !strings.Contains(v.Runtime.CreatedFrom, "the image changed") {
		t.Errorf("r1 created from %q", v.Runtime.CreatedFrom)
	}

	// --rm drops it; again is ENOTFOUND.
	if err := e.d.DropWarm(e.ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if ws := e.warmState(t); ws != nil {
		t.Errorf("after --rm: %+v", ws)
	}
	if err := e.d.DropWarm(e.ctx, "base"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("second drop: %v", err)
	}
	// image rm removes it with the image; every VM rm leaves the host
	// as it was.
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	vms, _ := e.d.store.ListVMs(e.ctx)
	for _, v := range vms {
		if err := e.d.DeleteVM(e.ctx, v.Name, api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
			t.Fatal(err)
		}
	}
	want(t, "after rm of every VM", anyTaps(e.hostState(), ""), anyTaps(before, ""))
	if err := e.d.DeleteImage(e.ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("warm state after image rm: %v", err)
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// TestWarmFailuresLeaveNothing: a warm run that fails leaves the warm
// state as it was and nothing of its hidden VM; a warm create that
// fails boots the VM cold, saying why, with nothing of the attempt
// left.
func TestWarmFailuresLeaveNothing(t *testing.T) {
	e := newTestDaemon(t, false)
	before := e.hostState()
	e.vmms.failSnapshot = "disk full"
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err == nil {
		t.Fatal("the warm run succeeded")
	}
	e.vmms.failSnapshot = ""
	if ws := e.warmState(t); ws != nil {
		t.Errorf("warm state after a failed warm run: %+v", ws)
	}
	if vms, _ := e.d.store.ListVMs(e.ctx); len(vms) != 0 {
		t.Errorf("rows after a failed warm run: %+v", vms)
	}
	want(t, "after a failed warm run", anyTaps(e.hostState(), ""), anyTaps(before, ""))
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	for _, at := range []string{"reidentify", "admitted"} {
		e.d.boot = fakeBooter{vmms: e.vmms, fail: errors.New("boom at " + at), failAt: at}
		name := "f-" + at
		v := e.createStarted(t, model.VMCreateRequest{Name: name})
		if v.State != model.VMStateRunning || v.Runtime.ForkOf != "" || !strings.Contains(v.Runtime.CreatedFrom, "cold boot (the warm state of base failed:") || !strings.Contains(v.Runtime.CreatedFrom, "boom at "+at) {
			t.Errorf("%s: state %s forkOf %q created from %q", name, v.State, v.Runtime.ForkOf, v.Runtime.CreatedFrom)
		}
		e.d.drops.Wait()
		if info := readSavedState(v.Runtime.VMDir); info.Complete || info.Partial {
			t.Errorf("%s: saved state left: %+v", name, info)
		}
		if err := e.d.DeleteVM(e.ctx, name, api.VMDeleteOptions{Force: true}, api.NoProgress); err != nil {
			t.Fatal(err)
		}
		want(t, "after rm of "+name, anyTaps(e.hostState(), ""), anyTaps(before, ""))
	}
	if ws := e.warmState(t); ws == nil || !ws.Valid {
		t.Errorf("the warm state after failed creates: %+v", ws)
	}
}

// TestReconcileAfterWarmCrashes: a crash at any step of a warm run or of
// a create from a warm state leaves, once reconciled, the warm state
// whole (the old one or the new, never half of one), no hidden VM, no
// half-made VM, and the host as it was.
func TestReconcileAfterWarmCrashes(t *testing.T) {
	points := append(stepNames((&Daemon{}).warmSteps()), stepNames((&Daemon{}).warmCreateSteps())...)
	points = append(points, "resume:loaded", "resume:vcpus-resumed", "resume:clock-set")
	for _, at := range points {
		t.Run(at, func(t *testing.T) {
			e := newTestDaemon(t, false)
			before := e.hostState()
			create := !strings.HasPrefix(at, "warm:")
			var old warmMeta
			if create {
				if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
					t.Fatal(err)
				}
				old, _ = readWarm(e.d.layout.warmDir(strings.Repeat("a", 64)), e.d.warmDisksRoot())
			}
			crashed := false
			e.d.onCrashPoint = func(s string) {
				if s == at {
					crashed = true
					panic("crash at " + s)
				}
			}
			func() {
				defer func() { recover() }()
				if create {
					e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "dev", ImageName: "base"}, api.NoProgress)
				} else {
					e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress)
				}
			}()
			e.d.onCrashPoint = nil
			if !crashed {
				t.Fatalf("the run never passed %s", at)
			}
			if err := e.d.reconcile(e.ctx, "startup"); err != nil {
				t.Fatal(err)
			}
			if vms, _ := e.d.store.ListVMs(e.ctx); len(vms) != 0 {
				t.Errorf("rows after reconcile: %+v", vms)
			}
			want(t, "after reconcile", anyTaps(e.hostState(), ""), anyTaps(before, ""))
			if ents, _ := os.ReadDir(e.d.layout.vmsDir()); len(ents) != 0 {
				t.Errorf("vm dirs after reconcile: %d", len(ents))
			}
			imgDir := e.d.layout.imageDir(strings.Repeat("a", 64))
			for _, n := range []string{warmNewDirName, warmOldDirName} {
				if _, err := os.Lstat(filepath.Join(imgDir, n)); err == nil {
					t.Errorf("%s left", n)
				}
			}
			m, err := readWarm(e.d.layout.warmDir(strings.Repeat("a", 64)), e.d.warmDisksRoot())
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if create {
					t.Error("the warm state is gone")
				}
			case err != nil:
				t.Errorf("half a warm state: %v", err)
			case create && m.MadeAt != old.MadeAt:
				t.Error("a create changed the warm state")
			}
			if ws := e.warmState(t); ws != nil && !ws.Valid {
				t.Errorf("warm state after reconcile: %+v", ws)
			}
		})
	}
}

// TestWarmHostileCallerAndPlantedFiles: a user may neither warm nor drop
// the warm state of an image that is not theirs, and such a refusal
// writes nothing; a warm state whose file was replaced by a link is not
// read (so never restored) and a create boots cold.
func TestWarmHostileCallerAndPlantedFiles(t *testing.T) {
	e := newTestDaemon(t, false)
	mallory := api.WithCaller(e.ctx, api.Caller{UID: 1001, GID: 1001})
	dir := e.d.layout.warmDir(strings.Repeat("a", 64))
	if _, err := e.d.WarmImage(mallory, "base", api.ImageWarmRequest{}, api.NoProgress); model.ErrorCode(err) != model.EFORBIDDEN {
		t.Fatalf("a user warming root's image: %v; want %s", err, model.EFORBIDDEN)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused warm wrote %s: %v", dir, err)
	}
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if err := e.d.DropWarm(mallory, "base"); model.ErrorCode(err) != model.EFORBIDDEN {
		t.Fatalf("a user dropping root's warm state: %v; want %s", err, model.EFORBIDDEN)
	}
	if _, err := readWarm(dir, ""); err != nil {
		t.Fatalf("the warm state after a refused drop: %v", err)
	}

	// A planted link in place of the memory file: the warm state is
	// refused, and a create that would fit it boots cold.
	mem := filepath.Join(dir, savedMemName)
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(target, []byte("not a snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mem); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, mem); err != nil {
		t.Fatal(err)
	}
	if _, err := readWarm(dir, ""); err == nil {
		t.Fatal("a warm state with a linked memory file was read")
	}
	v := e.createStarted(t, model.VMCreateRequest{Name: "after-plant"})
	if v.State != model.VMStateRunning || !strings.HasPrefix(v.Runtime.CreatedFrom, "cold boot") {
		t.Errorf("create over a planted warm state: state %s, created from %q; want a cold boot", v.State, v.Runtime.CreatedFrom)
	}
}

// TestWarmDisksInPool: a warm state whose disks are in the storage
// pool's directory is read whole only with that directory as the root
// its disks may be in; disks said to be elsewhere, or a disks directory
// that is a link or not the daemon's alone, make it unusable; pruning
// keeps the current disks and removes the others.
func TestWarmDisksInPool(t *testing.T) {
	e := newTestDaemon(t, false)
	imgID := strings.Repeat("a", 64)
	if _, err := e.d.WarmImage(e.ctx, "base", api.ImageWarmRequest{}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	dir := e.d.layout.warmDir(imgID)
	poolDir := t.TempDir()
	e.d.pool = &storage.Pool{Dir: poolDir}
	defer func() { e.d.pool = nil }()
	root := e.d.warmDisksRoot()
	disks := filepath.Join(root, imgID+".1")
	stale := filepath.Join(root, imgID+".0")
	other := filepath.Join(root, strings.Repeat("b", 64)+".0")
	for _, p := range []string{disks, stale, other} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{warmSystemName, warmWorkName} {
		if err := os.Rename(filepath.Join(dir, n), filepath.Join(disks, n)); err != nil {
			t.Fatal(err)
		}
	}
	setDisks := func(p string) {
		t.Helper()
		path := filepath.Join(dir, warmMetaName)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		m["disks_dir"] = p
		b, _ = json.Marshal(m)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setDisks(disks)
	m, err := readWarm(dir, root)
	if err != nil {
		t.Fatalf("warm state with its disks in the pool: %v", err)
	}
	if sys, _, _, _ := warmFiles(dir, m); sys != filepath.Join(disks, warmSystemName) {
		t.Errorf("system disk at %s", sys)
	}
	if _, err := readWarm(dir, ""); err == nil {
		t.Error("read with no pool open")
	}
	link := filepath.Join(root, imgID+".link")
	if err := os.Symlink(disks, link); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{t.TempDir(), filepath.Join(root, "..", "elsewhere"), link} {
		setDisks(bad)
		if _, err := readWarm(dir, root); err == nil {
			t.Errorf("disks said to be in %s: read", bad)
		}
	}
	os.Remove(link)
	setDisks(disks)
	if err := os.Chmod(disks, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := readWarm(dir, root); err == nil {
		t.Error("a disks dir others may read: read")
	}
	os.Chmod(disks, 0o700)

	e.d.pruneWarmDisks(imgID, disks)
	for p, want := range map[string]bool{disks: true, stale: false, other: true} {
		if _, err := os.Lstat(p); (err == nil) != want {
			t.Errorf("after pruning, %s exists: %v, want %v", p, err == nil, want)
		}
	}
	// Dropping the warm state takes its disks too.
	if err := e.d.DropWarm(e.ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(disks); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("disks after the drop: %v", err)
	}
}
