package integration

// Tests of what a member of the banger group can and cannot do, as real
// users added to the host for the test: alice (an ordinary user),
// mallory (hostile) and an admin (in the admin group by the group
// database only).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/store"
	"banger/internal/testutil"
	"banger/test/harness"
)

type usersEnv struct {
	t          *testing.T
	d          *harness.Daemon
	adminGroup string
	alice      *harness.Account
	mallory    *harness.Account
	admin      *harness.Account
	kernel     string // root's fixture kernel
	rootfs     string // root's fixture rootfs
}

// newUsersEnv starts a daemon whose socket group and admin group are made
// for the test, with three accounts in the socket group.
func newUsersEnv(t *testing.T, config string) *usersEnv {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "useradd", "groupadd", "mkfs.ext4")
	sockGroup, _ := harness.NewGroup(t, "bgs")
	adminGroup, _ := harness.NewGroup(t, "bga")
	d := harness.NewDaemon(t, harness.Options{Config: fmt.Sprintf("socket_group = %q\nadmin_group = %q\n%s", sockGroup, adminGroup, config)})
	d.Start()
	e := &usersEnv{t: t, d: d, adminGroup: adminGroup}
	e.alice = harness.NewAccount(t, "bgal", sockGroup)
	e.mallory = harness.NewAccount(t, "bgml", sockGroup)
	e.admin = harness.NewAccount(t, "bgad", sockGroup, adminGroup)
	e.kernel, e.rootfs = fixtureImage(t, d.Dir)
	return e
}

// userImage copies the fixture kernel and rootfs into u's home, owned by
// u, and returns their paths.
func (e *usersEnv) userImage(u *harness.Account, dir string) (kernel, rootfs string) {
	e.t.Helper()
	k, _ := os.ReadFile(e.kernel)
	r, _ := os.ReadFile(e.rootfs)
	return u.WriteFile(e.t, filepath.Join(dir, "vmlinux"), k, 0o644), u.WriteFile(e.t, filepath.Join(dir, "rootfs.ext4"), r, 0o644)
}

func (e *usersEnv) as(u *harness.Account, args ...string) harness.Result {
	return e.d.CLIAs(&u.User, "", args...)
}

func (e *usersEnv) mustAs(u *harness.Account, args ...string) harness.Result {
	e.t.Helper()
	r := e.as(u, args...)
	if r.Code != 0 {
		e.t.Fatalf("%s: banger %s: %s", u.Name, strings.Join(args, " "), r)
	}
	return r
}

func (e *usersEnv) refused(u *harness.Account, want string, args ...string) harness.Result {
	e.t.Helper()
	r := e.as(u, args...)
	if r.Code == 0 || !strings.Contains(r.Stderr, want) {
		e.t.Errorf("%s: banger %s: want a refusal saying %q, got %s", u.Name, strings.Join(args, " "), want, r)
	}
	return r
}

func imageJSON(t *testing.T, r harness.Result) api.ImageDetail {
	t.Helper()
	var det api.ImageDetail
	if err := json.Unmarshal([]byte(r.Stdout), &det); err != nil {
		t.Fatalf("image inspect --json: %v\n%s", err, r)
	}
	return det
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s)
}

// hostileBinary is this test binary where another user may run it.
func hostileBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "hostile")
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".tmp", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// hostileAs runs the hostile client (main_test.go) as u.
func (e *usersEnv) hostileAs(u *harness.Account, mode string, count int, req string) string {
	e.t.Helper()
	cmd := exec.Command(hostileBinary(e.t, e.d.Dir), e.d.Socket, strconv.Itoa(count), req)
	cmd.Env = append(os.Environ(), "BANGER_HOSTILE="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID}}
	cmd.Dir = u.Home
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("hostile %s: %v: %s", mode, err, errb.String())
	}
	return out.String()
}

// threads is the daemon's thread count.
func threads(t *testing.T, d *harness.Daemon) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

