-- Images built from container images record where they came from (the
-- reference or archive, manifest and config digests, the layers' chain
-- ID) and the config their ssh and exec sessions apply (Env, WorkingDir,
-- User), as JSON; '' for every other image.
ALTER TABLE images ADD COLUMN oci TEXT NOT NULL DEFAULT '';
