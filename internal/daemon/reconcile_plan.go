package daemon

import (
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/proc"
	"banger/internal/storage"
)

// vmObservation is what the OS shows of one VM row.
type vmObservation struct {
	VM model.VMRecord
	// PID is the VM's live VMM (its API socket, uid and binary), or 0.
	PID int
	// Handles are the best known handles: the cache, else handles.json;
	// the tap falls back to Runtime.TapDevice; the overlay is what the OS
	// shows attached.
	Handles vmHandles
	// HandlesNote says why handles.json could not be used, if it could not.
	HandlesNote string
	// NAT is the state of the VM's tagged rules: none, all, or some.
	NATRules bool
	NATFull  bool
	// FilterFull says the VM's packet filter is whole on the host.
	FilterFull bool
	// Busy says another operation holds the VM's lock, or several
	// processes claim to be its VMM: reconcile leaves it and everything
	// it holds alone.
	Busy bool
	// Saved is what of a saved state (suspend) is in the VM's dir.
	Saved savedStateInfo
}

// hostObservation is everything banger-shaped on the host.
type hostObservation struct {
	Taps []string
	NAT  []network.NAT
	// Filters are the VMs with packet filter objects; FiltersSeen says
	// nft could list them; FilterBase says the base filter is whole.
	Filters     []network.FilterInfo
	FiltersSeen bool
	FilterBase  bool
	DMs         []storage.DMDevice
	Loops       []storage.LoopDevice
	// VMMs are live VMM processes whose API socket is under the vms dir.
	VMMs []vmmProcess
	// VMDirs are the entries of the vms dir.
	VMDirs []string
	// StateDir holds every file whose loop devices are banger's: the
	// images' copies and the VMs' disks. A loop on any other file is
	// someone else's, whatever an image row once named.
	StateDir string
	// PoolFile is the storage pool's file, whose loop device is the
	// pool's, never an orphan.
	PoolFile string
	// Cgroups are the groups under the daemon's cgroup parent.
	Cgroups []string
	// Procs are the host's processes when observed.
	Procs []proc.Process
}

type vmmProcess struct {
	PID     int
	APISock string
	UID     int
}

// reconcilePlan is what to do to make the host and the database agree.
type reconcilePlan struct {
	// Adopt are live VMs: rebuild their handles, restore NAT and DNS.
	Adopt []adoptAction
	// Cleanup are VMs whose runtime must be undone (their VMM is dead, or
	// alive for a row that is not running and must be killed first).
	Cleanup []cleanupAction
	// KillVMMs are VMM processes no row explains.
	KillVMMs []vmmProcess
	// RemoveDMs and DetachLoops are device leftovers no live VM uses.
	RemoveDMs   []string
	DetachLoops []string
	// NATKeep are the IDs whose tagged rules stay; every other tagged
	// rule goes.
	NATKeep []string
	// TapsInUse are the taps live VMs hold; the pool takes the rest.
	TapsInUse []string
	// RemoveDirs are VM dirs no row owns.
	RemoveDirs []string
	// RemoveCgroups are cgroups of no live VM.
	RemoveCgroups []string
	// DropSaved are VM dirs whose saved state no longer matches their
	// VM (it is not suspended): it goes.
	DropSaved []string
	// RemoveSavedPartial are VM dirs with leftovers of a suspend, resume
	// or drop cut short: they go (a complete saved state stays).
	RemoveSavedPartial []string
}

type adoptAction struct {
	VMID       string
	Handles    vmHandles
	RestoreNAT bool
	// Note explains anything unusual (lost handles.json).
	Note string
}

type cleanupAction struct {
	VMID    string
	Handles vmHandles
	// KillPID is a live VMM to kill first (a start interrupted by a crash).
	KillPID  int
	NewState model.VMState
	Reason   string
	// Saved is the saved state kept when NewState is suspended.
	Saved savedStateInfo
}

