package guestinit

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestHostname(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0:dev:eth0:off:172.16.0.1 systemd.hostname=dev root=/dev/vda rw", "dev"},
		{"ip=172.16.0.2::172.16.0.1:255.255.255.0:box:eth0:off", "box"},
		{"ip=dhcp", ""},
		{"quiet", ""},
	} {
		if got := Hostname(tc.cmdline); got != tc.want {
			t.Errorf("Hostname(%q) = %q, want %q", tc.cmdline, got, tc.want)
		}
	}
}

func TestResolvConf(t *testing.T) {
	pnp := "#MANUAL\nnameserver 172.16.0.1\nnameserver 0.0.0.0\ndomain banger\n"
	want := "# banger-init: from the kernel's ip= (/proc/net/pnp)\nnameserver 172.16.0.1\ndomain banger\n"
	if got := ResolvConf(pnp, "1.1.1.1"); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := ResolvConf("#MANUAL\n", "192.0.2.53"); !strings.HasSuffix(got, "nameserver 192.0.2.53\n") {
		t.Errorf("fallback: %q", got)
	}
}

func TestHostsWithName(t *testing.T) {
	base := "127.0.0.1\tlocalhost\n"
	if got := HostsWithName(base, "dev"); got != base+"127.0.1.1\tdev\n" {
		t.Errorf("got %q", got)
	}
	with := base + "127.0.1.1 dev\n"
	if got := HostsWithName(with, "dev"); got != with {
		t.Errorf("added twice: %q", got)
	}
	if got := HostsWithName("127.0.0.1 localhost", "x"); got != "127.0.0.1 localhost\n127.0.1.1\tx\n" {
		t.Errorf("no final newline: %q", got)
	}
}

const passwd = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
node:x:1000:1000::/home/node:/bin/bash
svc:x:999:999::/srv:/sbin/nologin
`
const group = `root:x:0:
docker:x:998:node,other
node:x:1000:
staff:x:50:node
`

func TestResolveUser(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want Identity
		err  string
	}{
		{"", Identity{Name: "root", UID: 0, GID: 0, Groups: []int{0}, Home: "/root", Shell: "/bin/bash"}, ""},
		{"node", Identity{Name: "node", UID: 1000, GID: 1000, Groups: []int{1000, 998, 50}, Home: "/home/node", Shell: "/bin/bash"}, ""},
		{"1000:50", Identity{Name: "node", UID: 1000, GID: 50, Groups: []int{50, 998}, Home: "/home/node", Shell: "/bin/bash"}, ""},
		{"node:docker", Identity{Name: "node", UID: 1000, GID: 998, Groups: []int{998, 50}, Home: "/home/node", Shell: "/bin/bash"}, ""},
		{"4242", Identity{Name: "4242", UID: 4242, GID: 0, Groups: []int{0}, Home: "/", Shell: "/bin/sh"}, ""},
		{"svc", Identity{Name: "svc", UID: 999, GID: 999, Groups: []int{999}, Home: "/srv", Shell: "/bin/sh"}, ""},
		{"ghost", Identity{}, "not in the image's /etc/passwd"},
		{"node:ghosts", Identity{}, "not in the image's /etc/group"},
	} {
		got, err := ResolveUser(tc.spec, passwd, group)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ResolveUser(%q) = %+v, %v; want error %q", tc.spec, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ResolveUser(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
}

func TestSessionEnv(t *testing.T) {
	id := Identity{Name: "node", Home: "/home/node", Shell: "/bin/bash"}
	got := SessionEnv([]string{"TERM=xterm", "HOME=/root", "PATH=/usr/bin:/bin", "USER=root"}, id, []string{"PATH=/opt/node/bin:/usr/bin", "NODE_ENV=production", "HOME=/app"})
	want := []string{"TERM=xterm", "HOME=/app", "PATH=/opt/node/bin:/usr/bin", "USER=node", "LOGNAME=node", "SHELL=/bin/bash", "NODE_ENV=production"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestFindLabel(t *testing.T) {
	dir := t.TempDir()
	sys, dev := filepath.Join(dir, "sys"), filepath.Join(dir, "dev")
	os.MkdirAll(sys, 0o755)
	os.MkdirAll(dev, 0o755)
	sb := func(label string) []byte {
		b := make([]byte, 4096)
		b[1024+0x38], b[1024+0x39] = 0x53, 0xEF
		copy(b[1024+0x78:], label)
		return b
	}
	for name, data := range map[string][]byte{"vda": sb("banger-root"), "vdb": sb("banger-work"), "vdc": make([]byte, 4096)} {
		os.Mkdir(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(dev, name), data, 0o644)
	}
	got, err := findLabel(sys, dev, "banger-work")
	if err != nil || got != filepath.Join(dev, "vdb") {
		t.Errorf("findLabel = %q, %v", got, err)
	}
	if _, err := findLabel(sys, dev, "other"); err == nil {
		t.Errorf("found a label no disk has")
	}
}

func TestNewHostKeyParses(t *testing.T) {
	priv, pub, err := newHostKey("test")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatalf("OpenSSH key does not parse: %v\n%s", err, priv)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if string(pk.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Errorf("public line does not match the private key")
	}
	if _, err := exec.LookPath("ssh-keygen"); err == nil {
		p := filepath.Join(t.TempDir(), "k")
		os.WriteFile(p, priv, 0o600)
		out, err := exec.Command("ssh-keygen", "-y", "-f", p).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "ssh-ed25519 ") {
			t.Errorf("ssh-keygen -y: %v: %s", err, out)
		}
	}
}

// TestStaticDeps keeps banger-init free of net and os/user, whose cgo
// variants would make the binary dynamic: it runs in images whatever
// their libc.
func TestStaticDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "banger/cmd/banger-init").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "net" || p == "os/user" || p == "runtime/cgo" {
			t.Errorf("banger-init depends on %s", p)
		}
	}
}
