// Package config reads bangerd's TOML configuration into a
// model.DaemonConfig. Decoding is strict: an unknown key or a bad value is
// an error that names the key and its line. A missing file means the
// defaults.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"banger/internal/model"

	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where bangerd looks for its configuration unless told
// otherwise by --config or BANGER_CONFIG.
const DefaultPath = "/etc/banger/bangerd.toml"

// EnvPath is the environment variable that names the configuration file.
const EnvPath = "BANGER_CONFIG"

// Defaults for banger's additions to the model's configuration.
const (
	DefaultStateDir        = "/var/lib/banger"
	DefaultSocketPath      = "/run/banger/bangerd.sock"
	DefaultSocketGroup     = "banger"
	DefaultDNSDomain       = "banger"
	DefaultImageName       = "default"
	DefaultTapPoolSize     = 4
	DefaultBootTimeout     = 5 * time.Minute
	DefaultStopTimeout     = 30 * time.Second
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"
	DefaultFirecrackerBin  = "firecracker"
	DefaultCacheDirSubpath = "cache"
	DefaultVMMUIDBase      = 1500000000
	DefaultCgroupParent    = "banger"
	// DefaultEgressLogGroup is the NFLOG group of denied guest
	// connections.
	DefaultEgressLogGroup = 1701
	// DefaultAdminGroup is the root-equivalent group.
	DefaultAdminGroup     = "banger-admin"
	DefaultAPIReadTimeout = 30 * time.Second
	DefaultAPIIdleTimeout = 2 * time.Minute
	DefaultBuildTimeout   = 2 * time.Hour
)

// DefaultLimits are the per-user limits when the configuration does not
// set them: room for real work, not for wearing the host down.
var DefaultLimits = model.UserLimits{
	Connections:   64,
	Operations:    8,
	VMs:           16,
	UnstartedVMs:  4,
	FileSyncBytes: 256 << 20,
	DiskBytes:     512 << 30,
}

// file is the TOML shape of the configuration. Durations and sizes are
// strings so their errors can name the key.
type file struct {
	LogLevel           *string         `toml:"log_level"`
	LogFormat          *string         `toml:"log_format"`
	FirecrackerBin     *string         `toml:"firecracker_bin"`
	VMMArgs            []string        `toml:"vmm_args"`
	SSHKeyPath         *string         `toml:"ssh_key_path"`
	AutoStopStaleAfter *string         `toml:"auto_stop_stale_after"`
	AutoStopMode       *string         `toml:"auto_stop_mode"`
	StatsPollInterval  *string         `toml:"stats_poll_interval"`
	StaleSweepInterval *string         `toml:"stale_sweep_interval"`
	BootTimeout        *string         `toml:"boot_timeout"`
	StopTimeout        *string         `toml:"stop_timeout"`
	BridgeName         *string         `toml:"bridge_name"`
	BridgeIP           *string         `toml:"bridge_ip"`
	CIDR               *string         `toml:"cidr"`
	TapPoolSize        *int            `toml:"tap_pool_size"`
	DefaultDNS         any             `toml:"default_dns"` // a string or a list of strings
	EgressLogGroup     *int            `toml:"egress_log_group"`
	DefaultImageName   *string         `toml:"default_image_name"`
	StateDir           *string         `toml:"state_dir"`
	CacheDir           *string         `toml:"cache_dir"`
	SocketPath         *string         `toml:"socket_path"`
	SocketGroup        *string         `toml:"socket_group"`
	DNSDomain          *string         `toml:"dns_domain"`
	DNSListen          *string         `toml:"dns_listen"`
	BuildNetNS         *string         `toml:"build_netns"`
	VMMUIDBase         *int            `toml:"vmm_uid_base"`
	JailerBin          *string         `toml:"jailer_bin"`
	CgroupParent       *string         `toml:"cgroup_parent"`
	StoragePool        *string         `toml:"storage_pool"`
	FileSync           []fileSyncEntry `toml:"file_sync"`
	VMDefaults         *vmDefaults     `toml:"vm_defaults"`
	AdminGroup         *string         `toml:"admin_group"`
	APIReadTimeout     *string         `toml:"api_read_timeout"`
	APIIdleTimeout     *string         `toml:"api_idle_timeout"`
	BuildTimeout       *string         `toml:"build_timeout"`
	Limits             *limits         `toml:"limits"`
}

