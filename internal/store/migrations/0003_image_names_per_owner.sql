-- banger:foreign_keys=off
-- Image names are unique per owner, not across owners: a user's "default"
-- must not take the name from root (or from another user), and who has
-- which name must not leak through "already exists". SQLite cannot drop
-- the column's UNIQUE, so the table is rebuilt (with foreign keys off, as
-- SQLite's ALTER TABLE procedure says, and checked before commit).
CREATE TABLE images_new (
	id                 TEXT PRIMARY KEY,
	name               TEXT NOT NULL,
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
	updated_at         TEXT NOT NULL,
	UNIQUE (owner_uid, name)
);
INSERT INTO images_new SELECT id, name, owner_uid, managed, artifact_dir, rootfs_path, work_seed_path, kernel_path, initrd_path, modules_dir, build_size, ssh_fingerprint, docker, created_at, updated_at FROM images;
DROP TABLE images;
ALTER TABLE images_new RENAME TO images;
CREATE INDEX images_name ON images(name);
