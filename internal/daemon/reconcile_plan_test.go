package daemon

import (
	"reflect"
	"testing"

	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/storage"
)

func obsVM(name string, state model.VMState, nat bool) model.VMRecord {
	id := name + "00000000000000000000"
	return model.VMRecord{
		ID: id, Name: name, State: state,
		Spec: model.VMSpec{NATEnabled: nat},
		Runtime: model.VMRuntime{
			VMDir:         "/s/vms/" + model.ShortID(id),
			APISockPath:   "/s/vms/" + model.ShortID(id) + "/api.sock",
			SystemOverlay: "/s/vms/" + model.ShortID(id) + "/system.img",
			GuestIP:       "172.16.0.2",
		},
	}
}

func TestPlanReconcile(t *testing.T) {
	running := obsVM("alive", model.VMStateRunning, true)
	dead := obsVM("dead", model.VMStateRunning, true)
	stopped := obsVM("stopped", model.VMStateStopped, false)
	created := obsVM("created", model.VMStateCreated, false)
	errored := obsVM("errored", model.VMStateError, false)

	tests := []struct {
		name string
		rows []vmObservation
		host hostObservation
		want reconcilePlan
	}{
		{
			name: "nothing at all",
			want: reconcilePlan{},
		},
		{
			name: "live running vm is adopted with its tap, nat kept",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, NATRules: true, NATFull: true}},
			host: hostObservation{VMDirs: []string{model.ShortID(running.ID)}, VMMs: []vmmProcess{{PID: 42, APISock: running.Runtime.APISockPath}}},
			want: reconcilePlan{
				Adopt:     []adoptAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1"}}},
				NATKeep:   []string{running.ID},
				TapsInUse: []string{"bgtap1"},
			},
		},
		{
			name: "live vm with missing rules gets them back; lost handles.json is noted",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, HandlesNote: "handles.json missing; rebuilt from the OS"}},
			host: hostObservation{VMDirs: []string{model.ShortID(running.ID)}},
			want: reconcilePlan{
				Adopt:     []adoptAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, RestoreNAT: true, Note: "handles.json missing; rebuilt from the OS"}},
				NATKeep:   []string{running.ID},
				TapsInUse: []string{"bgtap1"},
			},
		},
		{
			name: "partial rules are restored",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, NATRules: true, NATFull: false}},
			want: reconcilePlan{
				Adopt:     []adoptAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1"}, RestoreNAT: true}},
				NATKeep:   []string{running.ID},
				TapsInUse: []string{"bgtap1"},
			},
		},
		{
			name: "running row whose vmm died is cleaned up and stopped, its tap freed",
			rows: []vmObservation{{VM: dead, Handles: vmHandles{Tap: "bgtap2"}, NATRules: true, NATFull: true}},
			want: reconcilePlan{
				Cleanup: []cleanupAction{{VMID: dead.ID, Handles: vmHandles{Tap: "bgtap2"}, NewState: model.VMStateStopped, Reason: "the VMM exited while the daemon was not watching"}},
			},
		},
		{
			name: "vmm alive for a row that never finished starting is killed",
			rows: []vmObservation{{VM: created, PID: 77, Handles: vmHandles{PID: 77, Tap: "bgtap3"}}},
			want: reconcilePlan{
				Cleanup: []cleanupAction{{VMID: created.ID, Handles: vmHandles{PID: 77, Tap: "bgtap3"}, KillPID: 77, NewState: model.VMStateStopped, Reason: "a start was interrupted (daemon restarted); the VM was stopped"}},
			},
		},
		{
			name: "stopped row still holding a tap and rules is cleaned, state kept",
			rows: []vmObservation{{VM: stopped, Handles: vmHandles{Tap: "bgtap4"}, NATRules: true}},
			want: reconcilePlan{
				Cleanup: []cleanupAction{{VMID: stopped.ID, Handles: vmHandles{Tap: "bgtap4"}, NewState: model.VMStateStopped, Reason: "leftovers of an interrupted start or stop were removed"}},
			},
		},
		{
			name: "error row with leftovers becomes stopped",
			rows: []vmObservation{{VM: errored, Handles: vmHandles{Overlay: storage.Attached{DMName: "banger-errored00000"}}}},
			want: reconcilePlan{
				Cleanup: []cleanupAction{{VMID: errored.ID, Handles: vmHandles{Overlay: storage.Attached{DMName: "banger-errored00000"}}, NewState: model.VMStateStopped, Reason: "leftovers of an interrupted start or stop were removed"}},
			},
		},
		{
			name: "clean stopped and created rows need nothing",
			rows: []vmObservation{{VM: stopped}, {VM: created}},
			host: hostObservation{VMDirs: []string{model.ShortID(stopped.ID)}},
			want: reconcilePlan{},
		},
		{
			name: "orphans: vmm, dm, loops and dirs no row explains",
			rows: []vmObservation{{VM: running, PID: 42, Handles: vmHandles{PID: 42, Tap: "bgtap1", Overlay: storage.Attached{DMName: "banger-alive0000000", Loops: []string{"/dev/loop0", "/dev/loop1"}}}, NATRules: true, NATFull: true}},
			host: hostObservation{
				StateDir: "/s",
				VMMs:     []vmmProcess{{PID: 42, APISock: running.Runtime.APISockPath}, {PID: 99, APISock: "/s/vms/ghost/api.sock"}},
				DMs: []storage.DMDevice{
					{Name: "banger-alive0000000", Deps: []string{"7:0", "7:1"}},
					{Name: "banger-ghost", Deps: []string{"7:2", "7:3"}},
				},
				Loops: []storage.LoopDevice{
					{Dev: "/dev/loop0", BackFile: "/s/images/base0000000/rootfs.ext4", MajMin: "7:0"},
					{Dev: "/dev/loop1", BackFile: "/s/vms/alive0000000/system.img", MajMin: "7:1"},
					{Dev: "/dev/loop2", BackFile: "/s/images/base0000000/rootfs.ext4", MajMin: "7:2"},
					{Dev: "/dev/loop3", BackFile: "/s/vms/ghost/system.img", MajMin: "7:3"},
					// A user's own loops are not banger's, even on a
					// file the user once registered as an image.
					{Dev: "/dev/loop4", BackFile: "/home/user/their.img", MajMin: "7:4"},
					{Dev: "/dev/loop5", BackFile: "/home/user/rootfs.ext4", MajMin: "7:5"},
					{Dev: "/dev/loop6", BackFile: "/s-other/x.img", MajMin: "7:6"},
				},
				VMDirs: []string{model.ShortID(running.ID), "ghost"},
				NAT:    []network.NAT{{VMID: "ghost", Tap: "bgtap9"}},
			},
			want: reconcilePlan{
				Adopt:       []adoptAction{{VMID: running.ID, Handles: vmHandles{PID: 42, Tap: "bgtap1", Overlay: storage.Attached{DMName: "banger-alive0000000", Loops: []string{"/dev/loop0", "/dev/loop1"}}}}},
				KillVMMs:    []vmmProcess{{PID: 99, APISock: "/s/vms/ghost/api.sock"}},
				RemoveDMs:   []string{"banger-ghost"},
				DetachLoops: []string{"/dev/loop2", "/dev/loop3"},
				NATKeep:     []string{running.ID},
				TapsInUse:   []string{"bgtap1"},
				RemoveDirs:  []string{"/s/vms/ghost"},
			},
		},
		{
			name: "the storage pool's loop is never an orphan",
			rows: []vmObservation{{VM: stopped}},
			host: hostObservation{
				StateDir: "/s",
				PoolFile: "/s/pool.img",
				Loops: []storage.LoopDevice{
					{Dev: "/dev/loop0", BackFile: "/s/pool.img", MajMin: "7:0"},
					{Dev: "/dev/loop1", BackFile: "/s/pool/vms/x/system.img", MajMin: "7:1"},
				},
				VMDirs: []string{model.ShortID(stopped.ID)},
			},
			want: reconcilePlan{DetachLoops: []string{"/dev/loop1"}},
		},
		{
			name: "a busy vm keeps its tap and rules, and loops wait",
			rows: []vmObservation{{VM: created, Busy: true, Handles: vmHandles{Tap: "bgtap5"}}},
			host: hostObservation{
				StateDir: "/s",
				Loops:    []storage.LoopDevice{{Dev: "/dev/loop0", BackFile: "/s/vms/x/system.img", MajMin: "7:0"}},
				DMs:      []storage.DMDevice{{Name: "banger-created00000"}},
				VMMs:     []vmmProcess{{PID: 5, APISock: created.Runtime.APISockPath}},
			},
			want: reconcilePlan{
				NATKeep:   []string{created.ID},
				TapsInUse: []string{"bgtap5"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planReconcile("/s/vms", tt.rows, tt.host)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("plan:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
