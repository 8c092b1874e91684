// Package model holds banger's domain types: images, VMs, their specs and
// runtime state, workspaces, the daemon configuration, and the size
// helpers shared by the CLI and the daemon. It depends on the standard
// library only.
package model

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Defaults used when the configuration does not say otherwise.
const (
	DefaultBridgeName               = "br-fc"
	DefaultBridgeIP                 = "172.16.0.1"
	DefaultCIDR                     = "24"
	DefaultDNS                      = "1.1.1.1"
	DefaultSystemOverlaySize        = 8 * 1024 * 1024 * 1024
	DefaultWorkDiskSize             = 8 * 1024 * 1024 * 1024
	DefaultMemoryMiB                = 2048
	DefaultVCPUCount                = 2
	DefaultStatsPollInterval        = 10 * time.Second
	DefaultStaleSweepInterval       = 1 * time.Minute
	MaxDiskBytes              int64 = 128 * 1024 * 1024 * 1024
)

// VMState is the declared state of a VM.
type VMState string

// The states a VM can be in.
const (
	VMStateCreated VMState = "created"
	VMStateRunning VMState = "running"
	VMStateStopped VMState = "stopped"
	VMStateError   VMState = "error"
	// VMStateSuspended is a VM whose memory and device state are saved
	// in its VM directory and whose VMM, tap and rules are released; a
	// start restores it (see Runtime.SuspendedAt, SavedStateBytes).
	VMStateSuspended VMState = "suspended"
)

// DaemonConfig is bangerd's configuration. The fields up to VMDefaults are
// the original model's; the rest are banger's additions (paths, DNS,
// timeouts) that the original kept elsewhere.
type DaemonConfig struct {
	LogLevel           string
	FirecrackerBin     string
	SSHKeyPath         string
	AutoStopStaleAfter time.Duration
	StatsPollInterval  time.Duration
	BridgeName         string
	BridgeIP           string
	CIDR               string
	TapPoolSize        int
	DefaultDNS         string
	DefaultImageName   string
	FileSync           []FileSyncEntry
	VMDefaults         VMDefaultsOverride

	// LogFormat is "text" or "json".
	LogFormat string
	// StateDir holds the database, images, kernels and VM directories.
	StateDir string
	// CacheDir holds build caches (kernel builds, debootstrap trees) that
	// are keyed by a hash of their inputs and may be shared between state
	// dirs.
	CacheDir string
	// SocketPath is the API socket.
	SocketPath string
	// SocketGroup is the group that may use the API socket. Its members
	// use their own VMs and images and root's shared images; AdminGroup
	// members are root-equivalent.
	SocketGroup string
	// DNSDomain is the domain under which VM names resolve.
	DNSDomain string
	// DNSListen is the address the DNS server listens on; empty means
	// BridgeIP:53, "off" disables it.
	DNSListen string
	// StaleSweepInterval is how often the reconcile sweep runs.
	StaleSweepInterval time.Duration
	// BootTimeout bounds how long start waits for SSH.
	BootTimeout time.Duration
	// StopTimeout bounds how long stop waits after Ctrl-Alt-Del before
	// killing the VMM.
	StopTimeout time.Duration
	// VMMArgs are extra arguments passed to FirecrackerBin after its own.
	VMMArgs []string
	// BuildNetNS is the network namespace (a file such as /run/netns/NAME)
	// image builds download in; empty means the daemon's own. It lets a
	// daemon kept in an isolated namespace still reach the mirror.
	BuildNetNS string
	// VMMUIDBase is the first of the unprivileged uids (and gids) VMMs run
	// as: a VM's VMM runs as VMMUIDBase plus the offset of its guest IP in
	// the subnet, so no two VMs share one.
	VMMUIDBase int
	// JailerBin is Firecracker's jailer; empty means "jailer" next to the
	// firecracker binary when there is one. banger-vmm-qemu runs without.
	JailerBin string
	// CgroupParent names the cgroup subtree VMs are put in (one group per
	// VM, with limits from its size); "off" puts them in none.
	CgroupParent string
	// StoragePool is "auto" (keep VM disks in a loop-mounted XFS pool
	// file when the state directory cannot reflink and device-mapper is
	// absent), "off", or the path of the pool file to use.
	StoragePool string
	// UpstreamDNS are the nameservers the daemon's DNS forwards guests'
	// queries to, in order (default_dns; DefaultDNS is the first).
	UpstreamDNS []string
	// EgressLogGroup is the NFLOG group the kernel reports denied guest
	// connections on, read by the daemon.
	EgressLogGroup int

	// AdminGroup is the group whose members are root-equivalent: they
	// see and touch everyone's VMs and images and may build kernels.
	// Members of SocketGroup alone use only their own.
	AdminGroup string
	// APIReadTimeout bounds how long the API waits for a request's
	// headers and body, and for each read of an upload stream.
	APIReadTimeout time.Duration
	// APIIdleTimeout closes a kept-alive API connection idle this long.
	APIIdleTimeout time.Duration
	// BuildTimeout bounds one image build (not the wait for its turn).
	BuildTimeout time.Duration
	// AutoStopMode is what the idle policy does to a VM idle past its
	// auto-stop time: IdleSuspend or IdleStop; empty means suspend where
	// the VMM can snapshot, else stop. A VM's Spec.IdleAction overrides it.
	AutoStopMode string
	// Limits bound what one non-admin user may hold; root and AdminGroup
	// members are exempt.
	Limits UserLimits
}

