package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

// TestVMLsTable: `vm ls` prints one row per VM with its columns, -q the
// names, --json the full views.
func TestVMLsTable(t *testing.T) {
	b := newTestBackend(t)
	b.vms["dev"] = api.VMView{VMRecord: model.VMRecord{Name: "dev", State: model.VMStateRunning, CreatedAt: model.Now(),
		Spec:    model.VMSpec{VCPUCount: 2, MemoryMiB: 1024, WorkDiskSizeBytes: 8 << 30, NATEnabled: true},
		Runtime: model.VMRuntime{GuestIP: "172.16.0.7", VMDir: "/var/lib/banger/vms/x"}}, ImageName: "debian"}
	a := serveBackend(t, b)
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		a.Stdout = &out
		a.client = nil
		if rc := a.Run(context.Background(), args); rc != 0 {
			t.Fatalf("%v: exit %d", args, rc)
		}
		return out.String()
	}
	table := run("vm", "ls")
	if f := strings.Fields(strings.Split(table, "\n")[1]); len(f) < 9 || f[0] != "dev" || f[1] != "running" || f[2] != "debian" || f[3] != "172.16.0.7" || f[4] != "2" || f[7] != "yes" {
		t.Errorf("vm ls:\n%s", table)
	}
	if q := run("vm", "ls", "-q"); q != "dev\n" {
		t.Errorf("vm ls -q: %q", q)
	}
	if j := run("vm", "ls", "--json"); !strings.Contains(j, `"vm_dir": "/var/lib/banger/vms/x"`) {
		t.Errorf("vm ls --json lost the full view:\n%s", j)
	}
}