// TestSwappedFilesChangeNothing: mallory registers an image, then swaps
// its files for links to files only root may read. The image keeps the
// content registered; inspect shows nothing of the targets.
func TestSwappedFilesChangeNothing(t *testing.T) {
	e := newUsersEnv(t, "")
	kernel, rootfs := e.userImage(e.mallory, "img")
	want := map[string]string{"kernel": sha(t, kernel), "rootfs": sha(t, rootfs)}
	e.mustAs(e.mallory, "image", "register", "evil", "--kernel", kernel, "--rootfs", rootfs)

	secret := filepath.Join(e.d.Dir, "root-secret")
	os.WriteFile(secret, bytes.Repeat([]byte("s"), 12345), 0o600)
	for _, p := range []string{kernel, rootfs} {
		os.Remove(p)
	}
	os.Symlink("/etc/shadow", kernel)
	os.Symlink(secret, rootfs)
	e.mallory.Own(t, kernel)
	e.mallory.Own(t, rootfs)

	for _, who := range []*harness.Account{e.mallory, nil} {
		var r harness.Result
		if who == nil {
			r = e.d.MustCLI("image", "inspect", e.mallory.Name+"/evil", "--json")
		} else {
			r = e.mustAs(who, "image", "inspect", "evil", "--json")
		}
		det := imageJSON(t, r)
		if strings.Contains(r.Stdout, secret) || strings.Contains(r.Stdout, "/etc/shadow") || strings.Contains(r.Stdout, e.mallory.Home) {
			t.Errorf("inspect shows the user's side: %s", r.Stdout)
		}
		for _, a := range det.Artifacts {
			if !strings.HasPrefix(a.Path, e.d.StateDir+"/") || a.Missing {
				t.Errorf("artifact %+v: want the daemon's copy", a)
			}
			if a.SizeBytes == 12345 {
				t.Errorf("inspect stat'ed the swapped target: %+v", a)
			}
			if h, ok := want[a.Role]; ok && sha(t, a.Path) != h {
				t.Errorf("%s: the daemon's copy changed with the swap", a.Role)
			}
		}
		if det.KernelFormat != "elf" {
			t.Errorf("kernel format %q", det.KernelFormat)
		}
	}
	// A VM on it is made from the copies.
	e.mustAs(e.mallory, "vm", "create", "--no-start", "evilvm", "--image", "evil")
	// Registering the links themselves is refused by the CLI, which reads
	// as mallory and follows no link.
	e.refused(e.mallory, "symbolic link", "image", "register", "again", "--kernel", kernel, "--rootfs", rootfs)
}

