-- Workspaces: a host repository prepared in a VM, keyed by the VM and the
-- guest path (preparing the same path again replaces the row). The
-- captured_* columns are the daemon's last look at the guest's work (made
-- before a stop, or on fetch): the work branch head, the uncommitted-work
-- commit and the bundle that carries them. The fetched_* columns are what
-- the user's CLI last brought into the host repository, so the daemon
-- knows what is unfetched. Rows go with their VM.
CREATE TABLE workspaces (
	vm_id          TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	guest_path     TEXT NOT NULL,
	source_path    TEXT NOT NULL,
	repo_root      TEXT NOT NULL,
	repo_name      TEXT NOT NULL,
	mode           TEXT NOT NULL,
	head_commit    TEXT NOT NULL DEFAULT '',
	current_branch TEXT NOT NULL DEFAULT '',
	branch_name    TEXT NOT NULL DEFAULT '',
	base_commit    TEXT NOT NULL DEFAULT '',
	prepared_at    TEXT NOT NULL,
	prepared_wip   TEXT NOT NULL DEFAULT '',
	captured_at    TEXT NOT NULL DEFAULT '',
	captured_head  TEXT NOT NULL DEFAULT '',
	captured_wip   TEXT NOT NULL DEFAULT '',
	bundle_path    TEXT NOT NULL DEFAULT '',
	bundle_bytes   INTEGER NOT NULL DEFAULT 0,
	capture_error  TEXT NOT NULL DEFAULT '',
	fetched_at     TEXT NOT NULL DEFAULT '',
	fetched_head   TEXT NOT NULL DEFAULT '',
	fetched_wip    TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (vm_id, guest_path)
);