// UserLimits bound what one user (uid) may hold or do at once. Zero means
// no limit. Each refusal names the limit and its configuration key.
type UserLimits struct {
	// Connections is the number of open API connections.
	Connections int
	// Operations is the number of requests that change something (or
	// stream) in flight at once, builds waiting for their turn included.
	Operations int
	// VMs is the number of VMs.
	VMs int
	// UnstartedVMs is the number of VMs created and never started, each
	// holding a guest IP.
	UnstartedVMs int
	// FileSyncBytes bounds one file sync upload.
	FileSyncBytes int64
	// DiskBytes bounds the disk a user's images and VMs may take: the
	// sizes of the user's image files plus the system and work disk sizes
	// of the user's VMs.
	DiskBytes int64
}

// VMDefaultsOverride holds the VM sizes used when a create request leaves
// them unset. Zero fields fall back to the model defaults.
type VMDefaultsOverride struct {
	VCPUCount             int
	MemoryMiB             int
	SystemOverlaySizeByte int64
	WorkDiskSizeBytes     int64
	NATEnabled            bool
	// AutoStopAfter overrides DaemonConfig.AutoStopStaleAfter for new VMs
	// when non-zero.
	AutoStopAfter time.Duration
	// Egress is the egress policy of new VMs; the zero value is open.
	Egress EgressPolicy
}

// FileSyncEntry is a user-declared host→guest file or directory copy
// applied to each VM's work disk at vm create time. Host is expanded
// against the requesting user's $HOME for "~/..."; Guest is expanded
// against /root (banger VMs are single-user root). A host directory is
// copied recursively; a file is copied as a file. Missing host paths are a
// soft skip (warned, not fatal). Mode defaults to 0600 for files and 0755
// for directories.
type FileSyncEntry struct {
	Host  string `json:"host"`
	Guest string `json:"guest"`
	Mode  string `json:"mode,omitempty"`
}

