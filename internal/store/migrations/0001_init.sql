-- Images: a kernel and a root filesystem (plus optional initrd, modules and
-- work seed). Names are unique across owners so they work on the command
-- line without qualification.
CREATE TABLE images (
	id                 TEXT PRIMARY KEY,
	name               TEXT NOT NULL UNIQUE,
	owner_uid          INTEGER NOT NULL,
	managed            INTEGER NOT NULL DEFAULT 0,
	artifact_dir       TEXT NOT NULL DEFAULT '',
	rootfs_path        TEXT NOT NULL,
	work_seed_path     TEXT NOT NULL DEFAULT '',
	kernel_path        TEXT NOT NULL,
	initrd_path        TEXT NOT NULL DEFAULT '',
	modules_dir        TEXT NOT NULL DEFAULT '',
	build_size         TEXT NOT NULL DEFAULT '',
	ssh_fingerprint    TEXT NOT NULL DEFAULT '',
	docker             INTEGER NOT NULL DEFAULT 0,
	created_at         TEXT NOT NULL,
	updated_at         TEXT NOT NULL
);

-- VMs: the spec, the durable runtime and the last stats are JSON columns;
-- the columns beside them are what queries and constraints need. A VM
-- keeps its image (RESTRICT), and no two VMs share a guest IP.
CREATE TABLE vms (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
	owner_uid       INTEGER NOT NULL,
	state           TEXT NOT NULL,
	guest_ip        TEXT NOT NULL UNIQUE,
	created_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL,
	last_touched_at TEXT NOT NULL,
	spec_json       TEXT NOT NULL,
	runtime_json    TEXT NOT NULL,
	stats_json      TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX vms_owner ON vms(owner_uid);
CREATE INDEX vms_image ON vms(image_id);
