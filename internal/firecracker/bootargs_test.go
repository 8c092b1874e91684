package firecracker

import (
	"testing"

	"banger/internal/model"
)

func TestBootArgs(t *testing.T) {
	const base = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd"
	const ip = "ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:1.1.1.1"
	tests := []struct {
		name string
		cfg  BootArgsConfig
		want string
	}{
		{"bare", BootArgsConfig{}, base},
		{"ip", BootArgsConfig{IP: ip}, base + " " + ip},
		{"ip and hostname", BootArgsConfig{IP: ip, Hostname: "vm1"}, base + " " + ip + " systemd.hostname=vm1"},
		{"extras split into words", BootArgsConfig{IP: ip, Extra: []string{"quiet  loglevel=3", "init=/sbin/overlay-init"}}, base + " " + ip + " quiet loglevel=3 init=/sbin/overlay-init"},
		{"nfsroot is not root", BootArgsConfig{Extra: []string{"nfsroot=/x"}}, base + " nfsroot=/x"},
	}
	for _, tt := range tests {
		got, err := BootArgs(tt.cfg)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestBootArgsRefuses(t *testing.T) {
	const ip = "ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off"
	tests := []struct {
		name string
		cfg  BootArgsConfig
	}{
		{"root in extras", BootArgsConfig{Extra: []string{"quiet root=/dev/vdb"}}},
		{"bare root", BootArgsConfig{Extra: []string{"root"}}},
		{"nopnp", BootArgsConfig{Extra: []string{"i8042.nopnp"}}},
		{"second ip", BootArgsConfig{IP: ip, Extra: []string{"ip=dhcp"}}},
		{"ip not ip=", BootArgsConfig{IP: "172.16.0.2"}},
		{"ip with space", BootArgsConfig{IP: ip + " root=/dev/vdb"}},
		{"hostname with space", BootArgsConfig{Hostname: "vm 1"}},
		{"hostname with dot", BootArgsConfig{Hostname: "vm.example"}},
		{"hostname leading hyphen", BootArgsConfig{Hostname: "-vm"}},
	}
	for _, tt := range tests {
		got, err := BootArgs(tt.cfg)
		if model.ErrorCode(err) != model.EINVALID {
			t.Errorf("%s: got %q, %v; want EINVALID", tt.name, got, err)
		}
	}
}
