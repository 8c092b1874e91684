package daemon

import (
	"strings"
	"testing"

	"banger/internal/model"
)

func TestUsageOf(t *testing.T) {
	images := []model.Image{{ID: "a", OwnerUID: 1000}, {ID: "b", OwnerUID: 1000}, {ID: "r", OwnerUID: 0}}
	size := map[string]int64{"a": 100, "b": 50, "r": 1 << 40}
	vm := func(owner int, state model.VMState) model.VMRecord {
		return model.VMRecord{OwnerUID: owner, State: state, Spec: model.VMSpec{SystemOverlaySizeByte: 8, WorkDiskSizeBytes: 2}}
	}
	vms := []model.VMRecord{vm(1000, model.VMStateCreated), vm(1000, model.VMStateRunning), vm(1000, model.VMStateStopped), vm(1001, model.VMStateCreated)}
	got := usageOf(1000, images, vms, func(img model.Image) int64 { return size[img.ID] })
	want := usage{VMs: 3, Unstarted: 1, DiskBytes: 150 + 3*10}
	if got != want {
		t.Errorf("usage %+v, want %+v", got, want)
	}
}

func TestCheckUsage(t *testing.T) {
	l := model.UserLimits{VMs: 3, UnstartedVMs: 1, DiskBytes: 100}
	tests := []struct {
		name     string
		l        model.UserLimits
		cur, add usage
		key      string // "" for allowed
	}{
		{"room", l, usage{VMs: 2, DiskBytes: 50}, usage{VMs: 1, DiskBytes: 50}, ""},
		{"vms", l, usage{VMs: 3}, usage{VMs: 1}, "limits.vms"},
		{"unstarted", l, usage{VMs: 1, Unstarted: 1}, usage{VMs: 1, Unstarted: 1}, "limits.unstarted_vms"},
		{"a started create with unstarted at the limit", l, usage{VMs: 1, Unstarted: 1}, usage{VMs: 1}, ""},
		{"disk", l, usage{DiskBytes: 60}, usage{DiskBytes: 41}, "limits.disk"},
		{"already over, adding nothing", l, usage{VMs: 9, DiskBytes: 900}, usage{}, ""},
		{"no limits", model.UserLimits{}, usage{VMs: 1000}, usage{VMs: 1, Unstarted: 1, DiskBytes: 1 << 50}, ""},
	}
	for _, tt := range tests {
		err := checkUsage(1000, tt.l, tt.cur, tt.add)
		if tt.key == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if model.ErrorCode(err) != model.ELIMIT || !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), "uid 1000") {
			t.Errorf("%s: %v; want ELIMIT naming %s", tt.name, err, tt.key)
		}
	}
}
