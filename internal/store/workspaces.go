package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"banger/internal/model"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

const workspaceColumns = `vm_id, guest_path, source_path, repo_root, repo_name, mode, head_commit, current_branch, branch_name, base_commit, prepared_at, prepared_wip,
	captured_at, captured_head, captured_wip, bundle_path, bundle_bytes, capture_error, fetched_at, fetched_head, fetched_wip`

// scanWorkspace reads a workspace row: the prepare result, PreparedWIP,
// Capture and Fetched (the other fields of model.Workspace are the
// daemon's to fill).
func scanWorkspace(row interface{ Scan(...any) error }) (model.Workspace, error) {
	var w model.Workspace
	var prepared, captured, fetched string
	err := row.Scan(&w.VMID, &w.GuestPath, &w.SourcePath, &w.RepoRoot, &w.RepoName, &w.Mode, &w.HeadCommit, &w.CurrentBranch, &w.BranchName, &w.BaseCommit, &prepared, &w.PreparedWIP,
		&captured, &w.Capture.Head, &w.Capture.WIP, &w.Capture.BundlePath, &w.Capture.BundleBytes, &w.Capture.Error, &fetched, &w.Fetched.Head, &w.Fetched.WIP)
	w.PreparedAt = parseTime(prepared)
	w.Capture.At = parseTime(captured)
	w.Fetched.At = parseTime(fetched)
	return w, err
}

// PutWorkspace stores a prepare result and the uncommitted-work commit of
// the tree as prepared, replacing any workspace at the same VM and guest
// path together with its capture and fetch state. An unknown VM is
// ENOTFOUND.
func (s *DB) PutWorkspace(ctx context.Context, r model.WorkspacePrepareResult, preparedWIP string) error {
	_, err := s.exec(ctx, `INSERT OR REPLACE INTO workspaces (vm_id, guest_path, source_path, repo_root, repo_name, mode, head_commit, current_branch, branch_name, base_commit, prepared_at, prepared_wip)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		r.VMID, r.GuestPath, r.SourcePath, r.RepoRoot, r.RepoName, string(r.Mode), r.HeadCommit, r.CurrentBranch, r.BranchName, r.BaseCommit, formatTime(r.PreparedAt), preparedWIP)
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY {
		return model.Errorf(model.ENOTFOUND, "vm %s not found", model.ShortID(r.VMID))
	}
	return mapError(err, fmt.Sprintf("workspace %s", r.GuestPath))
}

// GetWorkspace returns the workspace at a VM's guest path.
func (s *DB) GetWorkspace(ctx context.Context, vmID, guestPath string) (model.Workspace, error) {
	w, err := scanWorkspace(s.queryRow(ctx, `SELECT `+workspaceColumns+` FROM workspaces WHERE vm_id = ? AND guest_path = ?`, vmID, guestPath))
	if errors.Is(err, sql.ErrNoRows) {
		return w, model.Errorf(model.ENOTFOUND, "no workspace at %s; see `banger workspace ls`", guestPath)
	}
	return w, err
}

// ListWorkspaces returns a VM's workspaces, or every workspace when vmID
// is empty, by VM and guest path.
func (s *DB) ListWorkspaces(ctx context.Context, vmID string) ([]model.Workspace, error) {
	q := `SELECT ` + workspaceColumns + ` FROM workspaces`
	var args []any
	if vmID != "" {
		q += ` WHERE vm_id = ?`
		args = append(args, vmID)
	}
	rows, err := s.query(ctx, q+` ORDER BY vm_id, guest_path`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.Workspace
	for rows.Next() {
		w, err := scanWorkspace(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// SetWorkspaceCapture records a capture of a workspace's guest work.
func (s *DB) SetWorkspaceCapture(ctx context.Context, vmID, guestPath string, c model.WorkspaceCapture) error {
	res, err := s.exec(ctx, `UPDATE workspaces SET captured_at=?, captured_head=?, captured_wip=?, bundle_path=?, bundle_bytes=?, capture_error=? WHERE vm_id=? AND guest_path=?`,
		formatTime(c.At), c.Head, c.WIP, c.BundlePath, c.BundleBytes, c.Error, vmID, guestPath)
	if err != nil {
		return mapError(err, "workspace")
	}
	return requireOne(res, "workspace", guestPath)
}

// SetWorkspaceCaptureError records a failed capture, keeping the last
// good one.
func (s *DB) SetWorkspaceCaptureError(ctx context.Context, vmID, guestPath string, at time.Time, msg string) error {
	res, err := s.exec(ctx, `UPDATE workspaces SET captured_at=?, capture_error=? WHERE vm_id=? AND guest_path=?`, formatTime(at), msg, vmID, guestPath)
	if err != nil {
		return mapError(err, "workspace")
	}
	return requireOne(res, "workspace", guestPath)
}

// SetWorkspaceFetch records what the user fetched.
func (s *DB) SetWorkspaceFetch(ctx context.Context, vmID, guestPath string, f model.WorkspaceFetch) error {
	res, err := s.exec(ctx, `UPDATE workspaces SET fetched_at=?, fetched_head=?, fetched_wip=? WHERE vm_id=? AND guest_path=?`,
		formatTime(f.At), f.Head, f.WIP, vmID, guestPath)
	if err != nil {
		return mapError(err, "workspace")
	}
	return requireOne(res, "workspace", guestPath)
}

// DeleteWorkspace removes a workspace row.
func (s *DB) DeleteWorkspace(ctx context.Context, vmID, guestPath string) error {
	res, err := s.exec(ctx, `DELETE FROM workspaces WHERE vm_id = ? AND guest_path = ?`, vmID, guestPath)
	if err != nil {
		return mapError(err, "workspace")
	}
	return requireOne(res, "workspace", guestPath)
}
