package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/test/harness"
)

// procStatus reads the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of %d: %v", pid, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// vmmProcesses returns the VMM serving sock and its children (QEMU).
func vmmProcesses(t *testing.T, sock string) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var vmm int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		for i, a := range args {
			if a == "--api-sock" && i+1 < len(args) && args[i+1] == sock {
				vmm = pid
			}
		}
	}
	if vmm == 0 {
		t.Fatalf("no VMM serves %s", sock)
	}
	pids := []int{vmm}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procStatus(t, pid)["PPid"] == strconv.Itoa(vmm) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestVMMSandbox: a VM's VMM and its QEMU run as the VM's own uid with
// no capabilities, QEMU under seccomp, both in the VM's cgroup with
// limits from its size; the work disk is opened so that guest flushes
// reach the disk; stats report the limits.
func TestVMMSandbox(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	d.MustCLI("vm", "create", "box", "--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G")
	vm := d.VM(t, "box")
	uid := vm.Runtime.VMMUID
	if uid < 1500000000 {
		t.Fatalf("vmm uid %d", uid)
	}
	if r := d.MustCLI("vm", "inspect", "box"); !strings.Contains(r.Stdout, strconv.Itoa(uid)) {
		t.Errorf("vm inspect does not show the VMM's uid %d:\n%s", uid, r.Stdout)
	}
	pids := vmmProcesses(t, vm.Runtime.APISockPath)
	if len(pids) < 2 {
		t.Fatalf("want the VMM and QEMU, got %v", pids)
	}
	short := vm.ID[:12]
	for i, pid := range pids {
		st := procStatus(t, pid)
		want := fmt.Sprintf("%d\t%d\t%d\t%d", uid, uid, uid, uid)
		if st["Uid"] != want || st["Gid"] != want {
			t.Errorf("pid %d: Uid %q Gid %q; want %q", pid, st["Uid"], st["Gid"], want)
		}
		for _, c := range []string{"CapEff", "CapPrm", "CapAmb"} {
			if st[c] != "0000000000000000" {
				t.Errorf("pid %d: %s = %s", pid, c, st[c])
			}
		}
		if st["Groups"] != "" {
			t.Errorf("pid %d: supplementary groups %q", pid, st["Groups"])
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if !strings.Contains(string(cg), "/"+d.CgroupParent+"/vm-"+short) {
			t.Errorf("pid %d is not in the VM's cgroup:\n%s", pid, cg)
		}
		if i > 0 {
			// QEMU: seccomp filter on, the work disk with writeback
			// caching (flushes honoured), the rest by descriptor.
			if st["Seccomp"] != "2" {
				t.Errorf("qemu pid %d: Seccomp = %q; want 2 (filter)", pid, st["Seccomp"])
			}
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			argv := strings.ReplaceAll(string(cmd), "\x00", " ")
			if !strings.Contains(argv, "blk_work") || !regexpMatch(`id=blk_work,[^ ]*cache=writeback`, argv) {
				t.Errorf("work drive not cache=writeback: %s", argv)
			}
			// Only the VMM's own directory is named (its QMP socket);
			// disks and the kernel come as descriptors.
			if strings.Contains(strings.ReplaceAll(argv, filepath.Join(vm.Runtime.VMDir, "vmm"), "VMMDIR"), d.StateDir) {
				t.Errorf("qemu names state-dir paths instead of descriptors: %s", argv)
			}
		}
	}
	// The cgroup's limits, read from the kernel.
	limitFiles := map[string]string{
		"memory/" + d.CgroupParent + "/vm-" + short + "/memory.limit_in_bytes": strconv.Itoa((512 + 512) << 20),
		"cpu/" + d.CgroupParent + "/vm-" + short + "/cpu.cfs_quota_us":         "100000",
		"pids/" + d.CgroupParent + "/vm-" + short + "/pids.max":                "512",
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		limitFiles = map[string]string{
			d.CgroupParent + "/vm-" + short + "/memory.max": strconv.Itoa((512 + 512) << 20),
			d.CgroupParent + "/vm-" + short + "/cpu.max":    "100000 100000",
			d.CgroupParent + "/vm-" + short + "/pids.max":   "512",
		}
	}
	for f, want := range limitFiles {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", f))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q (%v); want %s", f, b, err, want)
		}
	}
	// Stats report the limits once the poller ran.
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := d.VM(t, "box")
		if l := v.Stats.Limits; l != nil {
			if l.CPUQuotaPercent != 100 || l.MemoryMaxBytes != (512+512)<<20 || l.PidsMax != 512 {
				t.Errorf("stats limits: %+v", *l)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stats never showed the VM's limits")
		}
		time.Sleep(time.Second)
	}
	// The VM dir and state dir are traversable, not listable; the VMM's
	// own dir is the VM's uid's alone; the database is root's.
	for p, mode := range map[string]os.FileMode{d.StateDir: 0o711, vm.Runtime.VMDir: 0o711, filepath.Join(vm.Runtime.VMDir, "vmm"): 0o700, filepath.Join(d.StateDir, "banger.db"): 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v; want %v", p, fi.Mode(), err, mode)
		}
	}
	d.MustCLI("vm", "rm", "--force", "box")
	if _, err := os.Stat("/sys/fs/cgroup/memory/" + d.CgroupParent + "/vm-" + short); err == nil {
		t.Error("the VM's cgroup outlived it")
	}
	if _, err := os.Stat("/sys/fs/cgroup/" + d.CgroupParent + "/vm-" + short); err == nil {
		t.Error("the VM's cgroup outlived it")
	}
}

