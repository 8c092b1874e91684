package network

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"banger/internal/hostexec/fakeos"
)

func TestParseResolvectlLink(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{"Link 5 (br-fc): 172.16.0.1\n", []string{"172.16.0.1"}, false},
		{"Link 5 (br-fc): ~banger example.com", []string{"~banger", "example.com"}, false},
		{"Link 12 (br-fc):\n", []string{}, false},
		{"Global: 1.1.1.1", nil, true},
		{"", nil, true},
	}
	for _, tt := range tests {
		got, err := parseResolvectlLink([]byte(tt.in))
		if (err != nil) != tt.bad || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseResolvectlLink(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestResolvectlArgv(t *testing.T) {
	for _, tt := range []struct{ got, want []string }{
		{resolvectlDNSArgv("br-fc", "172.16.0.1"), []string{"dns", "br-fc", "172.16.0.1"}},
		{resolvectlDomainArgv("br-fc", "banger"), []string{"domain", "br-fc", "~banger"}},
		{resolvectlDefaultRouteArgv("br-fc"), []string{"default-route", "br-fc", "false"}},
		{resolvectlRevertArgv("br-fc"), []string{"revert", "br-fc"}},
		{resolvectlGetArgv("dns", "br-fc"), []string{"dns", "br-fc"}},
	} {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("argv %q; want %q", tt.got, tt.want)
		}
	}
}

// TestRouteDomain on the fake host: the bridge gets the daemon's DNS and
// ~banger, once; the settings go with the bridge; without
// systemd-resolved, asking fails.
func TestRouteDomain(t *testing.T) {
	o := fakeos.New()
	ctx := context.Background()
	m, err := New(Config{BridgeName: "br-fc", BridgeIP: "172.16.0.1", CIDR: "24", DNSDomain: "banger"}, o.Runner(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RouteDomain(ctx, "172.16.0.1"); err == nil || !strings.Contains(err.Error(), "resolve1") {
		t.Errorf("without systemd-resolved: %v", err)
	}
	o.RunResolved()
	changed, err := m.RouteDomain(ctx, "172.16.0.1")
	if err != nil || !changed {
		t.Fatalf("RouteDomain = %v, %v", changed, err)
	}
	const routed = "resolved br-fc dns=172.16.0.1 domain=~banger default-route=no\n"
	if s := o.String(); !strings.Contains(s, routed) {
		t.Errorf("host state:\n%s", s)
	}
	if changed, err := m.RouteDomain(ctx, "172.16.0.1"); err != nil || changed {
		t.Errorf("second RouteDomain = %v, %v; want no change", changed, err)
	}
	d, err := m.BridgeDNS(ctx)
	if err != nil || !d.Routes("172.16.0.1", "banger") {
		t.Errorf("BridgeDNS = %+v, %v", d, err)
	}
	// Another server: set again.
	if changed, _ := m.RouteDomain(ctx, "172.16.0.9"); !changed {
		t.Error("a new server changed nothing")
	}
	if err := m.UnrouteDomain(ctx); err != nil {
		t.Fatal(err)
	}
	if s := o.String(); strings.Contains(s, "resolved") {
		t.Errorf("after revert:\n%s", s)
	}
	m.RouteDomain(ctx, "172.16.0.1")
	if _, err := o.Runner().Run(ctx, "ip", "link", "del", "br-fc"); err != nil {
		t.Fatal(err)
	}
	if s := o.String(); strings.Contains(s, "resolved") {
		t.Errorf("the settings outlived the bridge:\n%s", s)
	}
}