// Image is a bootable kernel plus root filesystem.
type Image struct {
	ID                            string    `json:"id"`
	Name                          string    `json:"name"`
	Managed                       bool      `json:"managed"`
	ArtifactDir                   string    `json:"artifact_dir,omitempty"`
	RootfsPath                    string    `json:"rootfs_path"`
	WorkSeedPath                  string    `json:"work_seed_path,omitempty"`
	KernelPath                    string    `json:"kernel_path"`
	InitrdPath                    string    `json:"initrd_path,omitempty"`
	ModulesDir                    string    `json:"modules_dir,omitempty"`
	BuildSize                     string    `json:"build_size,omitempty"`
	SeededSSHPublicKeyFingerprint string    `json:"seeded_ssh_public_key_fingerprint,omitempty"`
	Docker                        bool      `json:"docker"`
	CreatedAt                     time.Time `json:"created_at"`
	UpdatedAt                     time.Time `json:"updated_at"`

	// OwnerUID is the uid that registered or built the image. Images owned
	// by root are usable by everyone.
	OwnerUID int `json:"owner_uid"`

	// Source says which container image an image was built from (nil
	// for debootstrap builds and registered images).
	Source *ImageSource `json:"source,omitempty"`
	// Config is what the container image asks of the processes it runs,
	// applied to ssh and exec sessions (nil when it asks nothing).
	Config *ImageConfig `json:"config,omitempty"`
}

// ImageSource is the container image an image was built from, so a
// rebuild can be compared.
type ImageSource struct {
	// Kind is "registry", "oci-archive", "docker-archive", "oci-layout"
	// or "dockerfile".
	Kind string `json:"kind"`
	// Reference is the registry reference in full, or the Dockerfile's
	// path as the user named it.
	Reference string `json:"reference,omitempty"`
	// ManifestDigest is the digest of the image's manifest (none for a
	// docker save archive).
	ManifestDigest string `json:"manifest_digest,omitempty"`
	// ConfigDigest is the digest of the image's config: its image ID.
	ConfigDigest string `json:"config_digest,omitempty"`
	// ArchiveDigest is the sha256 of the archive as sent.
	ArchiveDigest string `json:"archive_digest,omitempty"`
	// ChainID identifies the filesystem of the image's layers.
	ChainID string `json:"chain_id"`
	Layers  int    `json:"layers"`
	// Init is "systemd" (the image's) or "banger-init".
	Init string `json:"init"`
	// SSHInstalledWith names the package manager banger installed an SSH
	// server with, when the image had none.
	SSHInstalledWith string `json:"ssh_installed_with,omitempty"`
}

// ImageConfig is the part of a container image's config that banger
// applies to ssh and exec sessions.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// VMSpec is what the user asked for.
type VMSpec struct {
	VCPUCount             int   `json:"vcpu_count"`
	MemoryMiB             int   `json:"memory_mib"`
	SystemOverlaySizeByte int64 `json:"system_overlay_size_bytes"`
	WorkDiskSizeBytes     int64 `json:"work_disk_size_bytes"`
	NATEnabled            bool  `json:"nat_enabled"`

	// AutoStopAfterSeconds overrides the daemon's idle auto-stop for this
	// VM: nil means the daemon default, 0 means never.
	AutoStopAfterSeconds *int64 `json:"auto_stop_after_seconds,omitempty"`
	// Egress is where the guest may connect beyond the host.
	Egress EgressPolicy `json:"egress"`
	// IdleAction is what the idle policy does to this VM: IdleSuspend,
	// IdleStop, or empty for the daemon's auto_stop_mode.
	IdleAction string `json:"idle_action,omitempty"`
}

