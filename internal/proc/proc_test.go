package proc

import (
	"os"
	"strings"
	"testing"
)

func TestFakeTree(t *testing.T) {
	root := t.TempDir()
	r := Reader{Root: root, PageSize: 4096}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(WriteFake(root, Process{PID: 10, PPID: 1, UID: 1500000002, Argv: []string{"/usr/bin/banger-vmm-qemu", "--api-sock", "/s/api.sock", "--id", "x"}, Ticks: 5, RSS: 10, VSZ: 1000, StartTicks: 77}, "/usr/bin/banger-vmm-qemu"))
	must(WriteFake(root, Process{PID: 11, PPID: 10, UID: 1500000002, Argv: []string{"qemu-system-x86_64", "-qmp", "/s/api.sock.qmp"}, Ticks: 100, RSS: 1000, VSZ: 5000}, ""))
	must(WriteFake(root, Process{PID: 12, PPID: 1, State: 'Z'}, ""))
	// A command name with spaces and parentheses does not confuse the
	// stat parser.
	must(WriteFake(root, Process{PID: 13, PPID: 1, Argv: []string{"a) b (c"}}, ""))
	os.MkdirAll(root+"/self", 0o755)

	pids, err := r.PIDs()
	if err != nil || len(pids) != 4 {
		t.Fatalf("PIDs = %v, %v", pids, err)
	}
	p, err := r.Get(10)
	if err != nil {
		t.Fatal(err)
	}
	if p.PPID != 1 || p.UID != 1500000002 || p.Ticks != 5 || p.RSS != 40960 || p.StartTicks != 77 || p.State != 'S' || p.Dead() {
		t.Errorf("Get(10) = %+v", p)
	}
	if v, ok := FlagValue(p.Argv, "--api-sock"); !ok || v != "/s/api.sock" {
		t.Errorf("FlagValue = %q %v", v, ok)
	}
	if v, ok := FlagValue([]string{"x", "--api-sock=/a"}, "--api-sock"); !ok || v != "/a" {
		t.Errorf("FlagValue = %q %v", v, ok)
	}
	if exe, err := r.Exe(10); err != nil || exe != "/usr/bin/banger-vmm-qemu" {
		t.Errorf("Exe = %q %v", exe, err)
	}
	if z, _ := r.Get(12); !z.Dead() {
		t.Errorf("zombie not dead: %+v", z)
	}
	if q, err := r.Get(13); err != nil || q.PPID != 1 || !strings.Contains(q.Argv[0], "(c") {
		t.Errorf("odd name: %+v %v", q, err)
	}
	tab, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ticks, rss, vsz := tab.Usage(10)
	if ticks != 105 || rss != 1010*4096 || vsz != 6000 {
		t.Errorf("Usage = %d %d %d", ticks, rss, vsz)
	}
	if _, err := r.Get(99); !os.IsNotExist(err) {
		t.Errorf("Get of a missing pid: %v", err)
	}
}

func TestHost(t *testing.T) {
	p, err := Host.Get(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.PPID != os.Getppid() || p.UID != os.Getuid() || len(p.Argv) == 0 || p.RSS == 0 {
		t.Errorf("self = %+v", p)
	}
	exe, _ := os.Executable()
	if got, err := Host.Exe(os.Getpid()); err != nil || got != exe {
		t.Errorf("Exe = %q %v; want %q", got, err, exe)
	}
}

func TestNetNS(t *testing.T) {
	ns, err := Host.NetNS(os.Getpid())
	if err != nil || !strings.HasPrefix(ns, "net:[") {
		t.Errorf("NetNS(self) = %q, %v", ns, err)
	}
	root := t.TempDir()
	if err := WriteFakeNetNS(root, 1, "net:[1]"); err != nil {
		t.Fatal(err)
	}
	r := Reader{Root: root}
	if ns, err := r.NetNS(1); err != nil || ns != "net:[1]" {
		t.Errorf("fake NetNS(1) = %q, %v", ns, err)
	}
	if _, err := r.NetNS(2); err == nil {
		t.Error("NetNS of a missing process succeeded")
	}
}

func TestListWhere(t *testing.T) {
	root := t.TempDir()
	r := Reader{Root: root, PageSize: 4096}
	for _, p := range []Process{
		{PID: 10, PPID: 1, UID: 7, Argv: []string{"vmm", "--api-sock", "/s/a.sock"}},
		{PID: 11, PPID: 1, UID: 8, Argv: []string{"vmm", "--api-sock", "/s/b.sock"}},
		{PID: 12, PPID: 1, State: 'Z'},
		{PID: 13, PPID: 1, UID: 9, Argv: []string{"copycat", "--api-sock=/s/a.sock"}},
	} {
		if err := WriteFake(root, p, ""); err != nil {
			t.Fatal(err)
		}
	}
	var seen []int
	got, err := r.ListWhere(func(argv []string) bool {
		v, ok := FlagValue(argv, "--api-sock")
		return ok && v == "/s/a.sock"
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range got {
		seen = append(seen, p.PID)
		// What passes the filter is read whole, as Get reads it.
		if full, _ := r.Get(p.PID); full.UID != p.UID || full.State != p.State || len(full.Argv) != len(p.Argv) {
			t.Errorf("ListWhere gave %+v, Get gives %+v", p, full)
		}
	}
	if len(seen) != 2 || seen[0] != 10 || seen[1] != 13 {
		t.Errorf("ListWhere = %v, want [10 13]", seen)
	}
	if none, err := r.ListWhere(func([]string) bool { return false }); err != nil || len(none) != 0 {
		t.Errorf("ListWhere(nothing) = %v, %v", none, err)
	}
}