// limits is the [limits] table: per-user limits, 0 meaning none.
type limits struct {
	Connections  *int    `toml:"connections"`
	Operations   *int    `toml:"operations"`
	VMs          *int    `toml:"vms"`
	UnstartedVMs *int    `toml:"unstarted_vms"`
	FileSyncSize *string `toml:"file_sync_size"`
	Disk         *string `toml:"disk"`
}

type fileSyncEntry struct {
	Host  string `toml:"host"`
	Guest string `toml:"guest"`
	Mode  string `toml:"mode"`
}

type vmDefaults struct {
	VCPUs         *int    `toml:"vcpus"`
	Memory        *string `toml:"memory"`
	OverlaySize   *string `toml:"overlay_size"`
	DiskSize      *string `toml:"disk_size"`
	NAT           *bool   `toml:"nat"`
	AutoStopAfter *string `toml:"auto_stop_after"`
	Egress        *string `toml:"egress"`
}

// Default returns the configuration used when no file exists.
func Default() model.DaemonConfig {
	return model.DaemonConfig{
		LogLevel:           DefaultLogLevel,
		LogFormat:          DefaultLogFormat,
		FirecrackerBin:     "",
		AutoStopStaleAfter: 0,
		StatsPollInterval:  model.DefaultStatsPollInterval,
		StaleSweepInterval: model.DefaultStaleSweepInterval,
		BootTimeout:        DefaultBootTimeout,
		StopTimeout:        DefaultStopTimeout,
		BridgeName:         model.DefaultBridgeName,
		BridgeIP:           model.DefaultBridgeIP,
		CIDR:               model.DefaultCIDR,
		TapPoolSize:        DefaultTapPoolSize,
		DefaultDNS:         model.DefaultDNS,
		UpstreamDNS:        []string{model.DefaultDNS},
		EgressLogGroup:     DefaultEgressLogGroup,
		DefaultImageName:   DefaultImageName,
		StateDir:           DefaultStateDir,
		SocketPath:         DefaultSocketPath,
		SocketGroup:        DefaultSocketGroup,
		DNSDomain:          DefaultDNSDomain,
		VMMUIDBase:         DefaultVMMUIDBase,
		CgroupParent:       DefaultCgroupParent,
		StoragePool:        "auto",
		AdminGroup:         DefaultAdminGroup,
		APIReadTimeout:     DefaultAPIReadTimeout,
		APIIdleTimeout:     DefaultAPIIdleTimeout,
		BuildTimeout:       DefaultBuildTimeout,
		Limits:             DefaultLimits,
		VMDefaults: model.VMDefaultsOverride{
			VCPUCount:             model.DefaultVCPUCount,
			MemoryMiB:             model.DefaultMemoryMiB,
			SystemOverlaySizeByte: model.DefaultSystemOverlaySize,
			WorkDiskSizeBytes:     model.DefaultWorkDiskSize,
		},
	}
}

// Path returns the configuration path to use: flag if set, else
// $BANGER_CONFIG, else DefaultPath. explicit says whether the caller named
// the file (then it must exist).
func Path(flag string) (path string, explicit bool) {
	if flag != "" {
		return flag, true
	}
	if env := os.Getenv(EnvPath); env != "" {
		return env, true
	}
	return DefaultPath, false
}

// Load reads the configuration at path. A missing file gives the
// defaults unless mustExist is set.
func Load(path string, mustExist bool) (model.DaemonConfig, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !mustExist {
		cfg := Default()
		return cfg, finish(&cfg)
	}
	if err != nil {
		return model.DaemonConfig{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return model.DaemonConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates a configuration document.
func Parse(data []byte) (model.DaemonConfig, error) {
	var f file
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return model.DaemonConfig{}, describeDecodeError(err)
	}
	lines := keyLines(data)
	cfg := Default()
	if err := apply(&cfg, &f, lines); err != nil {
		return model.DaemonConfig{}, err
	}
	if err := finish(&cfg); err != nil {
		return model.DaemonConfig{}, err
	}
	return cfg, nil
}

func describeDecodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var msgs []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			msgs = append(msgs, fmt.Sprintf("line %d: unknown key %q", row, strings.Join(e.Key(), ".")))
		}
		return model.Errorf(model.EINVALID, "%s", strings.Join(msgs, "; "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return model.Errorf(model.EINVALID, "line %d: key %q: %s", row, key, de.Error())
		}
		return model.Errorf(model.EINVALID, "line %d: %s", row, de.Error())
	}
	return model.Errorf(model.EINVALID, "%v", err)
}

