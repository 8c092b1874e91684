package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/hostexec"
	"banger/internal/model"
)

// TestHostChecksOnABareHost runs the checks against an empty fake root: no
// /dev/kvm, no device-mapper, no tun. Each missing piece is WARN or FAIL
// with a fix line; nothing crashes.
func TestHostChecksOnABareHost(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "proc/sys/net/ipv4"), 0o755)
	os.WriteFile(filepath.Join(root, "proc/sys/net/ipv4/ip_forward"), []byte("0\n"), 0o644)
	os.WriteFile(filepath.Join(root, "proc/misc"), []byte(" 58 loop-control\n"), 0o644)
	fake := &hostexec.Fake{Handler: func(argv []string, _ string) (string, error) {
		switch argv[0] {
		case "iptables":
			return "-P POSTROUTING ACCEPT\n", nil
		case "nft":
			return `{"nftables": []}` + "\n", nil
		case "/usr/local/bin/banger-vmm-qemu":
			return "banger-vmm-qemu 0.1.0\n", nil
		}
		return "", hostexec.ErrUnexpected
	}}
	checks := Host(context.Background(), Input{
		Config:  model.DaemonConfig{StateDir: root, SSHKeyPath: filepath.Join(root, "key")},
		VMMPath: "/usr/local/bin/banger-vmm-qemu",
		Root:    root,
	}, fake)
	got := map[string]api.DoctorCheck{}
	for _, c := range checks {
		got[c.Name] = c
		if c.Status != api.StatusPass && c.Fix == "" {
			t.Errorf("%s is %s without a fix line", c.Name, c.Status)
		}
	}
	for name, status := range map[string]string{
		"kvm": "WARN", "vmm": "PASS", "device-mapper": "WARN", "tun": "FAIL",
		"ip_forward": "WARN", "loop": "WARN", "ssh-key": "WARN",
	} {
		if got[name].Status != status {
			t.Errorf("%s: %s (%s); want %s", name, got[name].Status, got[name].Detail, status)
		}
	}
	if !strings.Contains(got["device-mapper"].Detail, "no device-mapper") {
		t.Errorf("device-mapper detail: %q", got["device-mapper"].Detail)
	}
	if !Failed(checks) {
		t.Error("Failed() = false with a FAIL")
	}
	if u := fake.Unexpected(); len(u) > 0 {
		t.Errorf("unexpected commands: %v", u)
	}
}

func TestNoVMMFails(t *testing.T) {
	c := &checker{in: Input{}, runner: &hostexec.Fake{}}
	if r := c.vmm(context.Background()); r.Status != api.StatusFail || r.Fix == "" {
		t.Errorf("vmm with no binary: %+v", r)
	}
}

func TestAddressesAndStoragePoolChecks(t *testing.T) {
	for _, c := range []struct {
		cidr   string
		vms    int
		status string
		detail string
	}{
		{"24", 10, "PASS", "10 of 253 guest addresses in the /24 used"},
		{"24", 230, "WARN", "nearly used up"},
		{"24", 253, "FAIL", "no VM can be created"},
		{"22", 1000, "WARN", "1000 of 1021"},
		{"22", -1, "WARN", "unknown"},
		{"x", 3, "WARN", "not a prefix length"},
	} {
		ch := (&checker{in: Input{Config: model.DaemonConfig{CIDR: c.cidr}, VMs: c.vms}}).addresses()
		if ch.Status != c.status || !strings.Contains(ch.Detail, c.detail) || (c.status != "PASS" && ch.Fix == "") {
			t.Errorf("cidr %s, %d VMs: %s %q fix %q; want %s %q", c.cidr, c.vms, ch.Status, ch.Detail, ch.Fix, c.status, c.detail)
		}
	}
	for _, c := range []struct {
		in     Input
		status string
	}{
		{Input{StoragePool: "/s/pool.img on /s/pool: ... (in use)"}, "PASS"},
		{Input{StoragePool: "storage_pool is off"}, "PASS"},
		{Input{StoragePool: "/s/pool.img on /s/pool: ...", StoragePoolLow: true}, "FAIL"},
		{Input{StoragePool: "storage pool unusable: mkfs.xfs: not found"}, "WARN"},
		{Input{StoragePoolErr: os.ErrNotExist}, "FAIL"},
		{Input{}, "WARN"},
	} {
		if ch := (&checker{in: c.in}).storagePool(); ch.Status != c.status {
			t.Errorf("%+v: %s %q; want %s", c.in, ch.Status, ch.Detail, c.status)
		}
	}
}
