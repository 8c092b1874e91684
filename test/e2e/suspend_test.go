package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/test/harness"
)

// TestSuspendResume runs one guest through suspend and resume: a counter
// and a listening TCP server started in it carry on across suspend →
// daemon restart → start (same boot, same processes, the server's
// connection count continued); the guest clock is within 1 s of the
// host's right after the resume; an idle suspend triggers and `banger
// exec` wakes the VM; stop of a suspended VM drops its saved state and
// the VM boots again from disks that kept what the guest wrote; rm of a
// suspended VM needs --force and leaves nothing. Two boots in all.
func TestSuspendResume(t *testing.T) {
	a := harness.RequireArtifacts(t)
	d := harness.NewE2EDaemon(t, a, `auto_stop_stale_after = "20s"
stats_poll_interval = "2s"`)
	const vm = "sleeper"
	d.MustCLI("vm", "create", vm, "--vcpus", "1", "--memory", "512M", "--nat", "--auto-stop", "never")

	// A counter and a TCP server, detached from the exec session.
	d.MustCLI("exec", vm, "--", "sh", "-c", `
nohup perl -e 'for ($i = 1; ; $i++) { open F, ">/root/counter.new" or die; print F "$i\n"; close F; rename "/root/counter.new", "/root/counter"; sleep 1 }' >/dev/null 2>&1 &
echo $! > /root/counter.pid
nohup perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 7777, Listen => 5, ReuseAddr => 1) or die "listen: $!"; $n = 0; while ($c = $s->accept) { $n++; print $c "server $$ connection $n\n"; close $c }' >/dev/null 2>&1 &
echo $! > /root/server.pid
sleep 1`)
	bootID := guestOut(t, d, vm, "cat /proc/sys/kernel/random/boot_id")
	counterPID := guestOut(t, d, vm, "cat /root/counter.pid")
	serverPID := guestOut(t, d, vm, "cat /root/server.pid")
	if got := serverHello(t, d, vm); got != "server "+serverPID+" connection 1" {
		t.Fatalf("the guest's server said %q", got)
	}
	hostKey := d.VM(t, vm).Runtime.SSHHostKey

	t.Run("suspend, daemon restart, start", func(t *testing.T) {
		atSuspend := counterOnDisk(t, d, vm)
		r := d.MustCLI("vm", "suspend", vm)
		if !strings.Contains(r.Stdout, "is suspended") || !strings.Contains(r.Stderr, "saved state") {
			t.Errorf("suspend said:\n%s%s", r.Stdout, r.Stderr)
		}
		v := d.VM(t, vm)
		if v.State != "suspended" || v.Runtime.SavedStateBytes <= 0 || v.Runtime.SuspendedAt.IsZero() || v.PID != 0 {
			t.Fatalf("after suspend: %s, %d bytes, at %s, pid %d", v.State, v.Runtime.SavedStateBytes, v.Runtime.SuspendedAt, v.PID)
		}
		t.Logf("saved state: %d bytes for 512 MiB of guest memory", v.Runtime.SavedStateBytes)
		if ls := d.MustCLI("vm", "ls").Stdout; !strings.Contains(ls, "suspended just now") && !strings.Contains(ls, "suspended 1m ago") {
			t.Errorf("vm ls does not show the suspended VM and since when:\n%s", ls)
		}
		if top := d.MustCLI("top", "--once").Stdout; !strings.Contains(top, "SAVED") || !strings.Contains(top, "M\n") {
			t.Errorf("top does not show the saved state's size:\n%s", top)
		}
		if st := d.MustCLI("vm", "stats", vm).Stdout; !strings.Contains(st, "saved state:") {
			t.Errorf("stats do not show the saved state:\n%s", st)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("leftovers of a suspended VM: %v", lo)
		}
		// What the saved state holds cannot change under it.
		if r := d.CLI("vm", "set", vm, "--memory", "1G"); r.Code == 0 || !strings.Contains(r.Stderr, "suspended") || !strings.Contains(r.Stderr, "banger vm stop "+vm) {
			t.Errorf("set memory while suspended: %s", r)
		}
		if r := d.CLI("vm", "reset-system", vm); r.Code == 0 || !strings.Contains(r.Stderr, "suspended") {
			t.Errorf("reset-system while suspended: %s", r)
		}

		d.Stop()
		time.Sleep(2 * time.Second)
		d.Start()
		if v := d.VM(t, vm); v.State != "suspended" {
			t.Fatalf("after a daemon restart: %s", v.State)
		}

		r = d.MustCLI("vm", "start", vm)
		offset := clockOffset(t, d, vm)
		t.Logf("guest clock offset right after the resume: %+.3fs", offset.Seconds())
		if offset.Abs() > time.Second {
			t.Errorf("the guest's clock is %s off the host's after the resume", offset)
		}
		if !strings.Contains(r.Stderr, "restoring the state saved") || strings.Contains(r.Stderr, "warning") {
			t.Errorf("start of a suspended VM said:\n%s", r.Stderr)
		}
		v = d.VM(t, vm)
		if v.State != "running" || v.Runtime.LastError != "" || v.Runtime.SSHHostKey != hostKey {
			t.Fatalf("after the resume: %s, last error %q, host key kept %v", v.State, v.Runtime.LastError, v.Runtime.SSHHostKey == hostKey)
		}
		if got := guestOut(t, d, vm, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("the guest rebooted: boot id %s, was %s", got, bootID)
		}
		if got := guestOut(t, d, vm, "kill -0 $(cat /root/counter.pid) && cat /root/counter.pid"); got != counterPID {
			t.Errorf("counter process %q; was %s", got, counterPID)
		}
		n1 := counterOnDisk(t, d, vm)
		time.Sleep(2500 * time.Millisecond)
		n2 := counterOnDisk(t, d, vm)
		if n1 < atSuspend || n2 <= n1 {
			t.Errorf("counter: %d at the suspend, %d and %d a second apart after the resume", atSuspend, n1, n2)
		}
		if got := serverHello(t, d, vm); got != "server "+serverPID+" connection 2" {
			t.Errorf("after the resume the server said %q; want connection 2 of server %s", got, serverPID)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("leftovers after the resume: %v", lo)
		}
	})

	t.Run("idle suspend, exec wakes it", func(t *testing.T) {
		d.MustCLI("vm", "set", vm, "--auto-stop", "default", "--idle", "suspend")
		harness.WaitFor(t, 2*time.Minute, "the idle VM to be suspended", func() bool {
			return d.VM(t, vm).State == "suspended"
		})
		r := d.MustCLI("exec", vm, "--", "cat", "/proc/sys/kernel/random/boot_id")
		if strings.TrimSpace(r.Stdout) != bootID || !strings.Contains(r.Stderr, "is suspended") {
			t.Errorf("exec of a suspended VM: %s", r)
		}
		if v := d.VM(t, vm); v.State != "running" || v.Runtime.LastError != "" {
			t.Errorf("after exec woke it: %s %q", v.State, v.Runtime.LastError)
		}
		d.MustCLI("vm", "set", vm, "--auto-stop", "never")
	})

	t.Run("stop of a suspended VM", func(t *testing.T) {
		atSuspend := counterOnDisk(t, d, vm)
		d.MustCLI("vm", "suspend", vm)
		r := d.MustCLI("vm", "stop", vm)
		if !strings.Contains(r.Stderr, "dropped the saved state") {
			t.Errorf("stop of a suspended VM does not say the saved state went:\n%s", r.Stderr)
		}
		v := d.VM(t, vm)
		if v.State != "stopped" || v.Runtime.SavedStateBytes != 0 {
			t.Errorf("after stop: %s %d", v.State, v.Runtime.SavedStateBytes)
		}
		if _, err := os.Stat(filepath.Join(v.Runtime.VMDir, "saved")); !os.IsNotExist(err) {
			t.Errorf("saved state after stop: %v", err)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("leftovers: %v", lo)
		}
		// A boot from the disks, which have what the guest wrote up to
		// the suspend.
		d.MustCLI("vm", "start", vm)
		if got := guestOut(t, d, vm, "cat /proc/sys/kernel/random/boot_id"); got == bootID {
			t.Error("the start after the saved state was dropped did not boot")
		}
		if n := counterOnDisk(t, d, vm); n < atSuspend {
			t.Errorf("counter on disk %d; it was %d at the suspend", n, atSuspend)
		}
	})

	t.Run("rm of a suspended VM", func(t *testing.T) {
		d.MustCLI("vm", "suspend", vm)
		dir := d.VM(t, vm).Runtime.VMDir
		if r := d.CLI("vm", "rm", vm); r.Code == 0 || !strings.Contains(r.Stderr, "suspended") || !strings.Contains(r.Stderr, "--force") {
			t.Errorf("rm of a suspended VM without --force: %s", r)
		}
		d.MustCLI("vm", "rm", "--force", vm)
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("vm dir left: %v", err)
		}
		if lo := d.Leftovers(t, 2); len(lo) > 0 {
			t.Errorf("leftovers after rm: %v", lo)
		}
	})
}