// valueError names a key, its line and what is wrong with its value.
func valueError(lines map[string]int, key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if line, ok := lines[key]; ok {
		return model.Errorf(model.EINVALID, "line %d: key %q: %s", line, key, msg)
	}
	return model.Errorf(model.EINVALID, "key %q: %s", key, msg)
}

var cgroupParentRe = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,63}$`)

// groupNameRe is what useradd accepts for a group name (and a bit more).
var groupNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$`)

func apply(cfg *model.DaemonConfig, f *file, lines map[string]int) error {
	setString := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	setString(&cfg.LogLevel, f.LogLevel)
	setString(&cfg.LogFormat, f.LogFormat)
	setString(&cfg.FirecrackerBin, f.FirecrackerBin)
	setString(&cfg.SSHKeyPath, f.SSHKeyPath)
	setString(&cfg.BridgeName, f.BridgeName)
	setString(&cfg.BridgeIP, f.BridgeIP)
	setString(&cfg.CIDR, f.CIDR)
	if f.DefaultDNS != nil {
		list, err := dnsList(f.DefaultDNS)
		if err != nil {
			return valueError(lines, "default_dns", "%v", err)
		}
		cfg.UpstreamDNS = list
		cfg.DefaultDNS = list[0]
	}
	if f.EgressLogGroup != nil {
		cfg.EgressLogGroup = *f.EgressLogGroup
	}
	setString(&cfg.DefaultImageName, f.DefaultImageName)
	setString(&cfg.StateDir, f.StateDir)
	setString(&cfg.CacheDir, f.CacheDir)
	setString(&cfg.SocketPath, f.SocketPath)
	setString(&cfg.SocketGroup, f.SocketGroup)
	setString(&cfg.DNSDomain, f.DNSDomain)
	setString(&cfg.DNSListen, f.DNSListen)
	setString(&cfg.BuildNetNS, f.BuildNetNS)
	setString(&cfg.JailerBin, f.JailerBin)
	setString(&cfg.CgroupParent, f.CgroupParent)
	setString(&cfg.StoragePool, f.StoragePool)
	if sp := cfg.StoragePool; sp != "auto" && sp != "off" && (!filepath.IsAbs(sp) || filepath.Clean(sp) != sp || strings.HasSuffix(sp, "/")) {
		return valueError(lines, "storage_pool", "%q: use \"auto\" (a pool when the state directory cannot reflink and there is no device-mapper), \"off\", or the absolute path of the pool file", sp)
	}
	setString(&cfg.AdminGroup, f.AdminGroup)
	if f.AutoStopMode != nil {
		if err := model.ValidateIdleAction("auto_stop_mode", *f.AutoStopMode); err != nil {
			return valueError(lines, "auto_stop_mode", "%q: use \"suspend\" (keep idle VMs' processes, freeing their VMMs) or \"stop\" (shut idle VMs down)", *f.AutoStopMode)
		}
		cfg.AutoStopMode = *f.AutoStopMode
	}
	if f.VMMUIDBase != nil {
		// The range must stay clear of root and system users and fit a
		// /16's worth of VMs below the largest uid.
		if *f.VMMUIDBase < 100000 || *f.VMMUIDBase > 4294967294-65536 {
			return valueError(lines, "vmm_uid_base", "%d is out of range: use a uid from 100000 to %d whose next 65536 uids no user has", *f.VMMUIDBase, 4294967294-65536)
		}
		cfg.VMMUIDBase = *f.VMMUIDBase
	}
	if cp := cfg.CgroupParent; cp != "off" && !cgroupParentRe.MatchString(cp) {
		return valueError(lines, "cgroup_parent", "%q: want a name of lowercase letters, digits, '-' or '.', or \"off\"", cp)
	}
	if f.VMMArgs != nil {
		cfg.VMMArgs = f.VMMArgs
	}
	if f.TapPoolSize != nil {
		cfg.TapPoolSize = *f.TapPoolSize
	}

	durations := []struct {
		key     string
		src     *string
		dst     *time.Duration
		allow0  bool
		minimum time.Duration
	}{
		{"auto_stop_stale_after", f.AutoStopStaleAfter, &cfg.AutoStopStaleAfter, true, time.Second},
		{"stats_poll_interval", f.StatsPollInterval, &cfg.StatsPollInterval, false, 100 * time.Millisecond},
		{"stale_sweep_interval", f.StaleSweepInterval, &cfg.StaleSweepInterval, false, 100 * time.Millisecond},
		{"boot_timeout", f.BootTimeout, &cfg.BootTimeout, false, time.Second},
		{"stop_timeout", f.StopTimeout, &cfg.StopTimeout, false, 0},
		{"api_read_timeout", f.APIReadTimeout, &cfg.APIReadTimeout, false, time.Second},
		{"api_idle_timeout", f.APIIdleTimeout, &cfg.APIIdleTimeout, false, time.Second},
		{"build_timeout", f.BuildTimeout, &cfg.BuildTimeout, false, time.Minute},
	}
	for _, d := range durations {
		if d.src == nil {
			continue
		}
		v, err := parseDuration(*d.src, d.allow0, d.minimum)
		if err != nil {
			return valueError(lines, d.key, "%v", err)
		}
		*d.dst = v
	}

	if vd := f.VMDefaults; vd != nil {
		if vd.VCPUs != nil {
			if err := model.ValidateVCPUCount(*vd.VCPUs); err != nil {
				return valueError(lines, "vm_defaults.vcpus", "%v", err)
			}
			cfg.VMDefaults.VCPUCount = *vd.VCPUs
		}
		if vd.Memory != nil {
			n, err := model.ParseSize(*vd.Memory)
			if err == nil {
				err = model.ValidateMemoryMiB(int(n >> 20))
			}
			if err != nil {
				return valueError(lines, "vm_defaults.memory", "%v (use a size such as \"2G\" or \"512M\")", err)
			}
			cfg.VMDefaults.MemoryMiB = int(n >> 20)
		}
		for _, s := range []struct {
			key string
			src *string
			dst *int64
		}{
			{"vm_defaults.overlay_size", vd.OverlaySize, &cfg.VMDefaults.SystemOverlaySizeByte},
			{"vm_defaults.disk_size", vd.DiskSize, &cfg.VMDefaults.WorkDiskSizeBytes},
		} {
			if s.src == nil {
				continue
			}
			n, err := model.ParseSize(*s.src)
			if err == nil {
				err = model.ValidateDiskSize(s.key, n)
			}
			if err != nil {
				return valueError(lines, s.key, "%v", err)
			}
			*s.dst = n
		}
		if vd.NAT != nil {
			cfg.VMDefaults.NATEnabled = *vd.NAT
		}
		if vd.AutoStopAfter != nil {
			v, err := parseDuration(*vd.AutoStopAfter, true, time.Second)
			if err != nil {
				return valueError(lines, "vm_defaults.auto_stop_after", "%v", err)
			}
			cfg.VMDefaults.AutoStopAfter = v
		}
		if vd.Egress != nil {
			p, err := model.ParseEgress(*vd.Egress)
			if err != nil {
				return valueError(lines, "vm_defaults.egress", "%v", err)
			}
			cfg.VMDefaults.Egress = p
		}
	}

	if l := f.Limits; l != nil {
		if err := applyLimits(&cfg.Limits, l, lines); err != nil {
			return err
		}
	}

	for i, e := range f.FileSync {
		prefix := fmt.Sprintf("file_sync.%d", i)
		if strings.TrimSpace(e.Host) == "" {
			return valueError(lines, prefix+".host", "required: the host file or directory to copy (\"~/\" means the user's home)")
		}
		if strings.TrimSpace(e.Guest) == "" {
			return valueError(lines, prefix+".guest", "required: where to put it in the guest, relative to /root")
		}
		if err := ValidateGuestPath(e.Guest); err != nil {
			return valueError(lines, prefix+".guest", "%v", err)
		}
		if e.Mode != "" {
			if _, err := ParseMode(e.Mode); err != nil {
				return valueError(lines, prefix+".mode", "%v", err)
			}
		}
		cfg.FileSync = append(cfg.FileSync, model.FileSyncEntry{Host: e.Host, Guest: e.Guest, Mode: e.Mode})
	}

	return validate(cfg, lines)
}

