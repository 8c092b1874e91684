package network

import (
	"testing"
)

func TestAllocateIP(t *testing.T) {
	tests := []struct {
		bridge, cidr string
		used         []string
		want         string
		wantErr      bool
	}{
		{"172.16.0.1", "24", nil, "172.16.0.2", false},
		{"172.16.0.1", "24", []string{"172.16.0.2", "172.16.0.3"}, "172.16.0.4", false},
		{"172.16.0.1", "24", []string{"172.16.0.3"}, "172.16.0.2", false},
		{"172.16.0.254", "24", nil, "172.16.0.1", false},
		{"10.0.0.1", "30", nil, "10.0.0.2", false},
		{"10.0.0.1", "30", []string{"10.0.0.2"}, "", true},
		{"172.16.0.1", "x", nil, "", true},
	}
	for _, tt := range tests {
		got, err := AllocateIP(tt.bridge, tt.cidr, tt.used)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("AllocateIP(%s/%s, %v) = %q, %v; want %q (err %v)", tt.bridge, tt.cidr, tt.used, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestMACForIP(t *testing.T) {
	got, err := MACForIP("172.16.0.2")
	if err != nil || got != "06:00:ac:10:00:02" {
		t.Errorf("MACForIP = %q, %v", got, err)
	}
	if _, err := MACForIP("nope"); err == nil {
		t.Error("want error")
	}
}

func TestKernelIPArg(t *testing.T) {
	got, err := KernelIPArg("172.16.0.2", "172.16.0.1", "24", "dev", "1.1.1.1")
	want := "ip=172.16.0.2::172.16.0.1:255.255.255.0:dev:eth0:off:1.1.1.1"
	if err != nil || got != want {
		t.Errorf("KernelIPArg = %q, %v; want %q", got, err, want)
	}
	if m, _ := Netmask("20"); m != "255.255.240.0" {
		t.Errorf("Netmask(20) = %s", m)
	}
}
