package model

import "time"

// Validate returns nil for a known mode, and an EINVALID error that
// names the modes otherwise. It is the one check of a mode: the CLI's
// flag, the API request and the daemon all call it.
func (m WorkspacePrepareMode) Validate() error {
	switch m {
	case WorkspacePrepareModeShallowOverlay, WorkspacePrepareModeFullCopy, WorkspacePrepareModeMetadataOnly:
		return nil
	}
	return Errorf(EINVALID, "mode %q: use shallow_overlay, full_copy or metadata_only", m)
}

// Ships reports whether a workspace of mode m puts a repository in the
// guest (everything but metadata_only).
func (m WorkspacePrepareMode) Ships() bool {
	return m == WorkspacePrepareModeShallowOverlay || m == WorkspacePrepareModeFullCopy
}

// Workspace is a repository prepared in a VM and what is known of the
// guest's work there. The store keeps the prepare result, PreparedWIP,
// Capture and Fetched; the daemon fills in the rest (the VM's name and
// state, the host refs fetch writes, Unfetched) when it answers.
type Workspace struct {
	WorkspacePrepareResult
	VMName  string  `json:"vm_name"`
	VMState VMState `json:"vm_state"`
	// RemoteRef and WIPRef are where `banger workspace fetch` puts the
	// work branch and the uncommitted work in the host repository.
	RemoteRef string `json:"remote_ref,omitempty"`
	WIPRef    string `json:"wip_ref,omitempty"`
	// PreparedWIP is the uncommitted-work commit of the tree as it was
	// prepared (the user's own changes, which the host has); empty when
	// the tree matched HEAD.
	PreparedWIP string `json:"prepared_wip,omitempty"`
	// Capture is the daemon's last look at the guest's work; zero when
	// there was none.
	Capture WorkspaceCapture `json:"capture,omitzero"`
	// Fetched is what the user last brought into the host repository;
	// zero when nothing was.
	Fetched WorkspaceFetch `json:"fetched,omitzero"`
	// Unfetched says the last capture holds work not fetched yet
	// (HasUnfetchedWork, as the daemon saw it).
	Unfetched bool `json:"unfetched"`
}

// WorkspaceCapture is a capture of a workspace's guest work.
type WorkspaceCapture struct {
	At time.Time `json:"at"`
	// Head is the work branch's head in the guest.
	Head string `json:"head,omitempty"`
	// WIP is the commit holding the guest's uncommitted work; empty when
	// there was none.
	WIP string `json:"wip,omitempty"`
	// BundlePath is the bundle in the VM's directory carrying the commits
	// the base does not have; empty when there were none. The daemon's
	// own business: not shown.
	BundlePath  string `json:"-"`
	BundleBytes int64  `json:"bundle_bytes,omitempty"`
	// Error says why the last capture failed; the other fields are then
	// those of the capture before.
	Error string `json:"error,omitempty"`
}

// WorkspaceFetch is what a fetch brought into the host repository.
type WorkspaceFetch struct {
	At   time.Time `json:"at"`
	Head string    `json:"head,omitempty"`
	WIP  string    `json:"wip,omitempty"`
}

// HasUnfetchedWork reports whether the last capture holds work the user
// has not fetched: a work branch head past the base that fetch has not
// brought back, or uncommitted work that is neither fetched nor the tree
// as prepared.
func (w Workspace) HasUnfetchedWork() bool {
	c, f := w.Capture, w.Fetched
	if c.Head != "" && c.Head != w.BaseCommit && c.Head != f.Head {
		return true
	}
	return c.WIP != "" && c.WIP != f.WIP && c.WIP != w.PreparedWIP
}
