package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"

	"banger/internal/api"
	"banger/internal/model"
)

// errNotYet marks lifecycle operations that this build cannot do yet.
func errNotYet(op string) error {
	return model.Errorf(model.EUNAVAILABLE, "%s: not available in this build", op)
}

// applySet stores a changed spec. The caller holds the VM's lock.
func (d *Daemon) applySet(ctx context.Context, vm *model.VMRecord, next model.VMSpec) error {
	vm.Spec = next
	vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, *vm)
}

// deleteLocked removes a VM: the row first, so a crash part way leaves
// only files that reconcile removes as orphans. The caller holds the lock.
func (d *Daemon) deleteLocked(ctx context.Context, vm model.VMRecord, opts api.VMDeleteOptions, progress api.ProgressFunc) error {
	if vm.State == model.VMStateRunning {
		return model.Errorf(model.ECONFLICT, "vm %q is running; stop it first or pass --force", vm.Name)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return err
	}
	if err := os.RemoveAll(vm.Runtime.VMDir); err != nil {
		return fmt.Errorf("remove vm dir: %w", err)
	}
	d.logger.Info("vm removed", "vm", vm.Name, "id", vm.ID)
	progress(api.Progress{Step: "removed", Message: vm.Name})
	return nil
}

// StartVM implements api.Backend.
func (d *Daemon) StartVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	return api.VMView{}, errNotYet("start")
}

// StopVM implements api.Backend.
func (d *Daemon) StopVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	return api.VMView{}, errNotYet("stop")
}

// KillVM implements api.Backend.
func (d *Daemon) KillVM(ctx context.Context, ref string) (api.VMView, error) {
	return api.VMView{}, errNotYet("kill")
}

// RestartVM implements api.Backend.
func (d *Daemon) RestartVM(ctx context.Context, ref string, progress api.ProgressFunc) (api.VMView, error) {
	return api.VMView{}, errNotYet("restart")
}

// ResetSystem implements api.Backend.
func (d *Daemon) ResetSystem(ctx context.Context, ref string) (api.VMView, error) {
	return api.VMView{}, errNotYet("reset-system")
}

// VMLogs implements api.Backend.
func (d *Daemon) VMLogs(ctx context.Context, ref string, opts api.LogsOptions, w io.Writer) error {
	return errNotYet("logs")
}

// Connect implements api.Backend.
func (d *Daemon) Connect(ctx context.Context, ref string, port int) (net.Conn, error) {
	return nil, errNotYet("connect")
}

// BuildImage implements api.Backend.
func (d *Daemon) BuildImage(ctx context.Context, req api.ImageBuildRequest, progress api.ProgressFunc) (model.Image, error) {
	return model.Image{}, errNotYet("image build")
}

// ListKernels implements api.Backend.
func (d *Daemon) ListKernels(ctx context.Context) ([]api.Kernel, error) {
	return nil, errNotYet("kernel ls")
}

// BuildKernel implements api.Backend.
func (d *Daemon) BuildKernel(ctx context.Context, req api.KernelBuildRequest, progress api.ProgressFunc) (api.Kernel, error) {
	return api.Kernel{}, errNotYet("kernel build")
}