// VMRuntime holds the durable runtime state that the daemon needs to reach
// a VM: identity, declared state, and deterministic derived paths.
// Transient kernel and process handles (PID, loop devices, dm-snapshot
// names) live in the daemon's handle cache, backed by a per-VM
// handles.json scratch file, and are rediscovered from the OS after a
// restart rather than trusted from the database.
//
// TapDevice is the exception: a tap comes from a pool and cannot be
// derived, so it is mirrored here and NAT teardown and tap release fall
// back to it when the handle cache has lost it.
type VMRuntime struct {
	State         VMState `json:"state"`
	GuestIP       string  `json:"guest_ip"`
	APISockPath   string  `json:"api_sock_path,omitempty"`
	VSockPath     string  `json:"vsock_path,omitempty"`
	VSockCID      uint32  `json:"vsock_cid,omitempty"`
	LogPath       string  `json:"log_path,omitempty"`
	MetricsPath   string  `json:"metrics_path,omitempty"`
	DNSName       string  `json:"dns_name,omitempty"`
	VMDir         string  `json:"vm_dir"`
	TapDevice     string  `json:"tap_device,omitempty"`
	SystemOverlay string  `json:"system_overlay_path"`
	WorkDiskPath  string  `json:"work_disk_path"`
	LastError     string  `json:"last_error,omitempty"`

	// GuestMAC is derived from GuestIP.
	GuestMAC string `json:"guest_mac,omitempty"`
	// OverlayStrategy says how the system overlay is made:
	// "dm-snapshot", "reflink" or "copy".
	OverlayStrategy string `json:"overlay_strategy,omitempty"`
	// SSHHostKey is the guest's SSH host public key, learned by the
	// daemon the last time the VM became ready.
	SSHHostKey string `json:"ssh_host_key,omitempty"`
	// StartedAt is when the VM last became running.
	StartedAt time.Time `json:"started_at,omitempty"`
	// VMMUID is the unprivileged uid (and gid) the VM's VMM runs as.
	VMMUID int `json:"vmm_uid,omitempty"`
	// Cgroup is the VM's control group (its directory), "" when none.
	Cgroup string `json:"cgroup,omitempty"`
	// HostKeyInstalled says the VM's SSH host key (SSHHostKey, made by
	// the daemon) is on its system disk; a fresh system disk clears it.
	HostKeyInstalled bool `json:"host_key_installed,omitempty"`
	// SuspendedAt is when the VM was suspended (state suspended only).
	SuspendedAt time.Time `json:"suspended_at,omitempty"`
	// SavedStateBytes is the disk its saved memory and device state take
	// (state suspended only).
	SavedStateBytes int64 `json:"saved_state_bytes,omitempty"`
	// ForkOf is the ID of the VM this one is being forked from, while
	// the fork has not made it its own machine; a row with it set when
	// no fork runs (after a crash) is a half-made child that reconcile
	// removes.
	ForkOf string `json:"fork_of,omitempty"`
	// WarmOf is the ID of the image whose warm state this VM is being
	// made for (`image warm`): a hidden VM the warm run removes; one
	// left by a crash is removed by reconcile.
	WarmOf string `json:"warm_of,omitempty"`
	// CreatedFrom says how the VM's first start was made: "warm state
	// of IMAGE" or "cold boot" (with the reason the warm state was not
	// used, when there was one).
	CreatedFrom string `json:"created_from,omitempty"`
	// Cold asks the first start to boot from the image even when a warm
	// state would fit (`vm create --cold`).
	Cold bool `json:"cold,omitempty"`
}

// VMForkRequest asks for copies of a running VM: the named children, or
// Count children named <source>-1, <source>-2, ... (the first free
// numbers).
type VMForkRequest struct {
	Names []string `json:"names,omitempty"`
	Count int      `json:"count,omitempty"`
}

// MaxForkChildren bounds the children of one fork.
const MaxForkChildren = 16

// VMLimits are the limits a VM's VMM runs under (its cgroup) and how
// often it hit them.
type VMLimits struct {
	CPUQuotaPercent int   `json:"cpu_quota_percent,omitempty"`
	MemoryMaxBytes  int64 `json:"memory_max_bytes,omitempty"`
	PidsMax         int64 `json:"pids_max,omitempty"`
	IOWeight        int64 `json:"io_weight,omitempty"`

	CPUThrottledPeriods int64 `json:"cpu_throttled_periods"`
	CPUThrottledMs      int64 `json:"cpu_throttled_ms"`
	MemoryMaxHits       int64 `json:"memory_max_hits"`
	OOMKills            int64 `json:"oom_kills"`
	PidsMaxHits         int64 `json:"pids_max_hits"`
	MemoryBytes         int64 `json:"memory_bytes,omitempty"`
}