// TestProcFDAndFIFOAreRefusedQuickly: paths no regular file hides behind
// are refused at once, by the CLI and by the daemon, and the daemon's
// thread count stays flat.
func TestProcFDAndFIFOAreRefusedQuickly(t *testing.T) {
	e := newUsersEnv(t, "")
	kernel, rootfs := e.userImage(e.mallory, "img")
	fifo := filepath.Join(e.mallory.Home, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	e.mallory.Own(t, fifo)
	before := threads(t, e.d)

	start := time.Now()
	e.refused(e.mallory, "FIFO", "image", "register", "f1", "--kernel", fifo, "--rootfs", rootfs)
	e.refused(e.mallory, "symbolic link", "image", "register", "f2", "--kernel", "/proc/self/fd/0", "--rootfs", rootfs)
	e.refused(e.mallory, "FIFO", "image", "build", "f3", "--kernel", fifo)
	e.refused(e.mallory, "symbolic link", "image", "build", "f4", "--kernel", "/proc/self/fd/1")
	// Root's own paths are opened by the daemon, which does not wait for
	// a FIFO's writer either.
	if r := e.d.CLI("image", "register", "f5", "--kernel", fifo, "--rootfs", e.rootfs); r.Code == 0 || !strings.Contains(r.Stderr, "not a regular file") {
		t.Errorf("root registering a FIFO: %s", r)
	}
	// A client that is not the CLI sends the paths: 60 requests, each
	// refused; none of them opens anything.
	hostileBinary(t, e.d.Dir)
	var wg sync.WaitGroup
	outs := make([]string, 60)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := fifo
			if i%2 == 1 {
				path = "/proc/self/fd/0"
			}
			body := fmt.Sprintf(`{"name":"p%d","kernel_path":%q,"rootfs_path":%q}`, i, path, path)
			route := "/v1/images"
			if i%3 == 0 {
				body = fmt.Sprintf(`{"name":"p%d","kernel_path":%q}`, i, path)
				route = "/v1/images/build"
			}
			outs[i] = e.hostileAs(e.mallory, "raw", 1, fmt.Sprintf("POST %s HTTP/1.1\\r\\nHost: bangerd\\r\\nContent-Type: application/json\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n%s", route, len(body), body))
		}()
	}
	wg.Wait()
	for i, out := range outs {
		if !strings.Contains(out, "EFORBIDDEN") || !strings.Contains(out, "only root") {
			t.Errorf("raw request %d: %q; want EFORBIDDEN (only root names paths)", i, out)
			break
		}
	}
	if took := time.Since(start); took > 2*time.Minute {
		t.Errorf("refusals took %s", took)
	}
	time.Sleep(500 * time.Millisecond)
	if after := threads(t, e.d); after > before+4 {
		t.Errorf("daemon threads %d before, %d after the FIFO requests", before, after)
	}
	// The daemon is fine, and mallory's real files still work.
	e.mustAs(e.mallory, "image", "register", "fine", "--kernel", kernel, "--rootfs", rootfs)
	if r := e.d.MustCLI("image", "ls", "-q"); strings.Contains(r.Stdout, "f1") || strings.Contains(r.Stdout, "p1") {
		t.Errorf("a refused image was stored: %s", r.Stdout)
	}
}

// TestSquattingDefault: a user's "default" is the user's; root's create
// boots root's default, or nothing, never the user's.
func TestSquattingDefault(t *testing.T) {
	e := newUsersEnv(t, "")
	kernel, rootfs := e.userImage(e.mallory, "img")
	e.mustAs(e.mallory, "image", "register", "default", "--kernel", kernel, "--rootfs", rootfs)
	// Root has no image: its create finds none, rather than mallory's.
	if r := e.d.CLI("vm", "create", "--no-start", "rootvm"); r.Code == 0 || !strings.Contains(r.Stderr, "no image") {
		t.Fatalf("root's create with only mallory's default: %s", r)
	}
	e.d.MustCLI("image", "register", "default", "--kernel", e.kernel, "--rootfs", e.rootfs)
	e.d.MustCLI("vm", "create", "--no-start", "rootvm")
	rootImg := imageJSON(t, e.d.MustCLI("image", "inspect", "default", "--json"))
	malImg := imageJSON(t, e.mustAs(e.mallory, "image", "inspect", "default", "--json"))
	if rootImg.OwnerUID != 0 || malImg.OwnerUID != int(e.mallory.UID) || rootImg.ID == malImg.ID {
		t.Fatalf("two defaults: root %+v, mallory %+v", rootImg.Image, malImg.Image)
	}
	if vm := e.d.VM(t, "rootvm"); vm.ImageID != rootImg.ID {
		t.Errorf("root's VM boots image %s, not root's %s", vm.ImageID, rootImg.ID)
	}
	// Mallory's own create takes hers; alice, who has none, root's.
	e.mustAs(e.mallory, "vm", "create", "--no-start", "malvm")
	e.mustAs(e.alice, "vm", "create", "--no-start", "alicevm")
	for name, want := range map[string]string{"malvm": malImg.ID, "alicevm": rootImg.ID} {
		if vm := e.d.VM(t, name); vm.ImageID != want {
			t.Errorf("%s boots %s, want %s", name, vm.ImageID, want)
		}
	}
	// Root reaches mallory's only by naming her, and inspect there says
	// whose it is.
	if det := imageJSON(t, e.d.MustCLI("image", "inspect", e.mallory.Name+"/default", "--json")); det.ID != malImg.ID {
		t.Errorf("root's mallory/default: %s", det.ID)
	}
	// No existence oracle: alice cannot tell mallory's private image from
	// nothing, and may take the name herself.
	r1 := e.as(e.alice, "image", "inspect", e.mallory.Name+"/default")
	r2 := e.as(e.alice, "image", "inspect", e.mallory.Name+"/nothing")
	if r1.Code == 0 || strings.ReplaceAll(r1.Stderr, "default", "X") != strings.ReplaceAll(r2.Stderr, "nothing", "X") {
		t.Errorf("alice probing mallory's names: %q vs %q", r1.Stderr, r2.Stderr)
	}
	ak, ar := e.userImage(e.alice, "img")
	e.mustAs(e.alice, "image", "register", "default", "--kernel", ak, "--rootfs", ar)
	e.refused(e.alice, "already exists", "image", "register", "default", "--kernel", ak, "--rootfs", ar)
	// Alice's list: hers and root's, never mallory's.
	r := e.mustAs(e.alice, "image", "ls", "--json")
	var imgs []model.Image
	json.Unmarshal([]byte(r.Stdout), &imgs)
	for _, img := range imgs {
		if img.OwnerUID != 0 && img.OwnerUID != int(e.alice.UID) {
			t.Errorf("alice sees %s of uid %d", img.Name, img.OwnerUID)
		}
	}
	if len(imgs) != 2 {
		t.Errorf("alice sees %d images, want 2", len(imgs))
	}
	// Removing root's default by its bare name never touches mallory's.
	e.d.MustCLI("vm", "rm", "rootvm", "alicevm")
	e.d.MustCLI("image", "rm", "default")
	e.mustAs(e.mallory, "image", "inspect", "default")
}