// guestOut runs a shell command in the guest and returns its output,
// trimmed.
func guestOut(t *testing.T, d *harness.Daemon, vm, script string) string {
	t.Helper()
	return strings.TrimSpace(d.MustCLI("exec", vm, "--", "sh", "-c", script).Stdout)
}

// counterOnDisk reads the guest's counter (again if it caught the file
// being rewritten).
func counterOnDisk(t *testing.T, d *harness.Daemon, vm string) int {
	t.Helper()
	s := guestOut(t, d, vm, "c=$(cat /root/counter); [ -n \"$c\" ] || { sleep 0.3; c=$(cat /root/counter); }; echo $c")
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("counter %q: %v", s, err)
	}
	return n
}

// banger runs the CLI against d with pipes, for commands that need a
// live stdin.
func banger(d *harness.Daemon, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(d.Bin, "banger"), args...)
	c.Env = append(os.Environ(), "BANGER_SOCKET="+d.Socket)
	return c
}

// serverHello connects to the guest's port 7777 through the daemon and
// returns the server's line.
func serverHello(t *testing.T, d *harness.Daemon, vm string) string {
	t.Helper()
	c := banger(d, "ssh-proxy", vm, "--port", "7777")
	in, _ := c.StdinPipe() // held open until the server has spoken
	defer in.Close()
	out, _ := c.StdoutPipe()
	var errb strings.Builder
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	in.Close()
	c.Wait()
	if line == "" {
		t.Fatalf("no answer from the guest's server: %s", errb.String())
	}
	return strings.TrimSpace(line)
}