// VMStats is what the stats poller last saw of a VM.
type VMStats struct {
	CollectedAt        time.Time      `json:"collected_at,omitempty"`
	CPUPercent         float64        `json:"cpu_percent,omitempty"`
	RSSBytes           int64          `json:"rss_bytes,omitempty"`
	VSZBytes           int64          `json:"vsz_bytes,omitempty"`
	SystemOverlayBytes int64          `json:"system_overlay_bytes,omitempty"`
	WorkDiskBytes      int64          `json:"work_disk_bytes,omitempty"`
	MetricsRaw         map[string]any `json:"metrics_raw,omitempty"`

	// LastActiveAt is the last time the poller saw the guest working
	// (CPU, block or network activity).
	LastActiveAt time.Time `json:"last_active_at,omitempty"`
	// Limits are the VMM's cgroup limits and how often they were hit.
	Limits *VMLimits `json:"limits,omitempty"`
	// EgressDenied counts the connections the guest tried to open that
	// its egress policy refused, since it last started (read from the
	// kernel when asked).
	EgressDenied int64 `json:"egress_denied,omitempty"`
	// SavedStateBytes is the disk a suspended VM's saved state takes
	// (filled when asked, from the VM's runtime).
	SavedStateBytes int64 `json:"saved_state_bytes,omitempty"`
}