// TestFloodAndSlowBodiesDoNotStopOthers: mallory opens far more
// connections than her limit, each sending headers and no body. Her
// connections are refused or cut off; alice and root go on working.
func TestFloodAndSlowBodiesDoNotStopOthers(t *testing.T) {
	e := newUsersEnv(t, "api_read_timeout = \"2s\"\n[limits]\nconnections = 20\n")
	e.d.MustCLI("image", "register", "base", "--kernel", e.kernel, "--rootfs", e.rootfs)
	before := threads(t, e.d)
	done := make(chan string, 1)
	go func() {
		done <- e.hostileAs(e.mallory, "flood", 400, `POST /v1/vms HTTP/1.1\r\nHost: bangerd\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"name":`)
	}()
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 5; i++ {
		start := time.Now()
		e.mustAs(e.alice, "vm", "ls")
		e.mustAs(e.alice, "image", "ls")
		e.d.MustCLI("vm", "ls")
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("other users' calls took %s during the flood", took)
		}
	}
	e.mustAs(e.alice, "vm", "create", "--no-start", "alicevm", "--image", "base")
	var res floodResult
	if err := json.Unmarshal([]byte(<-done), &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("flood: %+v", res)
	if res.Status["open"] != 0 {
		t.Errorf("%d of mallory's connections were still held after 20s", res.Status["open"])
	}
	if res.Status["429"] == 0 || !strings.Contains(res.Messages["429 limits.connections"], "limits.connections") {
		t.Errorf("no connection was refused naming limits.connections: %+v", res)
	}
	if res.Status["400"] == 0 || res.Status["400"] > 20 {
		t.Errorf("slow bodies cut off: %d; want some, at most the limit of 20", res.Status["400"])
	}
	if res.Status["closed"] == 0 {
		t.Errorf("no connection far over the limit was closed at once: %+v", res)
	}
	// The flood left nothing behind: mallory works again, threads settle.
	e.mustAs(e.mallory, "vm", "ls")
	time.Sleep(time.Second)
	if after := threads(t, e.d); after > before+8 {
		t.Errorf("daemon threads %d before the flood, %d after", before, after)
	}
}

