package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/model"
)

func TestDefaultsWhenMissing(t *testing.T) {
	cfg, err := Load(filepath.Join(t.TempDir(), "nope.toml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BridgeName != model.DefaultBridgeName || cfg.BridgeIP != model.DefaultBridgeIP || cfg.CIDR != model.DefaultCIDR {
		t.Errorf("network defaults: %+v", cfg)
	}
	if cfg.DefaultDNS != model.DefaultDNS || cfg.StatsPollInterval != model.DefaultStatsPollInterval || cfg.StaleSweepInterval != model.DefaultStaleSweepInterval {
		t.Errorf("defaults: %+v", cfg)
	}
	d := cfg.VMDefaults
	if d.VCPUCount != model.DefaultVCPUCount || d.MemoryMiB != model.DefaultMemoryMiB || d.SystemOverlaySizeByte != model.DefaultSystemOverlaySize || d.WorkDiskSizeBytes != model.DefaultWorkDiskSize {
		t.Errorf("vm defaults: %+v", d)
	}
	if !slices.Equal(cfg.UpstreamDNS, []string{model.DefaultDNS}) || cfg.EgressLogGroup != DefaultEgressLogGroup || cfg.VMDefaults.Egress.Effective() != model.EgressOpen {
		t.Errorf("dns and egress defaults: %+v", cfg)
	}
	if cfg.StateDir != DefaultStateDir || cfg.SocketPath != DefaultSocketPath || cfg.CacheDir != "/var/lib/banger/cache" || cfg.SSHKeyPath != "/var/lib/banger/ssh/id_ed25519" {
		t.Errorf("paths: %+v", cfg)
	}
}

func TestMissingExplicitFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.toml"), true); err == nil {
		t.Fatal("want error for a missing explicit config")
	}
}

func TestParseFull(t *testing.T) {
	doc := `
log_level = "debug"
log_format = "json"
firecracker_bin = "/usr/local/bin/banger-vmm-qemu"
vmm_args = ["--accel", "tcg"]
auto_stop_stale_after = "2h"
auto_stop_mode = "stop"
stats_poll_interval = "5s"
bridge_name = "br-test"
bridge_ip = "10.99.0.1"
cidr = "24"
tap_pool_size = 2
default_dns = ["9.9.9.9", "1.1.1.1"]
egress_log_group = 42
default_image_name = "dev"
state_dir = "/tmp/banger-state"
socket_path = "/tmp/banger.sock"
dns_domain = "vm.test"
admin_group = "wheel-vms"
api_read_timeout = "5s"
api_idle_timeout = "1m"
build_timeout = "30m"

[limits]
connections = 10
operations = 0
vms = 3
unstarted_vms = 1
file_sync_size = "10M"
disk = "2T"

[vm_defaults]
vcpus = 4
memory = "1G"
overlay_size = "4G"
disk_size = "16G"
nat = true
auto_stop_after = "30m"
egress = "allow=10.0.0.0/8,*.github.com"

[[file_sync]]
host = "~/.gitconfig"
guest = ".gitconfig"
mode = "0644"

[[file_sync]]
host = "~/.config/nvim"
guest = ".config/nvim"
`
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LogLevel != "debug" || cfg.LogFormat != "json" || cfg.AutoStopStaleAfter != 2*time.Hour || cfg.StatsPollInterval != 5*time.Second {
		t.Errorf("got %+v", cfg)
	}
	if cfg.AutoStopMode != model.IdleStop {
		t.Errorf("auto stop mode %q", cfg.AutoStopMode)
	}
	if cfg.BridgeName != "br-test" || cfg.BridgeIP != "10.99.0.1" || cfg.TapPoolSize != 2 || cfg.DNSDomain != "vm.test" {
		t.Errorf("got %+v", cfg)
	}
	if got := strings.Join(cfg.VMMArgs, " "); got != "--accel tcg" {
		t.Errorf("vmm args %q", got)
	}
	if cfg.DefaultDNS != "9.9.9.9" || !slices.Equal(cfg.UpstreamDNS, []string{"9.9.9.9", "1.1.1.1"}) || cfg.EgressLogGroup != 42 {
		t.Errorf("dns %q %q, log group %d", cfg.DefaultDNS, cfg.UpstreamDNS, cfg.EgressLogGroup)
	}
	want := model.VMDefaultsOverride{VCPUCount: 4, MemoryMiB: 1024, SystemOverlaySizeByte: 4 << 30, WorkDiskSizeBytes: 16 << 30, NATEnabled: true, AutoStopAfter: 30 * time.Minute,
		Egress: model.EgressPolicy{Mode: model.EgressAllow, Allow: []string{"10.0.0.0/8", "*.github.com"}}}
	if !reflect.DeepEqual(cfg.VMDefaults, want) {
		t.Errorf("vm defaults %+v, want %+v", cfg.VMDefaults, want)
	}
	if len(cfg.FileSync) != 2 || cfg.FileSync[0].Mode != "0644" || cfg.FileSync[1].Guest != ".config/nvim" {
		t.Errorf("file sync %+v", cfg.FileSync)
	}
	if cfg.CacheDir != "/tmp/banger-state/cache" {
		t.Errorf("cache dir %q", cfg.CacheDir)
	}
	if cfg.AdminGroup != "wheel-vms" || cfg.APIReadTimeout != 5*time.Second || cfg.APIIdleTimeout != time.Minute || cfg.BuildTimeout != 30*time.Minute {
		t.Errorf("admin group %q, timeouts %s %s %s", cfg.AdminGroup, cfg.APIReadTimeout, cfg.APIIdleTimeout, cfg.BuildTimeout)
	}
	wantLimits := model.UserLimits{Connections: 10, Operations: 0, VMs: 3, UnstartedVMs: 1, FileSyncBytes: 10 << 20, DiskBytes: 2 << 40}
	if cfg.Limits != wantLimits {
		t.Errorf("limits %+v, want %+v", cfg.Limits, wantLimits)
	}
}