// VMRecord is a VM as stored and as shown.
type VMRecord struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	ImageID       string    `json:"image_id"`
	State         VMState   `json:"state"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	LastTouchedAt time.Time `json:"last_touched_at"`
	Spec          VMSpec    `json:"spec"`
	Runtime       VMRuntime `json:"runtime"`
	Stats         VMStats   `json:"stats"`

	// OwnerUID is the uid of the user that created the VM.
	OwnerUID int `json:"owner_uid"`
}

// VMCreateRequest asks for a new VM. Zero sizes mean "use the defaults".
type VMCreateRequest struct {
	Name                  string `json:"name"`
	ImageName             string `json:"image_name,omitempty"`
	VCPUCount             int    `json:"vcpu_count,omitempty"`
	MemoryMiB             int    `json:"memory_mib,omitempty"`
	SystemOverlaySizeByte int64  `json:"system_overlay_size_bytes,omitempty"`
	WorkDiskSizeBytes     int64  `json:"work_disk_size_bytes,omitempty"`
	NATEnabled            bool   `json:"nat_enabled,omitempty"`
	NoStart               bool   `json:"no_start,omitempty"`

	// NATSet says NATEnabled was given explicitly (so false overrides a
	// default of true).
	NATSet bool `json:"nat_set,omitempty"`
	// AutoStopAfterSeconds overrides the idle auto-stop for this VM.
	AutoStopAfterSeconds *int64 `json:"auto_stop_after_seconds,omitempty"`
	// SSHPublicKeys are the caller's public keys, authorized in the guest.
	SSHPublicKeys []string `json:"ssh_public_keys,omitempty"`
	// Egress is the VM's egress policy; nil means the configured default.
	Egress *EgressPolicy `json:"egress,omitempty"`
	// IdleAction is what the idle policy does to the VM (IdleSuspend or
	// IdleStop); empty means the daemon's auto_stop_mode.
	IdleAction string `json:"idle_action,omitempty"`
	// Cold boots the VM from the image even when the image has a warm
	// state that fits (`banger image warm`).
	Cold bool `json:"cold,omitempty"`
}

// VMSetRequest changes a VM. Nil fields are left alone.
type VMSetRequest struct {
	IDOrName          string `json:"id_or_name"`
	VCPUCount         *int   `json:"vcpu_count,omitempty"`
	MemoryMiB         *int   `json:"memory_mib,omitempty"`
	WorkDiskSizeBytes *int64 `json:"work_disk_size_bytes,omitempty"`
	NATEnabled        *bool  `json:"nat_enabled,omitempty"`

	// AutoStopAfterSeconds changes the idle auto-stop for this VM; a
	// negative value goes back to the daemon default.
	AutoStopAfterSeconds *int64 `json:"auto_stop_after_seconds,omitempty"`
	// Egress changes the egress policy, live when the VM runs.
	Egress *EgressPolicy `json:"egress,omitempty"`
	// IdleAction changes what the idle policy does to the VM:
	// IdleSuspend, IdleStop, or IdleDefault for the daemon's setting.
	IdleAction *string `json:"idle_action,omitempty"`
}

// WorkspacePrepareMode says how much of a repository goes into a VM.
type WorkspacePrepareMode string

// The workspace modes.
const (
	WorkspacePrepareModeShallowOverlay WorkspacePrepareMode = "shallow_overlay"
	WorkspacePrepareModeFullCopy       WorkspacePrepareMode = "full_copy"
	WorkspacePrepareModeMetadataOnly   WorkspacePrepareMode = "metadata_only"
)

// WorkspacePrepareResult records a repository prepared in a VM.
type WorkspacePrepareResult struct {
	VMID          string               `json:"vm_id"`
	SourcePath    string               `json:"source_path"`
	RepoRoot      string               `json:"repo_root"`
	RepoName      string               `json:"repo_name"`
	GuestPath     string               `json:"guest_path"`
	Mode          WorkspacePrepareMode `json:"mode"`
	HeadCommit    string               `json:"head_commit,omitempty"`
	CurrentBranch string               `json:"current_branch,omitempty"`
	BranchName    string               `json:"branch_name,omitempty"`
	BaseCommit    string               `json:"base_commit,omitempty"`
	PreparedAt    time.Time            `json:"prepared_at"`
}

// Now returns the current time in UTC, truncated to the second, as stored.
func Now() time.Time {
	return time.Now().UTC().Truncate(time.Second)
}

// NewID returns a random 64-character hex identifier.
func NewID() (string, error) {
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(buf), nil
}

// ShortID returns the first 12 characters of an ID: enough to be unique on
// one host, short enough for device names.
func ShortID(id string) string {
	if len(id) <= 12 {
		return id
	}
	return id[:12]
}

// ParseSize parses a size such as "512M", "8G" or "1024K". A bare number
// means MiB. The result must be positive and at most MaxDiskBytes.
func ParseSize(raw string) (int64, error) {
	if raw == "" {
		return 0, errors.New("size is required")
	}
	raw = strings.TrimSpace(strings.ToUpper(raw))
	if raw == "" {
		return 0, errors.New("size is required")
	}
	unit := raw[len(raw)-1]
	multiplier := int64(1024 * 1024)
	number := raw
	switch unit {
	case 'K':
		multiplier = 1024
		number = raw[:len(raw)-1]
	case 'M':
		number = raw[:len(raw)-1]
	case 'G':
		multiplier = 1024 * 1024 * 1024
		number = raw[:len(raw)-1]
	default:
		if unit < '0' || unit > '9' {
			return 0, fmt.Errorf("unsupported size suffix: %q", string(unit))
		}
	}
	value, err := strconv.ParseInt(number, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse size %q: %w", raw, err)
	}
	// A value this large would overflow the multiplication; it is over
	// the limit either way.
	if value > MaxDiskBytes {
		return 0, fmt.Errorf("size exceeds max of %d bytes", MaxDiskBytes)
	}
	result := value * multiplier
	if result <= 0 {
		return 0, fmt.Errorf("size must be positive: %q", raw)
	}
	if result > MaxDiskBytes {
		return 0, fmt.Errorf("size exceeds max of %d bytes", MaxDiskBytes)
	}
	return result, nil
}

// FormatSizeBytes formats a byte count in the largest unit that divides it
// exactly: "8G", "512M", "4K", or plain bytes.
func FormatSizeBytes(bytes int64) string {
	switch {
	case bytes%(1024*1024*1024) == 0:
		return fmt.Sprintf("%dG", bytes/(1024*1024*1024))
	case bytes%(1024*1024) == 0:
		return fmt.Sprintf("%dM", bytes/(1024*1024))
	case bytes%1024 == 0:
		return fmt.Sprintf("%dK", bytes/1024)
	default:
		return strconv.FormatInt(bytes, 10)
	}
}