// TestPerUserLimits: each limit is hit with an error naming it and its
// key; root and admins are exempt.
func TestPerUserLimits(t *testing.T) {
	t.Run("vms and disk", func(t *testing.T) {
		e := newUsersEnv(t, "[limits]\nvms = 2\nunstarted_vms = 10\ndisk = \"40G\"\n")
		e.d.MustCLI("image", "register", "base", "--kernel", e.kernel, "--rootfs", e.rootfs)
		e.mustAs(e.mallory, "vm", "create", "--no-start", "m1", "--image", "base")
		e.refused(e.mallory, "limits.disk", "vm", "create", "--no-start", "m2", "--image", "base", "--disk-size", "30G")
		e.mustAs(e.mallory, "vm", "create", "--no-start", "m2", "--image", "base")
		e.refused(e.mallory, "limits.vms", "vm", "create", "--no-start", "m3", "--image", "base")
		e.refused(e.mallory, "limits.disk", "vm", "set", "m2", "--disk-size", "20G")
		// Alice has her own budget; root and the admin have none.
		e.mustAs(e.alice, "vm", "create", "--no-start", "a1", "--image", "base")
		for _, n := range []string{"r1", "r2", "r3"} {
			e.d.MustCLI("vm", "create", "--no-start", n, "--image", "base")
			e.mustAs(e.admin, "vm", "create", "--no-start", "adm-"+n, "--image", "base", "--disk-size", "30G")
		}
	})
	t.Run("unstarted vms, image disk and file sync", func(t *testing.T) {
		e := newUsersEnv(t, "[limits]\nunstarted_vms = 1\ndisk = \"16440M\"\nfile_sync_size = \"1M\"\n[[file_sync]]\nhost = \"~/big\"\nguest = \"big\"\n")
		e.d.MustCLI("image", "register", "base", "--kernel", e.kernel, "--rootfs", e.rootfs)
		e.mustAs(e.mallory, "vm", "create", "--no-start", "m1", "--image", "base")
		e.refused(e.mallory, "limits.unstarted_vms", "vm", "create", "--no-start", "m2", "--image", "base")
		// 16G of VM disks and a 32M image fit in 16440M; a second image
		// does not.
		k, r := e.userImage(e.mallory, "img")
		e.mustAs(e.mallory, "image", "register", "one", "--kernel", k, "--rootfs", r)
		e.refused(e.mallory, "limits.disk", "image", "register", "two", "--kernel", k, "--rootfs", r)
		// Alice syncs a file over the file sync limit: refused, no VM left.
		e.alice.WriteFile(t, "big", bytes.Repeat([]byte("b"), 2<<20), 0o600)
		e.refused(e.alice, "limits.file_sync_size", "vm", "create", "--no-start", "a1", "--image", "base")
		if got := vmNames(t, e.d, &e.alice.User); len(got) != 0 {
			t.Errorf("alice's refused create left %v", got)
		}
		// The admin is exempt from all three.
		e.admin.WriteFile(t, "big", bytes.Repeat([]byte("b"), 2<<20), 0o600)
		e.mustAs(e.admin, "vm", "create", "--no-start", "ad1", "--image", "base")
		e.mustAs(e.admin, "vm", "create", "--no-start", "ad2", "--image", "base")
	})
}

