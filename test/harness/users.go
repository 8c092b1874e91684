package harness

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// NewGroup adds a group to the host for the test (groupadd) and removes
// it at cleanup. It returns its name and gid.
func NewGroup(t testing.TB, prefix string) (string, uint32) {
	t.Helper()
	name := prefix + "-" + randomHex(4)
	if out, err := exec.Command("groupadd", name).CombinedOutput(); err != nil {
		t.Fatalf("groupadd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	return name, uint32(gid)
}

// Account is a user account the test added to the host.
type Account struct {
	User
	Name string
}

// NewAccount adds a user to the host for the test (useradd), with
// primary group group and the supplementary groups in the group database
// that groups names, and a home of its own; all go at cleanup. The CLI
// runs as it with its primary group and the process groups in
// Account.Groups (none unless the test sets them): what the group
// database says and what a process carries are tested apart.
func NewAccount(t testing.TB, prefix, group string, groups ...string) *Account {
	t.Helper()
	name := prefix + randomHex(3)
	home, err := os.MkdirTemp("/tmp", "bgu")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-M", "-N", "-g", group, "-d", home, "-s", "/usr/sbin/nologin"}
	if len(groups) > 0 {
		gs := groups[0]
		for _, g := range groups[1:] {
			gs += "," + g
		}
		args = append(args, "-G", gs)
	}
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		os.RemoveAll(home)
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		exec.Command("userdel", name).Run()
		os.RemoveAll(home)
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	os.Chmod(home, 0o700)
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	return &Account{User: User{UID: uint32(uid), GID: uint32(gid), Home: home}, Name: name}
}

// WriteFile writes a file owned by the account under its home and
// returns its path.
func (a *Account) WriteFile(t testing.TB, rel string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(a.Home, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	a.Own(t, p)
	return p
}

// Own gives path (and the directories between it and the home) to the
// account.
func (a *Account) Own(t testing.TB, path string) {
	t.Helper()
	for p := path; len(p) > len(a.Home); p = filepath.Dir(p) {
		if err := os.Lchown(p, int(a.UID), int(a.GID)); err != nil {
			t.Fatal(err)
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// PID is the daemon's process ID (ip netns exec runs bangerd in its own
// place), 0 when it is not running.
func (d *Daemon) PID() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}
