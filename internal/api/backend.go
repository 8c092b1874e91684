package api

import (
	"context"
	"io"
	"net"

	"banger/internal/model"
)

// Backend is what the server serves: the daemon. Every method finds the
// caller in ctx (CallerFrom) and enforces ownership itself.
type Backend interface {
	Version(ctx context.Context) VersionInfo
	Doctor(ctx context.Context) []DoctorCheck

	ListImages(ctx context.Context) ([]model.Image, error)
	GetImage(ctx context.Context, ref string) (ImageDetail, error)
	RegisterImage(ctx context.Context, req ImageRegisterRequest) (ImageRegisterResponse, error)
	BuildImage(ctx context.Context, req ImageBuildRequest, progress ProgressFunc) (model.Image, error)
	DeleteImage(ctx context.Context, ref string) error

	ListKernels(ctx context.Context) ([]Kernel, error)
	BuildKernel(ctx context.Context, req KernelBuildRequest, progress ProgressFunc) (Kernel, error)

	ListVMs(ctx context.Context) ([]VMView, error)
	GetVM(ctx context.Context, ref string) (VMView, error)
	CreateVM(ctx context.Context, req model.VMCreateRequest, progress ProgressFunc) (VMView, error)
	SetVM(ctx context.Context, req model.VMSetRequest) (VMView, error)
	DeleteVM(ctx context.Context, ref string, opts VMDeleteOptions, progress ProgressFunc) error
	StartVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	StopVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	KillVM(ctx context.Context, ref string) (VMView, error)
	RestartVM(ctx context.Context, ref string, progress ProgressFunc) (VMView, error)
	ResetSystem(ctx context.Context, ref string) (VMView, error)
	// VMStats returns the stats the poller last collected for a VM.
	VMStats(ctx context.Context, ref string) (model.VMStats, error)
	VMLogs(ctx context.Context, ref string, opts LogsOptions, w io.Writer) error
	// Connect opens a byte stream to a TCP port of the guest. The caller
	// closes the connection; the daemon counts it as activity while open.
	Connect(ctx context.Context, ref string, port int) (net.Conn, error)

	WorkspaceBackend
	ImageUploadBackend
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
