package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/model"
)

// Host name resolution: when bangerd runs in the host's network
// namespace and the host has systemd-resolved, the daemon has it send the
// host's queries for <vm>.<dns_domain> to the daemon's DNS server on the
// bridge (network.RouteDomain), at network setup. Otherwise `banger
// doctor` says why and what to do instead.

// hostDNSState is what the setup did: routed, or why not and how.
type hostDNSState struct {
	mu     sync.Mutex
	routed bool
	server string
	why    string
	fix    string
}

func (h *hostDNSState) set(routed bool, server, why, fix string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.routed, h.server, h.why, h.fix = routed, server, why, fix
}

func (h *hostDNSState) get() (routed bool, server, why, fix string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.routed, h.server, h.why, h.fix
}

// resolverFix is what to do on a host without systemd-resolved.
func resolverFix(cfg model.DaemonConfig) string {
	return fmt.Sprintf("enable systemd-resolved and restart bangerd; or send the %s domain to %s:53 in your own resolver (dnsmasq: server=/%s/%s; unbound: a forward-zone for %s. with forward-addr: %s)",
		cfg.DNSDomain, cfg.BridgeIP, cfg.DNSDomain, cfg.BridgeIP, cfg.DNSDomain, cfg.BridgeIP)
}

// hostDNSConfigBlocker says why the configuration keeps the host from
// asking the daemon's DNS, and what to do; "" when nothing does. It is
// pure.
func hostDNSConfigBlocker(cfg model.DaemonConfig) (why, fix string) {
	switch want := net.JoinHostPort(cfg.BridgeIP, "53"); {
	case cfg.DNSListen == "off":
		return "the daemon's DNS server is off (dns_listen = \"off\"): VM names resolve nowhere", "remove dns_listen from the daemon's configuration and restart bangerd"
	case cfg.DNSListen != "" && cfg.DNSListen != want:
		return fmt.Sprintf("the daemon's DNS server listens on %s; systemd-resolved can only ask a link's server on port 53", cfg.DNSListen),
			fmt.Sprintf("remove dns_listen (the default is %s) and restart bangerd, or send the %s domain to %s in your own resolver", want, cfg.DNSDomain, cfg.DNSListen)
	}
	return "", ""
}

// hostDNSNetnsBlocker says why the daemon's network namespace keeps the
// host from asking its DNS; "" when it does not. named is the name of the
// namespace (ip netns) the daemon runs in, if any; same says whether it
// shares systemd-resolved's. It is pure.
func hostDNSNetnsBlocker(cfg model.DaemonConfig, named string, same bool, err error) (why, fix string) {
	const fix0 = "reach VMs through the daemon's socket (banger ssh, exec, cp and port-forward work from anywhere), or run bangerd in the host's network (scripts/quickstart.sh --host-network), where it sets up systemd-resolved itself"
	switch {
	case named != "":
		return fmt.Sprintf("bangerd runs in the network namespace %s, so %s names resolve only inside it (its DNS is %s there)", named, cfg.DNSDomain, cfg.BridgeIP),
			fix0 + fmt.Sprintf("; inside the namespace, `ip netns exec %s` commands can use %s as their nameserver", named, cfg.BridgeIP)
	case err != nil:
		return fmt.Sprintf("cannot tell whether bangerd shares systemd-resolved's network namespace: %v", err), "run bangerd as root, in the host's network namespace"
	case !same:
		return fmt.Sprintf("bangerd runs in a network namespace of its own, so %s names resolve only inside it (its DNS is %s there)", cfg.DNSDomain, cfg.BridgeIP), fix0
	}
	return "", ""
}

// namedNetns returns the name under netnsDir (/run/netns, where `ip netns`
// keeps them) of the network namespace ns ("net:[INODE]"), or "".
func namedNetns(netnsDir, ns string) string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(netnsDir, e.Name()), &st) == nil && fmt.Sprintf("net:[%d]", st.Ino) == ns {
			return e.Name()
		}
	}
	return ""
}

