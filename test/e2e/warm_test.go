package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"banger/test/harness"
)

// TestWarmCreate warms the image once, then creates two VMs that fit
// its warm state: each is restored, not booted, and is its own machine
// (hostname, machine-id, MAC, IP, host key differ, as the guest itself
// reports them and as the daemon records them), which the user reaches
// with plain ssh and their key. A VM with other memory boots cold and
// says so. Dropping the warm state and removing everything leaves
// nothing. One warm boot, one cold boot, two restores.
func TestWarmCreate(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	start := time.Now()
	r := d.MustCLI("image", "warm", "base", "--vcpus", "1", "--memory", "512M")
	t.Logf("image warm took %s:\n%s%s", time.Since(start).Round(time.Millisecond), r.Stderr, r.Stdout)
	if !strings.Contains(r.Stdout, "image base is warm") {
		t.Errorf("image warm said %q", r.Stdout)
	}
	// Nothing of the hidden VM is left.
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after image warm: %v", lo)
	}
	if vms := d.MustCLI("vm", "ls", "-q").Stdout; strings.TrimSpace(vms) != "" {
		t.Errorf("vm ls after image warm: %q", vms)
	}
	if r := d.MustCLI("image", "inspect", "base"); !strings.Contains(r.Stdout, "warm state:  valid: 1 vCPUs, 512M memory") {
		t.Errorf("image inspect:\n%s", r.Stdout)
	}

	vms := []string{"warm1", "warm2"}
	seen := map[string]map[string]string{}
	for _, vm := range vms {
		start := time.Now()
		r := d.MustCLI("vm", "create", vm, "--vcpus", "1", "--memory", "512M")
		t.Logf("%s: warm create took %s:\n%s", vm, time.Since(start).Round(time.Millisecond), r.Stderr)
		if !strings.Contains(r.Stderr, "restoring from the warm state of base") {
			t.Errorf("%s: create said:\n%s", vm, r.Stderr)
		}
		v := d.VM(t, vm)
		if v.State != "running" || v.Runtime.CreatedFrom != "warm state of base" || v.Runtime.LastError != "" {
			t.Fatalf("%s: %s, created from %q, %q", vm, v.State, v.Runtime.CreatedFrom, v.Runtime.LastError)
		}
		if r := d.MustCLI("vm", "inspect", vm); !strings.Contains(r.Stdout, "created from:      warm state of base") {
			t.Errorf("%s: vm inspect:\n%s", vm, r.Stdout)
		}
		got := guestOut(t, d, vm, `hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'; awk '{print $1" "$2}' /etc/ssh/ssh_host_ed25519_key.pub; getent hosts $(hostname) | awk '{print $1}'`)
		f := strings.Split(got, "\n")
		if len(f) != 6 {
			t.Fatalf("%s: guest said %q", vm, got)
		}
		id := map[string]string{"hostname": f[0], "machine-id": f[1], "mac": f[2], "ip": f[3], "host key": f[4]}
		seen[vm] = id
		want := map[string]string{"hostname": vm, "mac": v.Runtime.GuestMAC, "ip": v.Runtime.GuestIP + "/24", "host key": strings.TrimSpace(v.Runtime.SSHHostKey)}
		for k, w := range want {
			if id[k] != w {
				t.Errorf("%s: the guest's %s is %q; the daemon says %q", vm, k, id[k], w)
			}
		}
		if f[5] != "127.0.1.1" {
			t.Errorf("%s: its hostname resolves to %q", vm, f[5])
		}
		// The identity came through the waiter the warm state was left
		// with, not over SSH, and the waiter is gone: nothing listens
		// on its port, no perl is left.
		if log, _ := os.ReadFile(d.LogPath()); !regexp.MustCompile(`msg="fork child re-identified" vm=` + vm + ` [^\n]*waiter_reached_ms=`).Match(log) {
			t.Errorf("%s: not re-identified through the waiter (see %s)", vm, d.LogPath())
		}
		if left := guestOut(t, d, vm, `grep -ci ':1E2A 00000000:0000 0A' /proc/net/tcp; pgrep -c perl; true`); left != "0\n0" {
			t.Errorf("%s: the waiter is left behind (listening sockets on 7722, perl processes): %q", vm, left)
		}
		// The user's key, authorized as at a cold first boot: plain ssh
		// with it works.
		if r := d.MustCLI("ssh", vm, "--", "echo", "via-ssh"); !strings.Contains(r.Stdout, "via-ssh") {
			t.Errorf("%s: ssh: %s", vm, r)
		}
	}
	for k, va := range seen[vms[0]] {
		if seen[vms[1]][k] == va {
			t.Errorf("%s and %s share their %s %q", vms[0], vms[1], k, va)
		}
	}

	// Other memory: a cold boot that says why.
	start = time.Now()
	r = d.MustCLI("vm", "create", "cold1", "--vcpus", "1", "--memory", "384M")
	t.Logf("cold create took %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(r.Stderr, "booting cold: the warm state of base does not fit") {
		t.Errorf("cold create said:\n%s", r.Stderr)
	}
	if v := d.VM(t, "cold1"); v.State != "running" || !strings.HasPrefix(v.Runtime.CreatedFrom, "cold boot (the warm state of base does not fit") {
		t.Errorf("cold1: %s, created from %q", v.State, v.Runtime.CreatedFrom)
	}

	// Drop the warm state: nothing of it is left; then rm of everything
	// leaves nothing.
	img := d.MustCLI("image", "inspect", "base", "--json").Stdout
	d.MustCLI("image", "warm", "base", "--rm")
	if r := d.MustCLI("image", "inspect", "base"); !strings.Contains(r.Stdout, "warm state:  none") {
		t.Errorf("image inspect after --rm:\n%s", r.Stdout)
	}
	if i := strings.Index(img, `"artifact_dir": "`); i >= 0 {
		dir := strings.SplitN(img[i+len(`"artifact_dir": "`):], `"`, 2)[0]
		for _, n := range []string{"warm", "warm.new", "warm.old"} {
			if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				t.Errorf("%s left in %s", n, dir)
			}
		}
	}
	for _, vm := range append(vms, "cold1") {
		d.MustCLI("vm", "rm", "--force", vm)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after rm of everything: %v", lo)
	}
}