// applyLimits reads the [limits] table. Counts are 0 (no limit) or
// positive; sizes are sizes such as "256M", or "0" for no limit.
func applyLimits(dst *model.UserLimits, l *limits, lines map[string]int) error {
	for _, c := range []struct {
		key string
		src *int
		dst *int
	}{
		{"limits.connections", l.Connections, &dst.Connections},
		{"limits.operations", l.Operations, &dst.Operations},
		{"limits.vms", l.VMs, &dst.VMs},
		{"limits.unstarted_vms", l.UnstartedVMs, &dst.UnstartedVMs},
	} {
		if c.src == nil {
			continue
		}
		if *c.src < 0 || *c.src > 1_000_000 {
			return valueError(lines, c.key, "%d must be between 0 (no limit) and 1000000", *c.src)
		}
		*c.dst = *c.src
	}
	for _, s := range []struct {
		key string
		src *string
		dst *int64
	}{
		{"limits.file_sync_size", l.FileSyncSize, &dst.FileSyncBytes},
		{"limits.disk", l.Disk, &dst.DiskBytes},
	} {
		if s.src == nil {
			continue
		}
		if strings.TrimSpace(*s.src) == "0" {
			*s.dst = 0
			continue
		}
		n, err := parseLimitSize(*s.src)
		if err != nil {
			return valueError(lines, s.key, "%v", err)
		}
		*s.dst = n
	}
	return nil
}