// clockOffset measures the guest's clock against the host's: the guest
// reads its clock when the host's line reaches it, and the host's time
// is taken as the middle of that round trip.
func clockOffset(t *testing.T, d *harness.Daemon, vm string) time.Duration {
	t.Helper()
	c := banger(d, "exec", vm, "--", "sh", "-c", "echo ready; read x; date +%s.%N")
	in, _ := c.StdinPipe()
	out, _ := c.StdoutPipe()
	var errb strings.Builder
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.Wait()
	r := bufio.NewReader(out)
	if l, err := r.ReadString('\n'); err != nil || strings.TrimSpace(l) != "ready" {
		t.Fatalf("clock probe: %q %v %s", l, err, errb.String())
	}
	sent := time.Now()
	io.WriteString(in, "go\n")
	l, err := r.ReadString('\n')
	back := time.Now()
	in.Close()
	if err != nil {
		t.Fatalf("clock probe: %v %s", err, errb.String())
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(l), 64)
	if err != nil {
		t.Fatalf("guest date %q: %v", l, err)
	}
	guest := time.Unix(0, int64(f*1e9))
	host := sent.Add(back.Sub(sent) / 2)
	if rt := back.Sub(sent); rt > 500*time.Millisecond {
		t.Logf("clock probe round trip %s (the offset is known to ±%s)", rt, rt/2)
	}
	return guest.Sub(host)
}