// planReconcile decides, from the rows and what the OS shows, what
// reconcile does. It is pure: no I/O, so every combination is
// table-tested.
func planReconcile(vmsDir string, rows []vmObservation, host hostObservation) reconcilePlan {
	var p reconcilePlan
	live := map[string]bool{}      // VM IDs that stay running
	ownedDirs := map[string]bool{} // dir names rows own
	liveDM := map[string]bool{}
	liveDeps := map[string]bool{}
	rowSocks := map[string]bool{}
	keepCgroup := map[string]bool{}
	busy := false

	sort.Slice(rows, func(i, j int) bool { return rows[i].VM.Name < rows[j].VM.Name })
	for _, r := range rows {
		vm := r.VM
		ownedDirs[filepath.Base(vm.Runtime.VMDir)] = true
		rowSocks[vm.Runtime.APISockPath] = true
		switch {
		case r.Busy:
			busy = true
			keepCgroup[vmCgroupName(vm.ID)] = true
			if r.Handles.Tap != "" {
				p.TapsInUse = append(p.TapsInUse, r.Handles.Tap)
			}
			if r.Handles.Overlay.DMName != "" {
				liveDM[r.Handles.Overlay.DMName] = true
			}
			p.NATKeep = append(p.NATKeep, vm.ID)
		case vm.State == model.VMStateRunning && r.Saved.Complete:
			// A suspend was cut short after the daemon kept the saved
			// state: the guest has not run since (it was paused before
			// the snapshot), so the suspend is finished.
			p.Cleanup = append(p.Cleanup, cleanupAction{
				VMID: vm.ID, Handles: r.Handles, KillPID: r.PID,
				NewState: model.VMStateSuspended, Saved: r.Saved,
				Reason: "a suspend was interrupted (daemon restarted) after its state was saved; the VM is suspended",
			})
		case r.PID > 0 && vm.State == model.VMStateSuspended:
			// A resume was cut short: before it used the saved state the
			// VM stays suspended; after, the guest may have run, so it is
			// stopped and boots from its disks.
			c := cleanupAction{
				VMID: vm.ID, Handles: r.Handles, KillPID: r.PID,
				NewState: model.VMStateStopped,
				Reason:   "a resume was interrupted (daemon restarted) after its saved state was used; the VM was stopped, its disks are intact",
			}
			if r.Saved.Complete {
				c.NewState, c.Saved = model.VMStateSuspended, r.Saved
				c.Reason = "a resume was interrupted (daemon restarted); the VM is still suspended"
			}
			p.Cleanup = append(p.Cleanup, c)
		case r.PID > 0 && vm.State == model.VMStateRunning:
			live[vm.ID] = true
			keepCgroup[vmCgroupName(vm.ID)] = true
			p.Adopt = append(p.Adopt, adoptAction{
				VMID: vm.ID, Handles: r.Handles,
				RestoreNAT: vm.Spec.NATEnabled && !r.NATFull,
				Note:       r.HandlesNote,
			})
			if r.Handles.Tap != "" {
				p.TapsInUse = append(p.TapsInUse, r.Handles.Tap)
			}
			if r.Handles.Overlay.DMName != "" {
				liveDM[r.Handles.Overlay.DMName] = true
			}
			if vm.Spec.NATEnabled {
				p.NATKeep = append(p.NATKeep, vm.ID)
			}
		case r.PID > 0:
			// A VMM runs for a row that is not running: a start cut short
			// by a crash. The start never finished; undo it.
			p.Cleanup = append(p.Cleanup, cleanupAction{
				VMID: vm.ID, Handles: r.Handles, KillPID: r.PID,
				NewState: model.VMStateStopped,
				Reason:   "a start was interrupted (daemon restarted); the VM was stopped",
			})
		case vm.State == model.VMStateRunning:
			reason := "the VMM exited while the daemon was not watching"
			if r.Saved.Partial {
				reason = "a suspend was interrupted (daemon restarted) before its state was kept; the VM was stopped, its disks are intact"
			}
			p.Cleanup = append(p.Cleanup, cleanupAction{
				VMID: vm.ID, Handles: r.Handles,
				NewState: model.VMStateStopped,
				Reason:   reason,
			})
		case vm.State == model.VMStateSuspended && !r.Saved.Complete:
			p.Cleanup = append(p.Cleanup, cleanupAction{
				VMID: vm.ID, Handles: r.Handles,
				NewState: model.VMStateStopped,
				Reason:   "its saved state is gone; the next start boots it from its disks",
			})
		case holdsAnything(r):
			// Not running and no VMM, but something is still held (a
			// crash between steps of start or stop).
			next := vm.State
			if next == model.VMStateError {
				next = model.VMStateStopped
			}
			p.Cleanup = append(p.Cleanup, cleanupAction{
				VMID: vm.ID, Handles: r.Handles, NewState: next,
				Reason: "leftovers of an interrupted start or stop were removed",
			})
		}
	}

	for _, r := range rows {
		if r.Busy {
			continue
		}
		keep := r.VM.State == model.VMStateSuspended || r.VM.State == model.VMStateRunning
		if r.Saved.Complete && !keep {
			p.DropSaved = append(p.DropSaved, r.VM.Runtime.VMDir)
		} else if r.Saved.Partial {
			p.RemoveSavedPartial = append(p.RemoveSavedPartial, r.VM.Runtime.VMDir)
		}
	}
	for _, v := range host.VMMs {
		if !rowSocks[v.APISock] {
			p.KillVMMs = append(p.KillVMMs, v)
		}
	}
	for _, dm := range host.DMs {
		if !liveDM[dm.Name] && !busy {
			p.RemoveDMs = append(p.RemoveDMs, dm.Name)
		} else {
			for _, dep := range dm.Deps {
				liveDeps[dep] = true
			}
		}
	}
	for _, l := range host.Loops {
		// A busy VM may be attaching loops it has not recorded yet, so
		// loops wait for a sweep when nothing is in flight.
		if busy || liveDeps[l.MajMin] || !ownsFile(host, l.BackFile) || (host.PoolFile != "" && l.BackFile == host.PoolFile) {
			continue
		}
		p.DetachLoops = append(p.DetachLoops, l.Dev)
	}
	for _, name := range host.VMDirs {
		if !ownedDirs[name] {
			p.RemoveDirs = append(p.RemoveDirs, filepath.Join(vmsDir, name))
		}
	}
	for _, name := range host.Cgroups {
		if !keepCgroup[name] {
			p.RemoveCgroups = append(p.RemoveCgroups, name)
		}
	}
	sort.Strings(p.RemoveCgroups)
	sort.Strings(p.NATKeep)
	sort.Strings(p.TapsInUse)
	sort.Strings(p.RemoveDMs)
	sort.Strings(p.DetachLoops)
	sort.Strings(p.RemoveDirs)
	sort.Strings(p.DropSaved)
	sort.Strings(p.RemoveSavedPartial)
	return p
}

// holdsAnything reports whether a stopped row still has runtime leftovers.
func holdsAnything(r vmObservation) bool {
	return r.Handles.Tap != "" || r.NATRules || r.Handles.Overlay.DMName != "" || len(r.Handles.Overlay.Loops) > 0
}

// ownsFile reports whether a loop's backing file is banger's: a file
// under the state dir.
func ownsFile(host hostObservation, file string) bool {
	return host.StateDir != "" && strings.HasPrefix(file, strings.TrimSuffix(host.StateDir, "/")+"/")
}
