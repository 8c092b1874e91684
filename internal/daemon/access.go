package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"

	"banger/internal/api"
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
func checkReadableBy(ctx context.Context, c api.Caller, path string, dir bool) error {
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
	cmd := exec.CommandContext(ctx, "test", flag, path)
	cred := &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID)}
	if u, err := user.LookupId(strconv.Itoa(c.UID)); err == nil {
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); ok {
			return model.Errorf(model.EFORBIDDEN, "%s: you (uid %d) cannot read it; banger only uses files you can read yourself", path, c.UID)
		}
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
