package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
)

// checkVMAccess refuses a caller that does not own vm. The error says the
// VM was not found, so one user cannot learn another's VM names.
func checkVMAccess(ctx context.Context, vm model.VMRecord, ref string) error {
	if !api.CallerFrom(ctx).Owns(vm.OwnerUID) {
		return model.Errorf(model.ENOTFOUND, "vm %q not found; see `banger vm ls`", ref)
	}
	return nil
}

// imageVisible reports whether the caller may see and use img: its own,
// and root's images, which are shared with everyone.
func imageVisible(ctx context.Context, img model.Image) bool {
	c := api.CallerFrom(ctx)
	return c.Owns(img.OwnerUID) || img.OwnerUID == 0
}

// checkReadableBy checks that the caller could read path with its own
// rights, by running test(1) as the caller's uid, gid and groups. Root
// callers only need the file to exist. This keeps a user from pointing the
// root daemon at a file the user could not read.
func (d *Daemon) checkReadableBy(ctx context.Context, c api.Caller, path string, dir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return model.Errorf(model.EINVALID, "%s: %v", path, unwrapPathError(err))
	}
	if dir && !fi.IsDir() {
		return model.Errorf(model.EINVALID, "%s: not a directory", path)
	}
	if !dir && fi.IsDir() {
		return model.Errorf(model.EINVALID, "%s: is a directory, want a file", path)
	}
	if c.Root() {
		return nil
	}
	flag := "-r"
	if dir {
		flag = "-x"
	}
	cred := &hostexec.Credential{UID: uint32(c.UID), GID: uint32(c.GID)}
	if u, err := user.LookupId(strconv.Itoa(c.UID)); err == nil {
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}
	or, ok := d.runner.(hostexec.OptionRunner)
	if !ok {
		return fmt.Errorf("check access to %s: the runner cannot run commands as a user", path)
	}
	_, err = or.RunWith(ctx, hostexec.Options{As: cred, Timeout: 10 * time.Second}, "test", flag, path)
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return model.Errorf(model.EFORBIDDEN, "%s: you (uid %d) cannot read it; banger only uses files you can read yourself", path, c.UID)
	}
	if err != nil {
		return fmt.Errorf("check access to %s: %w", path, err)
	}
	return nil
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
