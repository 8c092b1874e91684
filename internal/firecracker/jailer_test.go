package firecracker

import (
	"reflect"
	"testing"

	"banger/internal/model"
)

func TestJailerArgs(t *testing.T) {
	tests := []struct {
		name string
		c    JailerConfig
		want []string
	}{
		{
			name: "minimal",
			c:    JailerConfig{ID: "vm-1", ExecFile: "/usr/bin/firecracker", UID: 1500000002, GID: 1500000002},
			want: []string{"--id", "vm-1", "--exec-file", "/usr/bin/firecracker", "--uid", "1500000002", "--gid", "1500000002"},
		},
		{
			name: "everything",
			c: JailerConfig{
				ID: "abc", ExecFile: "/opt/fc/firecracker", UID: 1000, GID: 1001, CgroupVersion: 2,
				Cgroups: []string{"cpu.max=200000 100000", "memory.max=2415919104"}, ParentCgroup: "banger",
				ChrootBaseDir: "/var/lib/banger/jail", NetNS: "/var/run/netns/banger",
				ResourceLimits: []string{"no-file=1024"}, Daemonize: true, NewPIDNS: true,
				FirecrackerArgs: []string{"--api-sock", "/run/firecracker.socket"},
			},
			want: []string{
				"--id", "abc", "--exec-file", "/opt/fc/firecracker", "--uid", "1000", "--gid", "1001",
				"--cgroup-version", "2", "--cgroup", "cpu.max=200000 100000", "--cgroup", "memory.max=2415919104",
				"--parent-cgroup", "banger", "--chroot-base-dir", "/var/lib/banger/jail", "--netns", "/var/run/netns/banger",
				"--resource-limit", "no-file=1024", "--daemonize", "--new-pid-ns",
				"--", "--api-sock", "/run/firecracker.socket",
			},
		},
	}
	for _, tt := range tests {
		got, err := JailerArgs(tt.c)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %q, %v\nwant %q", tt.name, got, err, tt.want)
		}
	}
}

func TestJailerArgsRefuses(t *testing.T) {
	ok := JailerConfig{ID: "vm1", ExecFile: "/usr/bin/firecracker", UID: 1000, GID: 1000}
	tests := []func(*JailerConfig){
		func(c *JailerConfig) { c.ID = "vm 1" },
		func(c *JailerConfig) { c.ID = "" },
		func(c *JailerConfig) { c.ExecFile = "firecracker" },
		func(c *JailerConfig) { c.UID = 0 },
		func(c *JailerConfig) { c.GID = 0 },
		func(c *JailerConfig) { c.CgroupVersion = 3 },
		func(c *JailerConfig) { c.ChrootBaseDir = "jail" },
		func(c *JailerConfig) { c.NetNS = "ns" },
		func(c *JailerConfig) { c.ParentCgroup = "/abs" },
		func(c *JailerConfig) { c.ParentCgroup = "a/../../b" },
		func(c *JailerConfig) { c.Cgroups = []string{"cpu.max"} },
		func(c *JailerConfig) { c.Cgroups = []string{"=1"} },
		func(c *JailerConfig) { c.Cgroups = []string{"../x=1"} },
		func(c *JailerConfig) { c.ResourceLimits = []string{"no-file="} },
		func(c *JailerConfig) { c.FirecrackerArgs = []string{"--id", "other"} },
	}
	for i, mod := range tests {
		c := ok
		mod(&c)
		if _, err := JailerArgs(c); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("case %d (%+v): got %v, want EINVALID", i, c, err)
		}
	}
}

func TestChrootDir(t *testing.T) {
	c := JailerConfig{ID: "vm1", ExecFile: "/usr/local/bin/firecracker"}
	if got, want := ChrootDir(c), "/srv/jailer/firecracker/vm1/root"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	c.ChrootBaseDir = "/var/lib/banger/jail"
	if got, want := JailedAPISock(c), "/var/lib/banger/jail/firecracker/vm1/root/run/firecracker.socket"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
