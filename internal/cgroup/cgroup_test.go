package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"banger/internal/testutil"
)

// fakeTree makes a cgroup filesystem look-alike: the kernel's control
// files are plain files here, which is enough to check what is written
// where.
func fakeTree(t *testing.T, mode Mode) string {
	t.Helper()
	root := t.TempDir()
	switch mode {
	case ModeV2:
		os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
		os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), nil, 0o644)
		// The parent's controllers file appears when the kernel makes the
		// dir; here the test makes it.
		os.MkdirAll(filepath.Join(root, "banger"), 0o755)
		os.WriteFile(filepath.Join(root, "banger", "cgroup.controllers"), []byte("cpu io memory pids\n"), 0o644)
	case ModeV1:
		for _, c := range []string{"cpu", "memory", "pids", "blkio"} {
			os.MkdirAll(filepath.Join(root, c), 0o755)
			os.WriteFile(filepath.Join(root, c, "cgroup.procs"), nil, 0o644)
		}
	}
	return root
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDetect(t *testing.T) {
	if m := Detect(fakeTree(t, ModeV2), "banger"); m.Mode() != ModeV2 {
		t.Errorf("v2 tree: got %s (%s)", m.Mode(), m.Why())
	}
	if m := Detect(fakeTree(t, ModeV1), "banger"); m.Mode() != ModeV1 {
		t.Errorf("v1 tree: got %s (%s)", m.Mode(), m.Why())
	}
	m := Detect(t.TempDir(), "banger")
	if m.Mode() != ModeNone || !strings.Contains(m.Why(), "cpu, memory, pids") {
		t.Errorf("empty tree: got %s (%s)", m.Mode(), m.Why())
	}
	if err := m.Create("x", Limits{}); err == nil {
		t.Error("Create without a hierarchy succeeded")
	}
}

