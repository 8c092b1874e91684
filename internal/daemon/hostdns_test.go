package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/proc"
)

func TestHostDNSBlockers(t *testing.T) {
	cfg := model.DaemonConfig{BridgeIP: "172.16.0.1", DNSDomain: "banger"}
	for _, tt := range []struct {
		listen, why string
	}{
		{"", ""},
		{"172.16.0.1:53", ""},
		{"off", "DNS server is off"},
		{"127.0.0.1:5353", "listens on 127.0.0.1:5353"},
	} {
		cfg.DNSListen = tt.listen
		why, fix := hostDNSConfigBlocker(cfg)
		if (tt.why == "") != (why == "") || !strings.Contains(why, tt.why) || (why != "" && fix == "") {
			t.Errorf("dns_listen %q: %q, %q; want a reason saying %q", tt.listen, why, fix, tt.why)
		}
	}
	if why, _ := hostDNSNetnsBlocker(cfg, "", true, nil); why != "" {
		t.Errorf("host netns: %q", why)
	}
	if why, fix := hostDNSNetnsBlocker(cfg, "", false, nil); !strings.Contains(why, "namespace of its own") || !strings.Contains(fix, "port-forward") {
		t.Errorf("own netns: %q, %q", why, fix)
	}
	if why, fix := hostDNSNetnsBlocker(cfg, "banger", false, nil); !strings.Contains(why, "network namespace banger") || !strings.Contains(fix, "ip netns exec banger") {
		t.Errorf("named netns: %q, %q", why, fix)
	}
	if why, _ := hostDNSNetnsBlocker(cfg, "", false, errors.New("no /proc")); !strings.Contains(why, "no /proc") {
		t.Errorf("unknown netns: %q", why)
	}
}

// TestHostDNSOnTheFakeHost: in the host's namespace with systemd-resolved,
// the bridge routes the domain to the daemon's DNS and doctor passes;
// the settings go with the bridge and doctor says so; in a namespace of
// its own, or without systemd-resolved, nothing is set and doctor says
// what to do.
func TestHostDNSOnTheFakeHost(t *testing.T) {
	// setup: systemd-resolved (when resolvedNS is set) runs in
	// resolvedNS, the daemon in selfNS; named namespaces are in a
	// directory of the test.
	setup := func(t *testing.T, resolvedNS, selfNS string) *testEnv {
		e := newTestDaemon(t, false)
		e.d.cfg.DNSListen = ""
		dns, err := network.NewDNSServer("banger", nil)
		if err != nil {
			t.Fatal(err)
		}
		e.d.dns = dns
		e.d.netnsDir = t.TempDir()
		proc.WriteFakeNetNS(e.vmms.root, os.Getpid(), selfNS)
		if resolvedNS != "" {
			proc.WriteFake(e.vmms.root, proc.Process{PID: 77, PPID: 1, Argv: []string{"/usr/lib/systemd/systemd-resolved"}}, "")
			proc.WriteFakeNetNS(e.vmms.root, 77, resolvedNS)
			e.os.RunResolved()
		}
		e.d.setupHostDNS(e.ctx)
		return e
	}
	check := func(t *testing.T, e *testEnv, status, detail, fix string) {
		t.Helper()
		c := e.d.hostDNSCheck(e.ctx)
		if c.Status != status || !strings.Contains(c.Detail, detail) || !strings.Contains(c.Fix, fix) {
			t.Errorf("doctor: %+v; want %s saying %q, fix %q", c, status, detail, fix)
		}
	}

	t.Run("host namespace with systemd-resolved", func(t *testing.T) {
		e := setup(t, "net:[1]", "net:[1]")
		if s := e.os.String(); !strings.Contains(s, "resolved br-fc dns=172.16.0.1 domain=~banger default-route=no\n") {
			t.Errorf("host state:\n%s", s)
		}
		check(t, e, api.StatusPass, "<vm>.banger resolves on this host", "")
		// Set up again (a daemon restart): nothing changes.
		e.d.setupHostDNS(e.ctx)
		if n := strings.Count(strings.Join(e.os.Runner().Calls(), "\n"), "resolvectl dns br-fc 172.16.0.1"); n != 1 {
			t.Errorf("resolvectl dns set %d times; want once", n)
		}
		e.os.Runner().Run(e.ctx, "ip", "link", "del", "br-fc")
		check(t, e, api.StatusWarn, "that is gone", "restart bangerd")
	})
	t.Run("own namespace", func(t *testing.T) {
		e := setup(t, "net:[1]", "net:[2]")
		if s := e.os.String(); strings.Contains(s, "resolved") {
			t.Errorf("host state:\n%s", s)
		}
		check(t, e, api.StatusWarn, "network namespace of its own", "port-forward")
	})
	t.Run("named namespace", func(t *testing.T) {
		e := newTestDaemon(t, false)
		e.d.cfg.DNSListen = ""
		e.d.dns, _ = network.NewDNSServer("banger", nil)
		e.d.netnsDir = t.TempDir()
		f := filepath.Join(e.d.netnsDir, "banger")
		os.WriteFile(f, nil, 0o644)
		var st unix.Stat_t
		unix.Stat(f, &st)
		proc.WriteFakeNetNS(e.vmms.root, os.Getpid(), fmt.Sprintf("net:[%d]", st.Ino))
		e.d.setupHostDNS(e.ctx)
		check(t, e, api.StatusWarn, "network namespace banger", "ip netns exec banger")
	})
	t.Run("no systemd-resolved", func(t *testing.T) {
		e := setup(t, "", "net:[1]")
		check(t, e, api.StatusWarn, "systemd-resolved is not running", "dnsmasq: server=/banger/172.16.0.1")
	})
	t.Run("systemd-resolved refuses", func(t *testing.T) {
		e := newTestDaemon(t, false)
		e.os.Fail["resolvectl dns br-fc 172.16.0.1"] = "Failed to set DNS configuration: Access denied"
		e.d.cfg.DNSListen = ""
		e.d.dns, _ = network.NewDNSServer("banger", nil)
		e.d.netnsDir = t.TempDir()
		proc.WriteFakeNetNS(e.vmms.root, os.Getpid(), "net:[1]")
		proc.WriteFake(e.vmms.root, proc.Process{PID: 77, PPID: 1, Argv: []string{"/usr/lib/systemd/systemd-resolved"}}, "")
		proc.WriteFakeNetNS(e.vmms.root, 77, "net:[1]")
		e.os.RunResolved()
		e.d.setupHostDNS(e.ctx)
		check(t, e, api.StatusWarn, "Access denied", "dnsmasq")
	})
	t.Run("dns off", func(t *testing.T) {
		e := newTestDaemon(t, false)
		check(t, e, api.StatusWarn, "DNS server is off", "dns_listen")
	})
}
