package daemon

import (
	"reflect"
	"testing"
	"time"

	"banger/internal/model"
)

// TestPlanReconcileSavedStates: the planner's cases for suspend and
// resume cut short, saved states that no longer match their row, and
// leftovers of a move or drop.
func TestPlanReconcileSavedStates(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	complete := savedStateInfo{Complete: true, Bytes: 70 << 20, At: at}
	running := obsVM("run", model.VMStateRunning, false)
	suspended := obsVM("sus", model.VMStateSuspended, false)
	stopped := obsVM("stp", model.VMStateStopped, false)

	tests := []struct {
		name string
		rows []vmObservation
		want reconcilePlan
	}{
		{
			name: "suspended with its saved state and nothing held: left alone",
			rows: []vmObservation{{VM: suspended, Saved: complete}},
			want: reconcilePlan{},
		},
		{
			name: "suspend cut short after the state was kept, vmm paused: killed, suspended",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, Saved: complete}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, KillPID: 42,
				NewState: model.VMStateSuspended, Saved: complete, Reason: "a suspend was interrupted (daemon restarted) after its state was saved; the VM is suspended"}}},
		},
		{
			name: "suspend cut short after the state was kept, vmm gone: suspended",
			rows: []vmObservation{{VM: running, Handles: vmHandles{Tap: "bgtap1"}, Saved: complete}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: running.ID, Handles: vmHandles{Tap: "bgtap1"},
				NewState: model.VMStateSuspended, Saved: complete, Reason: "a suspend was interrupted (daemon restarted) after its state was saved; the VM is suspended"}}},
		},
		{
			name: "suspend cut short before the state was kept, vmm alive: adopted, the vmm's files go",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, Saved: savedStateInfo{Partial: true}}},
			want: reconcilePlan{
				Adopt:              []adoptAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1"}}},
				TapsInUse:          []string{"bgtap1"},
				RemoveSavedPartial: []string{running.Runtime.VMDir},
			},
		},
		{
			name: "suspend cut short before the state was kept, vmm dead: stopped, disks kept",
			rows: []vmObservation{{VM: running, Handles: vmHandles{Tap: "bgtap1"}, Saved: savedStateInfo{Partial: true}}},
			want: reconcilePlan{
				Cleanup: []cleanupAction{{VMID: running.ID, Handles: vmHandles{Tap: "bgtap1"}, NewState: model.VMStateStopped,
					Reason: "a suspend was interrupted (daemon restarted) before its state was kept; the VM was stopped, its disks are intact"}},
				RemoveSavedPartial: []string{running.Runtime.VMDir},
			},
		},
		{
			name: "resume cut short before using the saved state: vmm killed, still suspended",
			rows: []vmObservation{{VM: suspended, PID: 7, Handles: vmHandles{PID: 7, Tap: "bgtap2"}, Saved: complete}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: suspended.ID, Handles: vmHandles{PID: 7, Tap: "bgtap2"}, KillPID: 7,
				NewState: model.VMStateSuspended, Saved: complete, Reason: "a resume was interrupted (daemon restarted); the VM is still suspended"}}},
		},
		{
			name: "resume cut short after the saved state went: vmm killed, stopped",
			rows: []vmObservation{{VM: suspended, PID: 7, Handles: vmHandles{PID: 7, Tap: "bgtap2"}}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: suspended.ID, Handles: vmHandles{PID: 7, Tap: "bgtap2"}, KillPID: 7,
				NewState: model.VMStateStopped, Reason: "a resume was interrupted (daemon restarted) after its saved state was used; the VM was stopped, its disks are intact"}}},
		},
		{
			name: "resume cut short before its vmm, tap held: freed, still suspended",
			rows: []vmObservation{{VM: suspended, Handles: vmHandles{Tap: "bgtap2"}, Saved: complete}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: suspended.ID, Handles: vmHandles{Tap: "bgtap2"},
				NewState: model.VMStateSuspended, Reason: "leftovers of an interrupted start or stop were removed"}}},
		},
		{
			name: "suspended row whose saved state is gone: stopped",
			rows: []vmObservation{{VM: suspended}},
			want: reconcilePlan{Cleanup: []cleanupAction{{VMID: suspended.ID, NewState: model.VMStateStopped,
				Reason: "its saved state is gone; the next start boots it from its disks"}}},
		},
		{
			name: "a stopped vm's saved state goes; a suspended one's partial move goes, its saved state stays",
			rows: []vmObservation{{VM: stopped, Saved: complete}, {VM: suspended, Saved: savedStateInfo{Complete: true, Partial: true, Bytes: 1, At: at}}},
			want: reconcilePlan{DropSaved: []string{stopped.Runtime.VMDir}, RemoveSavedPartial: []string{suspended.Runtime.VMDir}},
		},
		{
			name: "a busy vm's files are not touched",
			rows: []vmObservation{{VM: stopped, Busy: true, Saved: savedStateInfo{Complete: true, Partial: true}}},
			want: reconcilePlan{NATKeep: []string{stopped.ID}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planReconcile("/s/vms", tt.rows, hostObservation{})
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("plan:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