func TestCreateV2(t *testing.T) {
	root := fakeTree(t, ModeV2)
	m := Detect(root, "banger")
	lim := Limits{CPUQuotaUs: 200000, MemoryMaxBytes: 3 << 30, PidsMax: 512, IOWeight: 100}
	if err := m.Create("vm-abc", lim); err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(root, "banger", "vm-abc")
	for file, want := range map[string]string{
		"cpu.max":         "200000 100000",
		"memory.max":      "3221225472",
		"memory.swap.max": "0",
		"pids.max":        "512",
		"io.weight":       "default 100",
	} {
		if got := read(t, filepath.Join(d, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if got := read(t, filepath.Join(root, "cgroup.subtree_control")); got != "+cpu +memory +pids +io" {
		t.Errorf("root subtree_control = %q", got)
	}
	got, err := m.Limits("vm-abc")
	if err != nil || got != lim {
		t.Errorf("Limits = %+v, %v; want %+v", got, err, lim)
	}
	os.WriteFile(filepath.Join(d, "memory.events"), []byte("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n"), 0o644)
	os.WriteFile(filepath.Join(d, "cpu.stat"), []byte("usage_usec 100\nnr_periods 10\nnr_throttled 4\nthrottled_usec 1234\n"), 0o644)
	os.WriteFile(filepath.Join(d, "pids.events"), []byte("max 2\n"), 0o644)
	ev, _ := m.Events("vm-abc")
	if ev.MemoryMax != 7 || ev.OOMKills != 1 || ev.CPUThrottled != 4 || ev.CPUThrottledUs != 1234 || ev.PidsMax != 2 {
		t.Errorf("Events = %+v", ev)
	}
	names, _ := m.List()
	if len(names) != 1 || names[0] != "vm-abc" {
		t.Errorf("List = %v", names)
	}
}

func TestCreateV1(t *testing.T) {
	root := fakeTree(t, ModeV1)
	m := Detect(root, "banger")
	if err := m.Create("vm-abc", Limits{CPUQuotaUs: 100000, MemoryMaxBytes: 1 << 30, PidsMax: 64, IOWeight: 100}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"cpu/banger/vm-abc/cpu.cfs_quota_us":         "100000",
		"cpu/banger/vm-abc/cpu.cfs_period_us":        "100000",
		"memory/banger/vm-abc/memory.limit_in_bytes": "1073741824",
		"pids/banger/vm-abc/pids.max":                "64",
	} {
		if got := read(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// No proportional IO scheduler: no blkio weight file is invented.
	if _, err := os.Stat(filepath.Join(root, "blkio/banger/vm-abc/blkio.weight")); err == nil {
		t.Error("blkio.weight written without a scheduler offering it")
	}
	if err := m.Add("vm-abc", 4242); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"cpu", "memory", "pids", "blkio"} {
		if got := read(t, filepath.Join(root, c, "banger/vm-abc/cgroup.procs")); got != "4242" {
			t.Errorf("%s procs = %q", c, got)
		}
	}
}

func TestBadNames(t *testing.T) {
	m := Detect(fakeTree(t, ModeV2), "banger")
	for _, n := range []string{"", "..", "a/b", "../../etc", "UPPER", strings.Repeat("a", 65)} {
		if err := m.Create(n, Limits{}); err == nil {
			t.Errorf("Create(%q) succeeded", n)
		}
	}
}

// TestRealHierarchy creates a group in the host's real hierarchy, puts a
// process in it, and checks the kernel took the limits.
func TestRealHierarchy(t *testing.T) {
	testutil.RequireRoot(t)
	m := Detect("/sys/fs/cgroup", "banger-test")
	if m.Mode() == ModeNone {
		t.Skip(m.Why())
	}
	name := "t" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))[:10]
	lim := Limits{CPUQuotaUs: 50000, MemoryMaxBytes: 256 << 20, PidsMax: 16}
	if err := m.Create(name, lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Remove(name)
		for _, c := range []string{"", "cpu", "memory", "pids", "blkio"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, "banger-test"))
		}
	})
	got, err := m.Limits(name)
	if err != nil || got != lim {
		t.Fatalf("Limits = %+v, %v; want %+v", got, err, lim)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if err := m.Add(name, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	procs, _ := m.Procs(name)
	if len(procs) != 1 || procs[0] != cmd.Process.Pid {
		t.Errorf("Procs = %v, want [%d]", procs, cmd.Process.Pid)
	}
	cg := read(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/cgroup")
	if !strings.Contains(cg, "/banger-test/"+name) {
		t.Errorf("/proc/PID/cgroup does not show the group:\n%s", cg)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := m.Remove(name); err != nil {
		t.Fatal(err)
	}
	if names, _ := m.List(); len(names) != 0 {
		t.Errorf("List after Remove = %v", names)
	}
}

func TestHierarchies(t *testing.T) {
	v1, v2 := hierarchies("9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n4:memory:/process_api/x\n2:cpuacct:/\n1:cpu:/\n0::/\n")
	if strings.Join(v1, " ") != "blkio cpu memory pids" || v2 {
		t.Errorf("hybrid: %v %v", v1, v2)
	}
	v1, v2 = hierarchies("3:cpu,cpuacct:/\n5:memory:/\n")
	if strings.Join(v1, " ") != "cpu,cpuacct memory" || v2 {
		t.Errorf("joined controllers: %v %v", v1, v2)
	}
	v1, v2 = hierarchies("0::/user.slice\n")
	if len(v1) != 0 || !v2 {
		t.Errorf("v2: %v %v", v1, v2)
	}
}

// TestMountHidden runs the check in `ip netns exec`, which mounts a fresh
// /sys without the cgroup mounts (as the quickstart and the tests run the
// daemon), and checks the hierarchies come back.
func TestMountHidden(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip")
	ns := "bgcg-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestMountHiddenChild$", "-test.v")
	cmd.Env = append(os.Environ(), "BANGER_CGROUP_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMountHiddenChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

func TestMountHiddenChild(t *testing.T) {
	if os.Getenv("BANGER_CGROUP_CHILD") != "1" {
		t.Skip("run by TestMountHidden in a mount namespace of its own")
	}
	if Detect("/sys/fs/cgroup", "banger").Mode() != ModeNone {
		t.Fatal("the hierarchy is visible before MountHidden")
	}
	what, err := MountHidden("/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	m := Detect("/sys/fs/cgroup", "banger-test-hidden")
	if m.Mode() == ModeNone {
		t.Fatalf("still hidden after MountHidden (%s)", what)
	}
	t.Log(what, "→", m.Why())
	if err := m.Create("t1", Limits{PidsMax: 9}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.Remove("t1")
		for _, c := range []string{"", "cpu", "memory", "pids", "blkio"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, "banger-test-hidden"))
		}
	}()
	if l, err := m.Limits("t1"); err != nil || l.PidsMax != 9 {
		t.Errorf("limits %+v %v", l, err)
	}
}
