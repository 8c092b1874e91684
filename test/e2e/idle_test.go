package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"banger/test/harness"
)

// TestIdleAutoStop runs two VMs with a 25 s auto-stop: one busy (a CPU
// loop inside the guest, no API use), one idle. The idle one is stopped
// (auto_stop_mode "stop"; suspend_test.go has the default, suspend); the
// busy one keeps running; the stopped one starts again with its disks.
func TestIdleAutoStop(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, `auto_stop_stale_after = "25s"
auto_stop_mode = "stop"
stats_poll_interval = "2s"`)
	d.MustCLI("vm", "create", "busy", "--vcpus", "1", "--memory", "384M")
	d.MustCLI("vm", "create", "idle", "--vcpus", "1", "--memory", "384M")
	d.MustCLI("exec", "idle", "--", "sh", "-c", "echo kept > /root/kept.txt; sync")
	// Two boots of the same image have different SSH host keys.
	if a, b := d.VM(t, "busy").Runtime.SSHHostKey, d.VM(t, "idle").Runtime.SSHHostKey; a == "" || a == b {
		t.Errorf("host keys not unique per VM: %q %q", a, b)
	}
	// A detached busy loop: the agent-at-work case.
	d.MustCLI("exec", "busy", "--", "sh", "-c", "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &")

	r := d.MustCLI("vm", "ls")
	if !strings.Contains(r.Stdout, "in ") {
		t.Errorf("vm ls shows no auto-stop time:\n%s", r.Stdout)
	}
	harness.WaitFor(t, 90*time.Second, "the idle VM to be auto-stopped", func() bool {
		return d.VM(t, "idle").State == "stopped"
	})
	// The busy VM has been untouched for longer than 25 s but works.
	if v := d.VM(t, "busy"); v.State != "running" {
		t.Fatalf("busy VM was stopped: %s (cpu %.1f%%, last active %s)", v.State, v.Stats.CPUPercent, v.Stats.LastActiveAt)
	}
	time.Sleep(10 * time.Second)
	if v := d.VM(t, "busy"); v.State != "running" || v.Stats.CPUPercent < 15 {
		t.Errorf("busy VM: %s, cpu %.1f%%", v.State, v.Stats.CPUPercent)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers after auto-stop: %v", lo)
	}
	d.MustCLI("vm", "start", "idle")
	if r := d.MustCLI("exec", "idle", "--", "cat", "/root/kept.txt"); r.Stdout != "kept\n" {
		t.Errorf("after restart: %q", r.Stdout)
	}
	// An open ssh session keeps a VM alive too: hold one for 40 s.
	sess := exec.Command(d.Bin+"/banger", "exec", "idle", "--", "sleep", "40")
	sess.Env = append(os.Environ(), "BANGER_SOCKET="+d.Socket)
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(35 * time.Second)
	if v := d.VM(t, "idle"); v.State != "running" {
		t.Errorf("VM with an open session was stopped")
	}
	sess.Wait()
	d.MustCLI("vm", "kill", "busy")
}

// TestStateDirFull gives the daemon a state dir too small for a VM's disks:
// create fails with a clear error and leaves nothing half made.
func TestStateDirFull(t *testing.T) {
	a := harness.RequireArtifacts(t)
	// Disks in the VMs' dirs, not in a storage pool (TestStoragePoolFull
	// is the pool's case).
	d := harness.NewDaemon(t, harness.Options{Config: `storage_pool = "off"`})
	// A 200 MiB tmpfs under the VMs' dir holds no system disk. (The
	// image's files, the daemon's own copies, go to the images dir on
	// the real disk.)
	vmsDir := d.StateDir + "/vms"
	os.MkdirAll(vmsDir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", vmsDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", vmsDir).Run() })
	d = restartWithE2EConfig(t, d, a)
	r := d.CLI("vm", "create", "big", "--vcpus", "1", "--memory", "384M")
	if r.Code == 0 {
		t.Fatalf("create on a full disk succeeded: %s", r)
	}
	t.Logf("create on a full state dir: %s", strings.TrimSpace(r.Stderr))
	if !strings.Contains(strings.ToLower(r.Stderr), "no space left") {
		t.Errorf("error does not say the disk is full: %s", r.Stderr)
	}
	if r := d.MustCLI("vm", "ls", "-q"); strings.TrimSpace(r.Stdout) != "" {
		t.Errorf("a VM row was left: %q", r.Stdout)
	}
	entries, _ := os.ReadDir(d.StateDir + "/vms")
	if len(entries) != 0 {
		t.Errorf("vm dirs left: %v", entries)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers: %v", lo)
	}
	// The daemon still works.
	d.MustCLI("version")
}

// restartWithE2EConfig turns a plain test daemon into one like
// NewE2EDaemon's (VMM, key, base image), keeping its dirs.
func restartWithE2EConfig(t *testing.T, d *harness.Daemon, a harness.Artifacts) *harness.Daemon {
	t.Helper()
	b, _ := os.ReadFile(d.ConfigPath)
	cfg := string(b) + "firecracker_bin = \"" + d.Bin + "/banger-vmm-qemu\"\nssh_key_path = \"" + a.SSHKey + "\"\ntap_pool_size = 2\nboot_timeout = \"4m\"\n"
	os.WriteFile(d.ConfigPath, []byte(cfg), 0o644)
	d.Start()
	d.MustCLI("image", "register", "base", "--kernel", a.ImageDir+"/vmlinux", "--rootfs", a.ImageDir+"/rootfs.ext4", "--work-seed", a.ImageDir+"/work-seed.ext4")
	return d
}
