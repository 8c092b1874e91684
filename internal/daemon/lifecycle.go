package daemon

import (
	"context"

	"banger/internal/api"
	"banger/internal/model"
)

// errNotYet marks lifecycle operations that this build cannot do yet.
func errNotYet(op string) error {
	return model.Errorf(model.EUNAVAILABLE, "%s: not available in this build", op)
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