// TestAdminsAndBuilds: kernel builds are for root and admins; the admin
// (in the admin group by the group database only) sees and manages
// everyone's VMs; mirrors are checked.
func TestAdminsAndBuilds(t *testing.T) {
	e := newUsersEnv(t, "")
	e.d.MustCLI("image", "register", "base", "--kernel", e.kernel, "--rootfs", e.rootfs)
	e.refused(e.mallory, "kernel builds are for root and members of the "+e.adminGroup+" group", "kernel", "build", "--force")
	// The admin passes the check: the build then fails on the source
	// version, not on who asked.
	if r := e.as(e.admin, "kernel", "build", "--version", "0.0"); r.Code == 0 || strings.Contains(r.Stderr, "kernel builds are for root") {
		t.Errorf("admin kernel build: %s", r)
	}
	// Image builds as a user: no kernel built here yet, and bad mirrors.
	e.refused(e.mallory, "no kernel built yet", "image", "build", "mine")
	for mirror, say := range map[string]string{
		"http://user:secret@deb.example/debian":     "credentials",
		"-o/tmp/owned":                              "scheme",
		"http://deb.example/debian\nhttp://evil/":   "control",
		"http://127.0.0.1:3142/debian":              "names this host",
		"http://deb.example/debian?token=1":         "queries",
		"ftp://deb.example/debian":                  "scheme",
		"http://deb.example/debian/../../etc/passw": "..",
	} {
		e.refused(e.mallory, say, "image", "build", "mine", "--mirror", mirror)
	}
	// Everyone's VMs for the admin; the admin's own stay hidden from users.
	e.mustAs(e.mallory, "vm", "create", "--no-start", "malvm", "--image", "base")
	e.mustAs(e.admin, "vm", "create", "--no-start", "admvm", "--image", "base")
	if got := vmNames(t, e.d, &e.admin.User); len(got) != 2 {
		t.Errorf("admin sees %v; want both VMs", got)
	}
	if got := vmNames(t, e.d, &e.mallory.User); len(got) != 1 || got[0] != "malvm" {
		t.Errorf("mallory sees %v", got)
	}
	e.refused(e.mallory, "not found", "vm", "rm", "admvm")
	e.mustAs(e.admin, "vm", "rm", "malvm")
	// Alice is no admin by being in the socket group.
	e.refused(e.alice, "kernel builds are for root", "kernel", "build")
}