// resolvedPID finds systemd-resolved among the host's processes (0: not
// running).
func (d *Daemon) resolvedPID() int {
	procs, err := d.procs.List()
	if err != nil {
		return 0
	}
	for _, p := range procs {
		if len(p.Argv) > 0 && filepath.Base(p.Argv[0]) == "systemd-resolved" && !p.Dead() {
			return p.PID
		}
	}
	return 0
}

// hostDNSBlocker says why the host cannot resolve VM names through the
// daemon's DNS, and what to do; "" when it can.
func (d *Daemon) hostDNSBlocker() (why, fix string) {
	if why, fix := hostDNSConfigBlocker(d.cfg); why != "" {
		return why, fix
	}
	if d.dns == nil {
		return hostDNSConfigBlocker(model.DaemonConfig{DNSListen: "off"})
	}
	self, err := d.procs.NetNS(os.Getpid())
	if err != nil {
		return hostDNSNetnsBlocker(d.cfg, "", false, err)
	}
	if name := namedNetns(d.netnsDir, self); name != "" {
		return hostDNSNetnsBlocker(d.cfg, name, false, nil)
	}
	pid := d.resolvedPID()
	if pid == 0 {
		return "systemd-resolved is not running on this host", resolverFix(d.cfg)
	}
	theirs, err := d.procs.NetNS(pid)
	return hostDNSNetnsBlocker(d.cfg, "", err == nil && theirs == self, err)
}

// setupHostDNS points systemd-resolved at the daemon's DNS for the DNS
// domain when it can, and records why not when it cannot. It never
// fails the network's setup.
func (d *Daemon) setupHostDNS(ctx context.Context) {
	if why, fix := d.hostDNSBlocker(); why != "" {
		d.hostDNS.set(false, "", why, fix)
		d.logger.Info("host name resolution of VMs: not set up", "why", why)
		return
	}
	server := d.cfg.BridgeIP
	if _, err := d.net.RouteDomain(ctx, server); err != nil {
		d.hostDNS.set(false, server, fmt.Sprintf("systemd-resolved could not be told to send %s queries to %s: %v", d.cfg.DNSDomain, server, err), resolverFix(d.cfg))
		d.logger.Info("host name resolution of VMs: not set up", "err", err)
		return
	}
	d.hostDNS.set(true, server, "", "")
}

// hostDNSCheck is doctor's view of host name resolution: whether
// <vm>.<domain> resolves on this host now, or why not and what to do.
func (d *Daemon) hostDNSCheck(ctx context.Context) api.DoctorCheck {
	const name = "host dns"
	routed, server, why, fix := d.hostDNS.get()
	if !routed {
		if why == "" {
			why, fix = "the host network is not set up yet", "see the bridge and packet filter checks"
		}
		return api.DoctorCheck{Name: name, Status: api.StatusWarn, Detail: why, Fix: fix}
	}
	cur, err := d.net.BridgeDNS(ctx)
	if err != nil || !cur.Routes(server, d.cfg.DNSDomain) {
		detail := fmt.Sprintf("bangerd had systemd-resolved send %s queries to %s on %s, and that is gone", d.cfg.DNSDomain, server, d.cfg.BridgeName)
		if err != nil {
			detail += fmt.Sprintf(" (%v)", err)
		}
		return api.DoctorCheck{Name: name, Status: api.StatusWarn, Detail: detail, Fix: "restart bangerd (was systemd-resolved restarted, or the bridge recreated?)"}
	}
	return api.DoctorCheck{Name: name, Status: api.StatusPass,
		Detail: fmt.Sprintf("<vm>.%s resolves on this host: systemd-resolved sends %s queries to %s on %s", d.cfg.DNSDomain, d.cfg.DNSDomain, server, d.cfg.BridgeName)}
}
