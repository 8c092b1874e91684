// Package e2e runs the real daemon and CLI with real guests booted by
// banger-vmm-qemu, each daemon in a network namespace of its own.
package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/test/harness"
)

// TestVMLifecycle is issue D's end-to-end test: create → exec → NAT rules
// → nat off → stop → start with /root and system changes kept →
// reset-system drops system changes and keeps /root → kill → rm → nothing
// left. Along the way: ssh, cp both ways, logs, ssh-config.
func TestVMLifecycle(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")

	r := d.MustCLI("vm", "create", "dev", "--nat", "--vcpus", "1", "--memory", "512M", "--disk-size", "2G", "--overlay-size", "2G")
	if !strings.Contains(r.Stdout, "is running") {
		t.Fatalf("create: %s", r)
	}
	for _, step := range []string{"disks", "vmm", "boot", "ready"} {
		if !strings.Contains(r.Stderr, "] "+step) {
			t.Errorf("create progress lacks step %q:\n%s", step, r.Stderr)
		}
	}
	vm := d.VM(t, "dev")
	if vm.State != "running" || vm.Runtime.TapDevice == "" || vm.Runtime.SSHHostKey == "" {
		t.Fatalf("after create: %+v", vm)
	}

	// exec: output, stdin, and the exit status.
	r = d.MustCLI("exec", "dev", "--", "uname", "-a")
	if !strings.Contains(r.Stdout, "Linux dev ") {
		t.Errorf("uname -a: %s", r)
	}
	if r := d.CLIAs(nil, "hello from stdin", "exec", "dev", "--", "cat"); r.Code != 0 || r.Stdout != "hello from stdin" {
		t.Errorf("exec cat: %s", r)
	}
	if r := d.CLI("exec", "dev", "--", "sh", "-c", "echo oops >&2; exit 7"); r.Code != 7 || !strings.Contains(r.Stderr, "oops") {
		t.Errorf("exit status: %s", r)
	}
	// The guest got what the command line and work disk say.
	r = d.MustCLI("exec", "dev", "--", "sh", "-c", "hostname; ip -4 -o addr show eth0; findmnt -n -o SOURCE,FSTYPE /root")
	if !strings.Contains(r.Stdout, "dev\n") || !strings.Contains(r.Stdout, vm.Runtime.GuestIP+"/24") || !strings.Contains(r.Stdout, "/dev/vdb ext4") {
		t.Errorf("guest identity: %s", r.Stdout)
	}
	// The hostname resolves locally (no DNS wait for git and friends).
	if r := d.MustCLI("exec", "dev", "--", "getent", "hosts", "dev"); !strings.HasPrefix(r.Stdout, "127.0.1.1") {
		t.Errorf("getent hosts dev: %q", r.Stdout)
	}
	// ssh with a command.
	if r := d.MustCLI("ssh", "dev", "--", "echo", "via-ssh"); !strings.Contains(r.Stdout, "via-ssh") {
		t.Errorf("ssh: %s", r)
	}

	// NAT rules are there, tagged with the VM and its tap; then off, live.
	short := vm.ID[:12]
	rules, _ := d.InNetns("iptables-save")
	if n := strings.Count(rules, "banger:vm="+short+":tap="+vm.Runtime.TapDevice); n != 3 {
		t.Errorf("want 3 tagged rules for the vm, got %d:\n%s", n, rules)
	}
	d.MustCLI("vm", "set", "dev", "--nat", "off")
	rules, _ = d.InNetns("iptables-save")
	if strings.Contains(rules, "banger:vm=") {
		t.Errorf("nat off left rules:\n%s", rules)
	}

	// cp both ways, and a change on / and one in /root.
	local := filepath.Join(d.Dir, "up.txt")
	os.WriteFile(local, []byte("uploaded\n"), 0o644)
	d.MustCLI("cp", local, "dev:/root/up.txt")
	d.MustCLI("exec", "dev", "--", "sh", "-c", "echo system-change > /etc/banger-e2e; echo work-change > /root/work.txt; sync")
	down := filepath.Join(d.Dir, "down.txt")
	d.MustCLI("cp", "dev:/root/work.txt", down)
	if b, _ := os.ReadFile(down); string(b) != "work-change\n" {
		t.Errorf("cp down: %q", b)
	}
	// logs shows the console.
	if r := d.MustCLI("logs", "dev", "--tail", "500"); !strings.Contains(r.Stdout, "Linux version") && !strings.Contains(r.Stdout, "login") && !strings.Contains(r.Stdout, "systemd") {
		t.Errorf("logs: %.500s", r.Stdout)
	}
	// The daemon answers DNS for the VM's name on the bridge IP.
	self, _ := os.Executable()
	out, err := d.InNetns("env", "BANGER_DNS_QUERY=dev.banger@172.16.0.1:53", self)
	if err != nil || !strings.Contains(out, "A: "+vm.Runtime.GuestIP) {
		t.Errorf("dns dev.banger: %v %s", err, out)
	}
	out, _ = d.InNetns("env", "BANGER_DNS_QUERY=nope.banger@172.16.0.1:53", self)
	if !strings.Contains(out, "rcode: NXDOMAIN") {
		t.Errorf("dns nope.banger: %s", out)
	}
	// ssh-config names the VM.
	if r := d.MustCLI("ssh-config"); !strings.Contains(r.Stdout, "Host dev dev.banger") || !strings.Contains(r.Stdout, "ssh-proxy dev") {
		t.Errorf("ssh-config: %s", r.Stdout)
	}

	// stop, then start: both changes kept.
	d.MustCLI("vm", "stop", "dev")
	if v := d.VM(t, "dev"); v.State != "stopped" || v.Runtime.TapDevice != "" {
		t.Errorf("after stop: %s tap %q", v.State, v.Runtime.TapDevice)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after stop: %v", lo)
	}
	d.MustCLI("vm", "start", "dev")
	r = d.MustCLI("exec", "dev", "--", "sh", "-c", "cat /etc/banger-e2e /root/work.txt /root/up.txt")
	if r.Stdout != "system-change\nwork-change\nuploaded\n" {
		t.Errorf("after restart: %q", r.Stdout)
	}

	// reset-system drops the system change, keeps /root.
	if r := d.CLI("vm", "reset-system", "dev"); r.Code == 0 {
		t.Errorf("reset-system of a running vm succeeded")
	}
	d.MustCLI("vm", "stop", "dev")
	d.MustCLI("vm", "reset-system", "dev")
	d.MustCLI("vm", "start", "dev")
	r = d.MustCLI("exec", "dev", "--", "sh", "-c", "cat /etc/banger-e2e 2>/dev/null || echo gone; cat /root/work.txt")
	if r.Stdout != "gone\nwork-change\n" {
		t.Errorf("after reset-system: %q", r.Stdout)
	}

	// kill, then rm: nothing left.
	d.MustCLI("vm", "kill", "dev")
	if v := d.VM(t, "dev"); v.State != "stopped" {
		t.Errorf("after kill: %s", v.State)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after kill: %v", lo)
	}
	d.MustCLI("vm", "rm", "dev")
	if r := d.MustCLI("vm", "ls", "-q"); strings.TrimSpace(r.Stdout) != "" {
		t.Errorf("vm ls after rm: %q", r.Stdout)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after rm: %v", lo)
	}
	if _, err := os.Stat(vm.Runtime.VMDir); !os.IsNotExist(err) {
		t.Errorf("vm dir still there: %v", err)
	}
}

// TestRmForceRunningAndRestart covers rm of a running VM (refused, then
// --force) and restart.
func TestRmForceRunningAndRestart(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	d.MustCLI("vm", "create", "box", "--vcpus", "1", "--memory", "384M")
	d.MustCLI("vm", "restart", "box")
	if r := d.MustCLI("exec", "box", "--", "cat", "/proc/uptime"); r.Stdout == "" {
		t.Errorf("uptime empty")
	}
	if r := d.CLI("vm", "rm", "box"); r.Code == 0 || !strings.Contains(r.Stderr, "--force") {
		t.Errorf("rm of a running vm: %s", r)
	}
	d.MustCLI("vm", "rm", "--force", "box")
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after rm --force: %v", lo)
	}
}
