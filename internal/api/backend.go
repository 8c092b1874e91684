package api

import (
	"context"
	"io"
	"net"

	"banger/internal/model"
)

// Backend is what the server serves: the daemon. Every method finds the
// caller in ctx (CallerFrom) and enforces ownership itself: a VM or image
// the caller may not see is ENOTFOUND, exactly as if it did not exist.
// The error codes each method returns are listed with it (model.ECode,
// mapped to HTTP statuses by the server); any method may also return
// EINTERNAL for a failure of the host or the database.
type Backend interface {
	// Version never fails.
	Version(ctx context.Context) VersionInfo
	// Doctor never fails: each check carries its own status.
	Doctor(ctx context.Context) []DoctorCheck

	// ListImages returns the images the caller may use.
	ListImages(ctx context.Context) ([]model.Image, error)
	// GetImage: ENOTFOUND, EINVALID (a malformed OWNER/NAME).
	GetImage(ctx context.Context, ref string) (ImageDetail, error)
	// RegisterImage copies files root names: EFORBIDDEN (the caller is
	// not root: others upload with UploadImage), EINVALID (bad name, or
	// a path that is not a regular file), ECONFLICT (the caller already
	// has an image of that name).
	RegisterImage(ctx context.Context, req ImageRegisterRequest) (ImageRegisterResponse, error)
	// BuildImage: EINVALID (bad name, packages or mirror), ECONFLICT,
	// EUNAVAILABLE (build tools or the mirror missing; no kernel built
	// and the caller may not build one), EFORBIDDEN (a kernel path from
	// another caller than root; a mirror on the daemon's host), ELIMIT
	// (build_timeout passed, or the disk limit).
	BuildImage(ctx context.Context, req ImageBuildRequest, progress ProgressFunc) (model.Image, error)
	// DeleteImage: ENOTFOUND, ECONFLICT (VMs use it), EFORBIDDEN.
	DeleteImage(ctx context.Context, ref string) error
	// WarmImage boots the image once and keeps its snapshot as the
	// image's warm state (warm.go in the daemon): ENOTFOUND, EFORBIDDEN
	// (not the image's owner), EINVALID (vCPUs, memory), ECONFLICT (a
	// warm run of the image already runs), EUNAVAILABLE (the VMM cannot
	// snapshot), EINTERNAL; a failure leaves the warm state as it was.
	WarmImage(ctx context.Context, ref string, req ImageWarmRequest, progress ProgressFunc) (WarmState, error)
	// DropWarm removes an image's warm state: ENOTFOUND (no image, or
	// no warm state), EFORBIDDEN, ECONFLICT (it is in use).
	DropWarm(ctx context.Context, ref string) error

	// ListKernels never fails for lack of kernels.
	ListKernels(ctx context.Context) ([]Kernel, error)
	// BuildKernel: EFORBIDDEN (the caller is neither root nor an
	// admin), EINVALID, EUNAVAILABLE (no kernel source or tools).
	BuildKernel(ctx context.Context, req KernelBuildRequest, progress ProgressFunc) (Kernel, error)

	// ListVMs returns the VMs the caller may see.
	ListVMs(ctx context.Context) ([]VMView, error)
	// GetVM: ENOTFOUND.
	GetVM(ctx context.Context, ref string) (VMView, error)
	// CreateVM: EINVALID (a field and what is allowed), ECONFLICT (the
	// name is taken; an image registered by path before copies),
	// ENOTFOUND (the image), ELIMIT (a per-user limit), EUNAVAILABLE (no free IP,
	// no VMM, no network, a full disk); a failed first start removes
	// the VM and returns the start's error.
	CreateVM(ctx context.Context, req model.VMCreateRequest, progress ProgressFunc) (VMView, error)
	// SetVM: ENOTFOUND, EINVALID, ECONFLICT (a change the VM's state
	// does not allow, with what to do), ELIMIT (a bigger disk past the
	// disk limit).
	SetVM(ctx context.Context, req model.VMSetRequest) (VMView, error)
	// DeleteVM: ENOTFOUND, ECONFLICT (running without force, or
	// workspace work not fetched).
	DeleteVM(ctx context.Context, ref string, opts VMDeleteOptions, progress ProgressFunc) error
	// StartVM: ENOTFOUND, ECONFLICT (already running), EUNAVAILABLE
	// (the host cannot run VMs now); a failed step's error leaves the
	// VM in state error, every step undone. A suspended VM is restored
	// from its saved state; when the restore fails it boots from its
	// disks, with the reason in LastError and the progress.
	StartVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	// StopVM: ENOTFOUND, ECONFLICT (several processes claim to be the
	// VM's VMM).
	StopVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	// KillVM: as StopVM.
	KillVM(ctx context.Context, ref string) (VMView, error)
	// SuspendVM saves a running VM's memory and device state in its VM
	// directory and frees its VMM, tap and rules (state suspended; a
	// StartVM restores it). ENOTFOUND, ECONFLICT (not running, or
	// several processes claim to be its VMM), EUNAVAILABLE (the VMM
	// cannot snapshot); a failed step leaves the VM running.
	SuspendVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	// ForkVM makes running copies of a running VM (fork.go in the
	// daemon): the source is paused only while its state and disks are
	// copied. ENOTFOUND, ECONFLICT (not running, a name taken),
	// EINVALID (bad names or count), EUNAVAILABLE (the VMM cannot
	// snapshot), ELIMIT; a failure leaves the source running and no
	// child.
	ForkVM(ctx context.Context, ref string, req model.VMForkRequest, progress ProgressFunc) ([]VMView, error)
	// RestartVM: as StopVM, then StartVM.
	RestartVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	// ResetSystem: ENOTFOUND, ECONFLICT (running).
	ResetSystem(ctx context.Context, ref string) (VMView, error)
	// VMStats returns the stats the poller last collected for a VM:
	// ENOTFOUND.
	VMStats(ctx context.Context, ref string) (model.VMStats, error)
	// VMLogs: ENOTFOUND, EINVALID (bad options).
	VMLogs(ctx context.Context, ref string, opts LogsOptions, w io.Writer) error
	// Connect opens a byte stream to a TCP port of the guest. The caller
	// closes the connection; the daemon counts it as activity while open.
	// A suspended VM is resumed first. ENOTFOUND, EINVALID (port),
	// ECONFLICT (not running).
	Connect(ctx context.Context, ref string, port int) (net.Conn, error)
	// Hold counts a VM as in use until release is called, as an open
	// connect stream does, without a connection to the guest: no idle
	// policy acts on it meanwhile. A suspended VM is resumed first.
	// ENOTFOUND, ECONFLICT (not running).
	Hold(ctx context.Context, ref string) (release func(), err error)

	WorkspaceBackend
	ImageUploadBackend
	ImageImportBackend
}

// Progress is one step of a long operation.
type Progress struct {
	Step    string `json:"step"`
	Message string `json:"message,omitempty"`
	// LogPath names the full log of this step, when there is one.
	LogPath string `json:"log_path,omitempty"`
	// Warning marks a message the user should see even without verbose
	// output.
	Warning bool `json:"warning,omitempty"`
}

// ProgressFunc receives progress. It must not block for long.
type ProgressFunc func(Progress)

// NoProgress discards progress.
func NoProgress(Progress) {}