// TestUsersLoopDeviceIsLeftAlone: a loop device a user set up on their
// own file (here on the very file they registered) is not banger's; an
// orphan loop on a state-dir file is, and goes.
func TestUsersLoopDeviceIsLeftAlone(t *testing.T) {
	testutil.RequireTools(t, "losetup")
	e := newUsersEnv(t, "stale_sweep_interval = \"1s\"\n")
	k, r := e.userImage(e.mallory, "img")
	e.mustAs(e.mallory, "image", "register", "mine", "--kernel", k, "--rootfs", r)
	det := imageJSON(t, e.mustAs(e.mallory, "image", "inspect", "mine", "--json"))
	attach := func(file string) string {
		out, err := exec.Command("losetup", "--find", "--show", "--read-only", file).CombinedOutput()
		if err != nil {
			t.Fatalf("losetup %s: %v: %s", file, err, out)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		return dev
	}
	theirs := attach(r)
	ours := attach(det.RootfsPath)
	attached := func(dev string) bool {
		out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME").Output()
		for _, l := range strings.Fields(string(out)) {
			if l == dev {
				return true
			}
		}
		return false
	}
	harness.WaitFor(t, 30*time.Second, "the sweep to detach the orphan state-dir loop "+ours, func() bool { return !attached(ours) })
	if !attached(theirs) {
		t.Errorf("mallory's own loop %s on %s was detached", theirs, r)
	}
}

// TestLegacyImagesAtStart: images registered by path before bangerd kept
// copies. Root's are copied into the state dir at start; a user's stay
// unusable (never opened by root) until registered again.
func TestLegacyImagesAtStart(t *testing.T) {
	e := newUsersEnv(t, "")
	k, r := e.userImage(e.mallory, "legacy")
	e.d.Stop()
	db, err := store.Open(context.Background(), filepath.Join(e.d.StateDir, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	now := model.Now()
	rootID, _ := model.NewID()
	userID, _ := model.NewID()
	for _, img := range []model.Image{
		{ID: rootID, Name: "oldroot", KernelPath: e.kernel, RootfsPath: e.rootfs, CreatedAt: now, UpdatedAt: now},
		{ID: userID, Name: "oldmine", OwnerUID: int(e.mallory.UID), KernelPath: k, RootfsPath: r, CreatedAt: now, UpdatedAt: now},
	} {
		if err := db.CreateImage(context.Background(), img); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	// Mallory swaps her file before the daemon starts: it must not read it.
	os.Remove(r)
	os.Symlink("/etc/shadow", r)
	e.d.Start()

	det := imageJSON(t, e.d.MustCLI("image", "inspect", "oldroot", "--json"))
	if !strings.HasPrefix(det.RootfsPath, e.d.StateDir+"/") || det.Note != "" || sha(t, det.RootfsPath) != sha(t, e.rootfs) {
		t.Errorf("root's legacy image after start: %+v", det)
	}
	e.d.MustCLI("vm", "create", "--no-start", "onold", "--image", "oldroot")
	mine := imageJSON(t, e.mustAs(e.mallory, "image", "inspect", "oldmine", "--json"))
	if mine.Note == "" || mine.RootfsPath != r {
		t.Errorf("mallory's legacy image: %+v", mine)
	}
	for _, a := range mine.Artifacts {
		if a.SizeBytes != 0 {
			t.Errorf("inspect looked at mallory's file as root: %+v", a)
		}
	}
	e.refused(e.mallory, "registers it again", "vm", "create", "--no-start", "mv", "--image", "oldmine")
	e.mustAs(e.mallory, "image", "rm", "oldmine")
	if fi, err := os.Lstat(r); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("removing the legacy image touched mallory's path: %v", err)
	}
	if b, _ := os.ReadFile(e.d.LogPath()); !bytes.Contains(b, []byte("registered by path before bangerd kept copies")) {
		t.Errorf("the daemon did not log the unusable legacy image")
	}
}

// TestBuildsTakeTurnsAndTimeOut: root's image build from a mirror that
// never answers holds the build slot only until build_timeout; mallory's
// build, queued behind it, then runs.
func TestBuildsTakeTurnsAndTimeOut(t *testing.T) {
	testutil.RequireTools(t, "debootstrap", "ip")
	e := newUsersEnv(t, "build_timeout = \"1m\"\n")
	// The tarpit listens on the bridge address in the daemon's netns.
	tarpit := exec.Command("ip", "netns", "exec", e.d.Netns, hostileBinary(t, e.d.Dir), "172.16.0.1:8099", "0", "")
	tarpit.Env = append(os.Environ(), "BANGER_HOSTILE=tarpit")
	out, err := tarpit.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tarpit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tarpit.Process.Kill(); tarpit.Wait() })
	if line, _ := bufioLine(out); !strings.Contains(line, "listening") {
		t.Fatalf("tarpit: %q", line)
	}
	mirror := "http://172.16.0.1:8099/debian"
	rootDone := make(chan harness.Result, 1)
	go func() {
		rootDone <- e.d.CLI("image", "build", "slow", "--kernel", e.kernel, "--release", "bookworm", "--mirror", mirror)
	}()
	time.Sleep(2 * time.Second)
	// Mallory's build waits for its turn, then starts once root's stops.
	k, _ := e.userImage(e.mallory, "img")
	mal := exec.Command(filepath.Join(e.d.Bin, "banger"), "image", "build", "theirs", "--kernel", k, "--release", "bookworm", "--mirror", mirror)
	mal.Env = append(os.Environ(), "BANGER_SOCKET="+e.d.Socket, "HOME="+e.mallory.Home)
	mal.Dir = e.mallory.Home
	mal.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: e.mallory.UID, Gid: e.mallory.GID}}
	stderr, err := mal.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := mal.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mal.Process.Kill(); mal.Wait() })
	lines := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := stderr.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	waitLine := func(what string, timeout time.Duration) string {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("mallory's build ended before %q", what)
				}
				if strings.Contains(l, what) {
					return l
				}
			case <-deadline:
				t.Fatalf("mallory's build: no %q within %s", what, timeout)
			}
		}
	}
	waitLine("1 build(s) go first", 30*time.Second)
	r := <-rootDone
	if r.Code == 0 || !strings.Contains(r.Stderr, "build_timeout") {
		t.Errorf("root's build from the tarpit: %s; want it stopped naming build_timeout", r)
	}
	waitLine("prepare", 30*time.Second)
	// The test stops here; the daemon goes down hard, taking mallory's
	// build (also stuck on the tarpit) with it.
	e.d.Crash()
}

// bufioLine reads one line from r.
func bufioLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		n, err := r.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				return string(b), nil
			}
			b = append(b, one[0])
		}
		if err != nil {
			return string(b), err
		}
	}
}