// TestNoTrustOnFirstUse: a guest that takes over another VM's address
// while that VM boots, and answers SSH there with its own key, gets no
// connection from the daemon: the daemon made the booting VM's host key
// and accepts nothing else.
func TestNoTrustOnFirstUse(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, "")
	d.MustCLI("vm", "create", "evil", "--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G")
	d.MustCLI("vm", "create", "victim", "--no-start", "--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G")
	victim := d.VM(t, "victim")
	if victim.Runtime.GuestIP == "" {
		t.Fatal("victim has no IP before its first start")
	}
	pub, err := os.ReadFile(a.SSHKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	daemonKey, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	fp := ssh.FingerprintSHA256(daemonKey)
	accepted := func() int {
		r := d.MustCLI("exec", "evil", "--", "sh", "-c", "journalctl -q -o cat -u ssh.service | grep -c 'Accepted publickey.*"+fp+"' || true")
		n, _ := strconv.Atoi(strings.TrimSpace(r.Stdout))
		return n
	}
	// The impostor answers on the victim's address with its own sshd
	// (listening on every address) and tells the network it is there.
	d.MustCLI("exec", "evil", "--", "sh", "-c", "ip addr add "+victim.Runtime.GuestIP+"/32 dev eth0; (for i in $(seq 120); do arping -c1 -U -I eth0 -s "+victim.Runtime.GuestIP+" "+victim.Runtime.GuestIP+" >/dev/null 2>&1 || ping -c1 -W1 -I "+victim.Runtime.GuestIP+" 172.16.0.1 >/dev/null 2>&1; sleep 0.5; done) >/dev/null 2>&1 &")
	before := accepted()
	r := d.CLI("vm", "start", "victim")
	if r.Code != 0 {
		t.Fatalf("victim did not start while an impostor held its address: %s", r)
	}
	if after := accepted(); after != before {
		t.Errorf("the impostor accepted %d daemon connection(s) during the victim's boot", after-before)
	}
	// The victim is itself: its host key is the one banger made.
	v := d.VM(t, "victim")
	if r := d.MustCLI("exec", "victim", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub"); !strings.HasPrefix(strings.TrimSpace(r.Stdout), strings.TrimSpace(v.Runtime.SSHHostKey)) {
		t.Errorf("victim's host key %q; banger made %q", r.Stdout, v.Runtime.SSHHostKey)
	}
	if r := d.MustCLI("exec", "victim", "--", "hostname"); strings.TrimSpace(r.Stdout) != "victim" {
		t.Errorf("exec victim reached %q", r.Stdout)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