// parseLimitSize reads a size such as "256M", "64G" or "2T" (a bare
// number is MiB, as everywhere in banger), up to 1 PiB.
func parseLimitSize(s string) (int64, error) {
	bad := fmt.Errorf("%q is not a size such as \"256M\", \"64G\" or \"2T\", or \"0\" for no limit", s)
	t := strings.ToUpper(strings.TrimSpace(s))
	if t == "" {
		return 0, bad
	}
	shift := 20
	switch t[len(t)-1] {
	case 'K':
		shift = 10
	case 'M':
		shift = 20
	case 'G':
		shift = 30
	case 'T':
		shift = 40
	}
	if t[len(t)-1] > '9' {
		t = t[:len(t)-1]
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > (1<<50)>>shift {
		return 0, bad
	}
	return v << shift, nil
}

func validate(cfg *model.DaemonConfig, lines map[string]int) error {
	switch strings.ToLower(cfg.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return valueError(lines, "log_level", "%q is not one of debug, info, warn, error", cfg.LogLevel)
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return valueError(lines, "log_format", "%q is not one of text, json", cfg.LogFormat)
	}
	if ip := net.ParseIP(cfg.BridgeIP); ip == nil || ip.To4() == nil {
		return valueError(lines, "bridge_ip", "%q is not an IPv4 address", cfg.BridgeIP)
	}
	prefix, err := strconv.Atoi(cfg.CIDR)
	if err != nil || prefix < 16 || prefix > 29 {
		return valueError(lines, "cidr", "%q must be a prefix length between 16 and 29, such as \"24\"", cfg.CIDR)
	}
	if ip := net.ParseIP(cfg.DefaultDNS); ip == nil {
		return valueError(lines, "default_dns", "%q is not an IP address", cfg.DefaultDNS)
	}
	for _, u := range cfg.UpstreamDNS {
		if ip := net.ParseIP(u); ip == nil {
			return valueError(lines, "default_dns", "%q is not an IP address", u)
		}
	}
	if cfg.EgressLogGroup < 0 || cfg.EgressLogGroup > 65535 {
		return valueError(lines, "egress_log_group", "%d must be between 1 and 65535, or 0 to log no denied connections", cfg.EgressLogGroup)
	}
	if cfg.BridgeName == "" || len(cfg.BridgeName) > 15 || strings.ContainsAny(cfg.BridgeName, " /") {
		return valueError(lines, "bridge_name", "%q must be a network interface name of 1-15 characters", cfg.BridgeName)
	}
	if cfg.TapPoolSize < 0 || cfg.TapPoolSize > 256 {
		return valueError(lines, "tap_pool_size", "%d must be between 0 and 256", cfg.TapPoolSize)
	}
	if cfg.DefaultImageName != "" {
		if err := model.ValidateImageName(cfg.DefaultImageName); err != nil {
			return valueError(lines, "default_image_name", "%v", err)
		}
	}
	for _, p := range []struct{ key, v string }{
		{"state_dir", cfg.StateDir}, {"socket_path", cfg.SocketPath},
	} {
		if !filepath.IsAbs(p.v) {
			return valueError(lines, p.key, "%q must be an absolute path", p.v)
		}
	}
	for _, p := range []struct{ key, v string }{
		{"cache_dir", cfg.CacheDir}, {"ssh_key_path", cfg.SSHKeyPath}, {"build_netns", cfg.BuildNetNS},
	} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			return valueError(lines, p.key, "%q must be an absolute path", p.v)
		}
	}
	if len(cfg.SocketPath) > 100 {
		return valueError(lines, "socket_path", "%q is longer than a unix socket path may be (100 bytes)", cfg.SocketPath)
	}
	if cfg.DNSDomain != "" {
		for _, label := range strings.Split(cfg.DNSDomain, ".") {
			if model.ValidateVMName(label) != nil {
				return valueError(lines, "dns_domain", "%q must be dot-separated DNS labels", cfg.DNSDomain)
			}
		}
	}
	if cfg.AdminGroup != "" && !groupNameRe.MatchString(cfg.AdminGroup) {
		return valueError(lines, "admin_group", "%q is not a group name", cfg.AdminGroup)
	}
	if cfg.AdminGroup != "" && cfg.AdminGroup == cfg.SocketGroup {
		return valueError(lines, "admin_group", "%q is also socket_group: the admin group must be a group of its own, or members of the socket group would all be root-equivalent", cfg.AdminGroup)
	}
	if cfg.DNSListen != "" && cfg.DNSListen != "off" {
		if _, _, err := net.SplitHostPort(cfg.DNSListen); err != nil {
			return valueError(lines, "dns_listen", "%q must be host:port or \"off\"", cfg.DNSListen)
		}
	}
	return nil
}

