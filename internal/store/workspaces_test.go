package store

import (
	"context"
	"reflect"
	"testing"
	"time"

	"banger/internal/model"
)

func testWorkspace(vmID, gp string) model.WorkspacePrepareResult {
	return model.WorkspacePrepareResult{
		VMID: vmID, SourcePath: "/home/u/proj/src", RepoRoot: "/home/u/proj", RepoName: "proj", GuestPath: gp,
		Mode: model.WorkspacePrepareModeShallowOverlay, HeadCommit: "aaaa", CurrentBranch: "main",
		BranchName: "banger/dev", BaseCommit: "aaaa", PreparedAt: model.Now(),
	}
}

func TestWorkspaceCRUD(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	if v, _ := db.SchemaVersion(ctx); v < 2 {
		t.Fatalf("schema version %d, want at least 2", v)
	}
	img := testImage("debian")
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	vm := testVM("dev", img.ID, "172.16.0.2")
	other := testVM("other", img.ID, "172.16.0.3")
	for _, v := range []model.VMRecord{vm, other} {
		if err := db.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}

	ws := testWorkspace(vm.ID, "/root/proj")
	if err := db.PutWorkspace(ctx, ws, "eeee"); err != nil {
		t.Fatal(err)
	}
	if err := db.PutWorkspace(ctx, testWorkspace(vm.ID, "/root/second"), ""); err != nil {
		t.Fatal(err)
	}
	if err := db.PutWorkspace(ctx, testWorkspace(other.ID, "/root/proj"), ""); err != nil {
		t.Fatal(err)
	}
	if err := db.PutWorkspace(ctx, testWorkspace("no-such-vm", "/root/x"), ""); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("workspace of an unknown vm: %v", err)
	}

	got, err := db.GetWorkspace(ctx, vm.ID, "/root/proj")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.WorkspacePrepareResult, ws) || got.PreparedWIP != "eeee" || got.Capture != (model.WorkspaceCapture{}) || got.Fetched != (model.WorkspaceFetch{}) {
		t.Errorf("GetWorkspace = %+v\nwant %+v", got, ws)
	}
	if _, err := db.GetWorkspace(ctx, vm.ID, "/root/nope"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("missing workspace: %v", err)
	}

	all, err := db.ListWorkspaces(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("ListWorkspaces all = %d, %v", len(all), err)
	}
	mine, err := db.ListWorkspaces(ctx, vm.ID)
	if err != nil || len(mine) != 2 || mine[0].GuestPath != "/root/proj" || mine[1].GuestPath != "/root/second" {
		t.Fatalf("ListWorkspaces(vm) = %+v, %v", mine, err)
	}

	// Capture, a failed capture that keeps it, and a fetch.
	at := model.Now()
	c := model.WorkspaceCapture{At: at, Head: "bbbb", WIP: "cccc", BundlePath: "/x/workspace-1.bundle", BundleBytes: 1234}
	if err := db.SetWorkspaceCapture(ctx, vm.ID, "/root/proj", c); err != nil {
		t.Fatal(err)
	}
	later := at.Add(time.Minute)
	if err := db.SetWorkspaceCaptureError(ctx, vm.ID, "/root/proj", later, "guest did not answer"); err != nil {
		t.Fatal(err)
	}
	f := model.WorkspaceFetch{At: later, Head: "bbbb", WIP: "cccc"}
	if err := db.SetWorkspaceFetch(ctx, vm.ID, "/root/proj", f); err != nil {
		t.Fatal(err)
	}
	got, _ = db.GetWorkspace(ctx, vm.ID, "/root/proj")
	wantCapture := c
	wantCapture.At, wantCapture.Error = later, "guest did not answer"
	if got.Capture != wantCapture || got.Fetched != f {
		t.Errorf("after capture and fetch: %+v %+v", got.Capture, got.Fetched)
	}
	if err := db.SetWorkspaceCapture(ctx, vm.ID, "/root/nope", c); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("capture of a missing workspace: %v", err)
	}

	// Preparing the same path again replaces the row and its state.
	again := testWorkspace(vm.ID, "/root/proj")
	again.Mode = model.WorkspacePrepareModeFullCopy
	again.HeadCommit, again.BaseCommit = "dddd", "dddd"
	if err := db.PutWorkspace(ctx, again, ""); err != nil {
		t.Fatal(err)
	}
	got, _ = db.GetWorkspace(ctx, vm.ID, "/root/proj")
	if !reflect.DeepEqual(got.WorkspacePrepareResult, again) || got.PreparedWIP != "" || got.Capture != (model.WorkspaceCapture{}) || got.Fetched != (model.WorkspaceFetch{}) {
		t.Errorf("after replace: %+v", got)
	}

	if err := db.DeleteWorkspace(ctx, vm.ID, "/root/second"); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteWorkspace(ctx, vm.ID, "/root/second"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("second delete: %v", err)
	}
	// A VM's workspaces go with it.
	if err := db.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	all, _ = db.ListWorkspaces(ctx, "")
	if len(all) != 1 || all[0].VMID != other.ID {
		t.Errorf("after deleting the vm: %+v", all)
	}
}

// TestWorkspaceMigrationOnExistingDatabase applies migration 2 to a
// database that has rows from migration 1 only.
func TestWorkspaceMigrationOnExistingDatabase(t *testing.T) {
	ctx := context.Background()
	db, path := openTest(t)
	img := testImage("debian")
	db.CreateImage(ctx, img)
	vm := testVM("dev", img.ID, "172.16.0.2")
	db.CreateVM(ctx, vm)
	// Roll back to version 1, as an older bangerd left it.
	if _, err := db.db.ExecContext(ctx, `DROP TABLE workspaces; DELETE FROM schema_migrations WHERE version = 2`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if err := db2.PutWorkspace(ctx, testWorkspace(vm.ID, "/root/proj"), ""); err != nil {
		t.Fatalf("after migrating: %v", err)
	}
	if _, err := db2.GetVM(ctx, "dev"); err != nil {
		t.Errorf("vm lost in migration: %v", err)
	}
}