func TestLimitsDefaultAndPartial(t *testing.T) {
	cfg, err := Parse([]byte("[limits]\nvms = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultLimits
	want.VMs = 2
	if cfg.Limits != want {
		t.Errorf("limits %+v, want %+v", cfg.Limits, want)
	}
	if cfg.AdminGroup != DefaultAdminGroup || cfg.APIReadTimeout != DefaultAPIReadTimeout {
		t.Errorf("defaults: %q %s", cfg.AdminGroup, cfg.APIReadTimeout)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown key", "log_level = \"info\"\nbrige_name = \"x\"\n", []string{"line 2", "brige_name"}},
		{"unknown nested key", "[vm_defaults]\nvcpu = 2\n", []string{"line 2", "vm_defaults.vcpu"}},
		{"wrong type", "tap_pool_size = \"four\"\n", []string{"line 1", "tap_pool_size"}},
		{"bad duration", "\n\nstats_poll_interval = \"often\"\n", []string{"line 3", "stats_poll_interval", "duration"}},
		{"zero poll", "stats_poll_interval = \"0s\"\n", []string{"stats_poll_interval", "positive"}},
		{"bad size", "[vm_defaults]\ndisk_size = \"1T\"\n", []string{"line 2", "vm_defaults.disk_size", "unsupported size suffix"}},
		{"zero size", "[vm_defaults]\noverlay_size = \"0\"\n", []string{"vm_defaults.overlay_size", "positive"}},
		{"bad vcpus", "[vm_defaults]\nvcpus = 64\n", []string{"line 2", "vm_defaults.vcpus", "between 1 and 32"}},
		{"small memory", "[vm_defaults]\nmemory = \"64M\"\n", []string{"vm_defaults.memory", "at least 128"}},
		{"bad ip", "bridge_ip = \"172.16.0.300\"\n", []string{"line 1", "bridge_ip"}},
		{"bad cidr", "cidr = \"/24\"\n", []string{"cidr"}},
		{"bad level", "log_level = \"loud\"\n", []string{"log_level"}},
		{"relative state", "state_dir = \"var/lib\"\n", []string{"state_dir", "absolute"}},
		{"sync escapes", "[[file_sync]]\nhost = \"~/x\"\nguest = \"../etc/passwd\"\n", []string{"line 3", "file_sync.0.guest", "/root"}},
		{"sync abs outside", "[[file_sync]]\nhost = \"~/x\"\nguest = \"/etc/passwd\"\n", []string{"file_sync.0.guest"}},
		{"sync bad mode", "[[file_sync]]\nhost = \"~/x\"\nguest = \"x\"\nmode = \"rw\"\n", []string{"line 4", "file_sync.0.mode", "octal"}},
		{"sync no host", "[[file_sync]]\nguest = \"x\"\n", []string{"file_sync.0.host", "required"}},
		{"second sync entry", "[[file_sync]]\nhost = \"a\"\nguest = \"a\"\n[[file_sync]]\nhost = \"b\"\nguest = \"../b\"\n", []string{"line 6", "file_sync.1.guest"}},
		{"syntax", "log_level = \n", []string{"line 1"}},
		{"dns not an ip", "default_dns = \"dns.example\"\n", []string{"line 1", "default_dns", "not an IP"}},
		{"dns list with a bad entry", "default_dns = [\"1.1.1.1\", \"x\"]\n", []string{"default_dns", "\"x\" is not an IP"}},
		{"dns empty list", "default_dns = []\n", []string{"default_dns", "empty"}},
		{"dns list of numbers", "default_dns = [1]\n", []string{"default_dns", "not a string"}},
		{"dns number", "default_dns = 1\n", []string{"default_dns", "list of addresses"}},
		{"idle mode", "\nauto_stop_mode = \"hibernate\"\n", []string{"line 2", "auto_stop_mode", "\"suspend\"", "\"stop\""}},
		{"log group", "egress_log_group = 70000\n", []string{"egress_log_group", "65535"}},
		{"egress mode", "[vm_defaults]\negress = \"closed\"\n", []string{"line 2", "vm_defaults.egress", "unknown mode"}},
		{"negative limit", "[limits]\nvms = -1\n", []string{"line 2", "limits.vms", "0 (no limit)"}},
		{"bad limit size", "[limits]\ndisk = \"lots\"\n", []string{"line 2", "limits.disk", "not a size"}},
		{"huge limit size", "[limits]\nfile_sync_size = \"9999999T\"\n", []string{"limits.file_sync_size"}},
		{"unknown limit", "[limits]\nimages = 3\n", []string{"line 2", "limits.images"}},
		{"admin group is socket group", "socket_group = \"banger\"\nadmin_group = \"banger\"\n", []string{"admin_group", "socket_group"}},
		{"bad admin group", "admin_group = \"a b\"\n", []string{"admin_group", "not a group name"}},
		{"tiny read timeout", "api_read_timeout = \"10ms\"\n", []string{"api_read_timeout", "minimum"}},
		{"egress cidr", "[vm_defaults]\negress = \"allow=10.0.0.1/8\"\n", []string{"vm_defaults.egress", "did you mean 10.0.0.0/8"}},
		{"relative pool", "\nstorage_pool = \"pool.img\"\n", []string{"line 2", "storage_pool", "\"auto\"", "absolute path"}},
		{"pool dir", "storage_pool = \"/srv/pool/\"\n", []string{"storage_pool", "pool file"}},
		{"pool word", "storage_pool = \"on\"\n", []string{"storage_pool"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded; want error")
			}
			if model.ErrorCode(err) != model.EINVALID {
				t.Errorf("code %q; want EINVALID (%v)", model.ErrorCode(err), err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestPathPrecedence(t *testing.T) {
	t.Setenv(EnvPath, "")
	if p, explicit := Path(""); p != DefaultPath || explicit {
		t.Errorf("default path %q %v", p, explicit)
	}
	t.Setenv(EnvPath, "/env.toml")
	if p, explicit := Path(""); p != "/env.toml" || !explicit {
		t.Errorf("env path %q %v", p, explicit)
	}
	if p, _ := Path("/flag.toml"); p != "/flag.toml" {
		t.Errorf("flag path %q", p)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.toml")
	if err := os.WriteFile(p, []byte("tap_pool_size = 7\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p, true)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Load error %v", err)
	}
}

// TestPackagedConfigParses keeps the example in packaging/ valid, with
// every commented-out value uncommented too.
func TestPackagedConfigParses(t *testing.T) {
	b, err := os.ReadFile("../../packaging/bangerd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(b); err != nil {
		t.Fatalf("packaging/bangerd.toml as shipped: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "# ") && (strings.Contains(l, " = ") || strings.HasPrefix(l, "# [")) {
			l = strings.TrimPrefix(l, "# ")
		}
		lines = append(lines, l)
	}
	uncommented := strings.Join(lines, "\n")
	cfg, err := Parse([]byte(uncommented))
	if err != nil {
		t.Fatalf("packaging/bangerd.toml uncommented: %v\n%s", err, uncommented)
	}
	def := Default()
	if cfg.BridgeName != def.BridgeName || cfg.VMDefaults.MemoryMiB != def.VMDefaults.MemoryMiB || cfg.TapPoolSize != def.TapPoolSize ||
		cfg.Limits != def.Limits || cfg.AdminGroup != def.AdminGroup || cfg.BuildTimeout != def.BuildTimeout || cfg.APIIdleTimeout != def.APIIdleTimeout {
		t.Errorf("the example's values differ from the defaults: %+v", cfg)
	}
}

func TestStoragePool(t *testing.T) {
	for doc, want := range map[string]string{
		"":                                      "auto",
		"storage_pool = \"off\"\n":              "off",
		"storage_pool = \"/srv/banger.pool\"\n": "/srv/banger.pool",
	} {
		cfg, err := Parse([]byte(doc))
		if err != nil || cfg.StoragePool != want {
			t.Errorf("%q: storage_pool %q %v, want %q", doc, cfg.StoragePool, err, want)
		}
	}
}
