package daemon

import (
	"context"
	"os"

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

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
