package model

import "testing"

func TestWorkspacePrepareModeValidate(t *testing.T) {
	for _, m := range []WorkspacePrepareMode{WorkspacePrepareModeShallowOverlay, WorkspacePrepareModeFullCopy, WorkspacePrepareModeMetadataOnly} {
		if err := m.Validate(); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	for _, m := range []WorkspacePrepareMode{"", "all", "FULL_COPY", "full_copy "} {
		if err := m.Validate(); ErrorCode(err) != EINVALID {
			t.Errorf("%q: %v, want EINVALID", m, err)
		}
	}
	if WorkspacePrepareModeMetadataOnly.Ships() || !WorkspacePrepareModeFullCopy.Ships() || WorkspacePrepareMode("x").Ships() {
		t.Error("Ships")
	}
}

func TestHasUnfetchedWork(t *testing.T) {
	const base, c1, c2, w0, w1, w2 = "base", "c1", "c2", "w0", "w1", "w2"
	ws := func(head, wip, fetchedHead, fetchedWIP, preparedWIP string) Workspace {
		return Workspace{
			WorkspacePrepareResult: WorkspacePrepareResult{BaseCommit: base},
			PreparedWIP:            preparedWIP,
			Capture:                WorkspaceCapture{Head: head, WIP: wip},
			Fetched:                WorkspaceFetch{Head: fetchedHead, WIP: fetchedWIP},
		}
	}
	tests := []struct {
		name string
		w    Workspace
		want bool
	}{
		{"nothing captured", ws("", "", "", "", ""), false},
		{"no work", ws(base, "", "", "", ""), false},
		{"new commit", ws(c1, "", "", "", ""), true},
		{"commit fetched", ws(c1, "", c1, "", ""), false},
		{"newer commit", ws(c2, "", c1, "", ""), true},
		{"wip", ws(base, w1, "", "", ""), true},
		{"wip fetched", ws(base, w1, "", w1, ""), false},
		{"wip changed", ws(c1, w2, c1, w1, ""), true},
		{"the tree as prepared", ws(base, w0, "", "", w0), false},
		{"changed since prepared", ws(base, w1, "", "", w0), true},
	}
	for _, tt := range tests {
		if got := tt.w.HasUnfetchedWork(); got != tt.want {
			t.Errorf("%s: HasUnfetchedWork = %v, want %v", tt.name, got, tt.want)
		}
	}
}
