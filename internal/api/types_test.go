package api

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"banger/internal/model"
)

// TestVMRowMatchesVMView: a VMRow has the JSON names of VMView's fields,
// so a full view decodes into a row (what a daemon without view=brief
// sends) and Row() gives the same row; renaming a field of the view
// cannot silently blank a column of `vm ls`.
func TestVMRowMatchesVMView(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	suspended := created.Add(time.Hour)
	auto := created.Add(2 * time.Hour)
	v := VMView{
		VMRecord: model.VMRecord{
			Name: "dev", State: model.VMStateSuspended, CreatedAt: created,
			Spec:    model.VMSpec{VCPUCount: 3, MemoryMiB: 768, WorkDiskSizeBytes: 5 << 30, NATEnabled: true},
			Runtime: model.VMRuntime{GuestIP: "172.16.2.9", SuspendedAt: suspended},
		},
		ImageName: "debian", AutoStopAt: &auto,
	}
	b, err := json.Marshal([]VMView{v})
	if err != nil {
		t.Fatal(err)
	}
	var rows []VMRow
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	r := rows[0]
	if !reflect.DeepEqual(r, v.Row()) {
		t.Errorf("decoded %+v, Row() gives %+v", r, v.Row())
	}
	if r.Name != "dev" || r.State != model.VMStateSuspended || r.ImageName != "debian" || !r.CreatedAt.Equal(created) ||
		r.Spec.VCPUCount != 3 || r.Spec.MemoryMiB != 768 || r.Spec.WorkDiskSizeBytes != 5<<30 || !r.Spec.NATEnabled ||
		r.Runtime.GuestIP != "172.16.2.9" || !r.Runtime.SuspendedAt.Equal(suspended) || r.AutoStopAt == nil || !r.AutoStopAt.Equal(auto) {
		t.Errorf("decoded %+v from %s", r, b)
	}
}

// TestListVMsView: view=brief lists rows with the view's values; another
// view is refused as EINVALID.
func TestListVMsView(t *testing.T) {
	c := serveTest(t, &contractBackend{})
	ctx := context.Background()
	full, err := c.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := c.ListVMRows(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(full) || len(rows) == 0 || !reflect.DeepEqual(rows[0], full[0].Row()) {
		t.Errorf("rows %+v, full views %+v", rows, full)
	}
	err = c.call(ctx, "GET", "/vms?view=all", nil, &rows)
	if model.ErrorCode(err) != model.EINVALID {
		t.Errorf("view=all: %v, want EINVALID", err)
	}
}