// finish fills values derived from others.
func finish(cfg *model.DaemonConfig) error {
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(cfg.StateDir, DefaultCacheDirSubpath)
	}
	if cfg.SSHKeyPath == "" {
		cfg.SSHKeyPath = filepath.Join(cfg.StateDir, "ssh", "id_ed25519")
	}
	return nil
}

// dnsList reads default_dns: one address, or a non-empty list of them.
func dnsList(v any) ([]string, error) {
	switch v := v.(type) {
	case string:
		return []string{v}, nil
	case []any:
		if len(v) == 0 {
			return nil, fmt.Errorf("the list is empty; name at least one nameserver")
		}
		var out []string
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%v is not a string; use addresses such as \"1.1.1.1\"", e)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("must be an address or a list of addresses, such as [\"1.1.1.1\", \"9.9.9.9\"]")
}

func parseDuration(s string, allowZero bool, minimum time.Duration) (time.Duration, error) {
	if s == "0" && allowZero {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as \"30s\", \"10m\" or \"2h\"", s)
	}
	if d == 0 && allowZero {
		return 0, nil
	}
	if d < 0 || (d == 0 && !allowZero) {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	if d < minimum {
		return 0, fmt.Errorf("%q is below the minimum of %s", s, minimum)
	}
	return d, nil
}

// ParseMode parses an octal file mode such as "0644".
func ParseMode(s string) (fs.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("mode %q must be octal, such as \"0600\" or \"0755\"", s)
	}
	return fs.FileMode(v), nil
}

// ValidateGuestPath checks a file sync guest path: relative to /root (or
// absolute under /root), and never leaving it.
func ValidateGuestPath(p string) error {
	rel := p
	if filepath.IsAbs(p) {
		r, err := filepath.Rel("/root", filepath.Clean(p))
		if err != nil {
			return fmt.Errorf("guest path %q must be under /root", p)
		}
		rel = r
	}
	rel = strings.TrimPrefix(rel, "~/")
	for _, part := range strings.Split(filepath.ToSlash(rel), "/") {
		if part == ".." {
			return fmt.Errorf("guest path %q must stay under /root (no \"..\")", p)
		}
	}
	clean := filepath.Clean(rel)
	if clean == "." || clean == "" {
		return fmt.Errorf("guest path %q must name a file or directory under /root, not /root itself", p)
	}
	return nil
}
