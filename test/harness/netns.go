package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// NewNetns creates a network namespace with only loopback up, deleted at
// the end of the test (with everything in it: bridges, taps, rules).
func NewNetns(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "bgt-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		// Kill anything still inside (VMMs of a failed test) before the
		// namespace goes.
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", pid).Run()
			}
		}
		exec.Command("ip", "netns", "del", name).Run()
	})
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v %s", name, err, out)
	}
	return name
}

// InMounts runs a command in the running daemon's mount namespace (where
// `ip netns exec` put it, and where it mounts its storage pool) and
// returns its combined output.
func (d *Daemon) InMounts(args ...string) (string, error) {
	if d.cmd == nil {
		return "", fmt.Errorf("bangerd is not running")
	}
	argv := append([]string{"-t", strconv.Itoa(d.cmd.Process.Pid), "-m", "--"}, args...)
	out, err := exec.Command("nsenter", argv...).CombinedOutput()
	return string(out), err
}

// InNetns runs a command inside the daemon's namespace and returns its
// combined output.
func (d *Daemon) InNetns(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", d.Netns}, args...)...).CombinedOutput()
	return string(out), err
}
