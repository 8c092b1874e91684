package firecracker

import (
	"regexp"

	"banger/internal/model"
)

// The request and response bodies of the Firecracker API (v1.16.1) that
// banger uses. Field names and JSON tags follow the official spec
// (testdata/firecracker.yaml); the contract tests validate every body a
// constructor below can produce against that spec. Firecracker refuses
// unknown fields, so optional fields are omitted when unset rather than
// sent empty.

// Logger is the body of PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// MachineConfig is the body of PUT /machine-config. Firecracker resets
// every optional field left out of a PUT to its default, so the booleans
// are always sent.
type MachineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}. IsReadOnly is always sent:
// it defaults to false in 1.16 but older releases required it.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
}

// Vsock is the body of PUT /vsock. The deprecated vsock_id is never sent.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// InstanceAction is the body of PUT /actions.
type InstanceAction struct {
	ActionType string `json:"action_type"`
}

// VMState is the body of PATCH /vm.
type VMState struct {
	State string `json:"state"`
}

// InstanceInfo is the reply of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// Instance states reported by GET /.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// Drive cache types. CacheUnsafe (Firecracker's default) does not
// advertise flush to the guest; CacheWriteback does.
const (
	CacheUnsafe    = "Unsafe"
	CacheWriteback = "Writeback"
)

// MaxVCPUs is Firecracker's upper bound on vcpu_count.
const MaxVCPUs = 32

var (
	resourceIDRe = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	macRe        = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)
)

// ValidResourceID reports whether id can name a drive or network interface
// in a request path: Firecracker accepts only ASCII letters, digits and
// underscores there.
func ValidResourceID(id string) bool { return resourceIDRe.MatchString(id) }

func checkResourceID(kind, id string) error {
	if !ValidResourceID(id) {
		return model.Errorf(model.EINVALID, "%s id %q: only letters, digits and _ are allowed", kind, id)
	}
	return nil
}

// NewMachineConfig returns the machine configuration for vcpus vCPUs and
// memMiB MiB of memory, SMT and dirty-page tracking off.
func NewMachineConfig(vcpus, memMiB int) (MachineConfig, error) {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return MachineConfig{}, model.Errorf(model.EINVALID, "vcpu count %d: must be between 1 and %d", vcpus, MaxVCPUs)
	}
	if memMiB < 1 {
		return MachineConfig{}, model.Errorf(model.EINVALID, "memory %d MiB: must be positive", memMiB)
	}
	return MachineConfig{VCPUCount: vcpus, MemSizeMiB: memMiB}, nil
}

// NewBootSource returns the boot source for kernel, an optional initrd
// ("" for none) and the full kernel command line (see BootArgs).
func NewBootSource(kernel, initrd, bootArgs string) (BootSource, error) {
	if kernel == "" {
		return BootSource{}, model.Errorf(model.EINVALID, "boot source: kernel path is empty")
	}
	return BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: bootArgs}, nil
}

// NewDrive returns a drive backed by path. Only one drive of a VM may be
// the root device; Firecracker places it first, so the guest sees it as
// /dev/vda, and appends root=/dev/vda ro|rw to the kernel command line.
func NewDrive(id, path string, root, readOnly bool) (Drive, error) {
	if err := checkResourceID("drive", id); err != nil {
		return Drive{}, err
	}
	if path == "" {
		return Drive{}, model.Errorf(model.EINVALID, "drive %s: path is empty", id)
	}
	return Drive{DriveID: id, PathOnHost: path, IsRootDevice: root, IsReadOnly: readOnly}, nil
}

// NewNetworkInterface returns a network interface backed by the existing
// tap device tap, with the guest MAC address mac ("" lets the VMM choose).
func NewNetworkInterface(id, tap, mac string) (NetworkInterface, error) {
	if err := checkResourceID("network interface", id); err != nil {
		return NetworkInterface{}, err
	}
	if tap == "" {
		return NetworkInterface{}, model.Errorf(model.EINVALID, "network interface %s: tap device is empty", id)
	}
	if mac != "" && !macRe.MatchString(mac) {
		return NetworkInterface{}, model.Errorf(model.EINVALID, "network interface %s: bad MAC address %q", id, mac)
	}
	return NetworkInterface{IfaceID: id, HostDevName: tap, GuestMAC: mac}, nil
}

// NewVsock returns a vsock device with guest CID cid (3 or more) whose
// host side is the unix socket udsPath.
func NewVsock(cid int, udsPath string) (Vsock, error) {
	if cid < 3 || cid > 0xFFFFFFFF {
		return Vsock{}, model.Errorf(model.EINVALID, "vsock guest cid %d: must be 3 or more", cid)
	}
	if udsPath == "" {
		return Vsock{}, model.Errorf(model.EINVALID, "vsock: unix socket path is empty")
	}
	return Vsock{GuestCID: cid, UDSPath: udsPath}, nil
}

// NewLogger returns a logger configuration writing to path at level
// (Error, Warning, Info, Debug, Trace or Off; "" keeps Firecracker's
// default, Info), with levels shown.
func NewLogger(path, level string) (Logger, error) {
	switch level {
	case "", "Error", "Warning", "Info", "Debug", "Trace", "Off":
	default:
		return Logger{}, model.Errorf(model.EINVALID, "logger level %q: want Error, Warning, Info, Debug, Trace or Off", level)
	}
	if path == "" {
		return Logger{}, model.Errorf(model.EINVALID, "logger: path is empty")
	}
	return Logger{LogPath: path, Level: level, ShowLevel: true}, nil
}

// NewMetrics returns a metrics configuration writing to path.
func NewMetrics(path string) (Metrics, error) {
	if path == "" {
		return Metrics{}, model.Errorf(model.EINVALID, "metrics: path is empty")
	}
	return Metrics{MetricsPath: path}, nil
}
