package network

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// DefaultTapPrefix is the name prefix of banger's taps: bgtap0, bgtap1, ...
const DefaultTapPrefix = "bgtap"

// maxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ-1).
const maxIfNameLen = 15

// Config is what the host side of the network needs to know.
type Config struct {
	// BridgeName is the bridge every tap is enslaved to.
	BridgeName string
	// BridgeIP is the bridge's address and the guests' gateway.
	BridgeIP string
	// CIDR is the prefix length of the guest subnet, e.g. "24".
	CIDR string
	// TapPoolSize is how many idle taps are kept ready.
	TapPoolSize int
	// TapPrefix names the taps: TapPrefix followed by a number. Empty
	// means DefaultTapPrefix.
	TapPrefix string
	// DNSDomain is the domain VM names resolve under.
	DNSDomain string
	// EgressLogGroup is the NFLOG group denied guest connections are
	// logged to; 0 means they are counted but not logged.
	EgressLogGroup int
}

// ConfigFrom takes the network settings out of the daemon's
// configuration.
func ConfigFrom(c model.DaemonConfig) Config {
	return Config{
		BridgeName:  c.BridgeName,
		BridgeIP:    c.BridgeIP,
		CIDR:        c.CIDR,
		TapPoolSize: c.TapPoolSize,
		DNSDomain:   c.DNSDomain,

		EgressLogGroup: c.EgressLogGroup,
	}
}

// validate checks the configuration and fills in defaults.
func (c *Config) validate() error {
	if c.TapPrefix == "" {
		c.TapPrefix = DefaultTapPrefix
	}
	if err := validIfName(c.BridgeName); err != nil {
		return fmt.Errorf("bridge name: %w", err)
	}
	// The prefix leaves room for at least four digits.
	if err := validIfName(c.TapPrefix); err != nil || len(c.TapPrefix) > maxIfNameLen-4 {
		return model.Errorf(model.EINVALID, "tap prefix %q: must be a valid interface name of at most %d characters", c.TapPrefix, maxIfNameLen-4)
	}
	if _, err := Subnet(c.BridgeIP, c.CIDR); err != nil {
		return model.Errorf(model.EINVALID, "network: %v", err)
	}
	if c.EgressLogGroup < 0 || c.EgressLogGroup > 65535 {
		return model.Errorf(model.EINVALID, "egress log group %d: must be 0 (off) to 65535", c.EgressLogGroup)
	}
	if c.TapPoolSize < 0 {
		return model.Errorf(model.EINVALID, "tap pool size %d: must not be negative", c.TapPoolSize)
	}
	return nil
}

// bridgeCIDR is the bridge's address in CIDR notation, e.g. 172.16.0.1/24.
func (c Config) bridgeCIDR() string { return c.BridgeIP + "/" + c.CIDR }

// validIfName checks an interface name banger creates or puts in a rule:
// 1 to 15 letters, digits, '-', '_' or '.', not "." or "..". Linux
// allows more; banger keeps to names that are safe in rule tags and
// command lines.
func validIfName(name string) error {
	if name == "" || len(name) > maxIfNameLen || name == "." || name == ".." {
		return model.Errorf(model.EINVALID, "interface name %q: must be 1-%d characters", name, maxIfNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return model.Errorf(model.EINVALID, "interface name %q: use letters, digits, '-', '_' or '.'", name)
		}
	}
	return nil
}

// Manager owns the host side of VM networking: the bridge, the tap pool,
// the per-VM NAT rules and the packet filter. It runs every command through its runner and
// is safe for concurrent use.
type Manager struct {
	cfg Config
	run hostexec.Runner
	log *slog.Logger

	// poolMu guards the pool and serialises tap commands.
	poolMu sync.Mutex
	free   map[string]bool
	inUse  map[string]bool

	// natMu serialises rule changes so a check-then-insert is not raced
	// by another VM's.
	natMu sync.Mutex
	// natRules are banger's tagged rules as last listed and changed
	// since, nil when unknown (natChange); forwardOn says EnableNAT saw
	// IP forwarding on since the last ListNAT. Guarded by natMu.
	natRules  []taggedRule
	forwardOn bool
	// filterMu serialises nft changes so a list-then-change is not raced
	// by another VM's.
	filterMu sync.Mutex
	// readLink reads one interface (netlink.go).
	readLink linkReader

	// nft is banger's tables as last listed and changed since, nil when
	// unknown (filterChange). Guarded by filterMu.
	nft *nftState
	// elems applies changes of elements only (nftlink.go); nil means
	// they go as nft scripts through the runner like every other change.
	// Used under filterMu.
	elems elemWriter
}

// New returns a Manager. It touches nothing on the host: call
// EnsureBridge and then Sync (with the daemon's in-use taps) before the
// first Acquire.
func New(cfg Config, run hostexec.Runner, log *slog.Logger) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:   cfg,
		run:   run,
		log:   log,
		free:  map[string]bool{},
		inUse: map[string]bool{},
	}
	m.readLink = m.readLinkIP
	return m, nil
}

// Config returns the configuration with defaults filled in.
func (m *Manager) Config() Config { return m.cfg }

// ip runs the ip command.
func (m *Manager) ip(ctx context.Context, args ...string) ([]byte, error) {
	return m.run.Run(ctx, "ip", args...)
}

// iptables runs the iptables command.
func (m *Manager) iptables(ctx context.Context, args ...string) ([]byte, error) {
	return m.run.Run(ctx, "iptables", args...)
}

// DNSName returns the name a VM resolves as: name.domain.
func DNSName(name, domain string) string {
	return name + "." + domain
}

// parseIPv4 parses an IPv4 address.
func parseIPv4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, model.Errorf(model.EINVALID, "%q: not an IPv4 address", s)
	}
	return a, nil
}
