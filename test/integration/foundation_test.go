// Package integration runs the real bangerd and banger on this host, as
// root, without guests: the API, the store, access control and bad input.
package integration

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/testutil"
	"banger/test/harness"
)

// fixtureImage writes a fake but well-formed kernel and an ext4 rootfs
// (no boot happens in these tests) and returns their paths.
func fixtureImage(t *testing.T, dir string) (kernel, rootfs string) {
	t.Helper()
	testutil.RequireTools(t, "mkfs.ext4")
	kernel = filepath.Join(dir, "vmlinux")
	// An ELF header is all register checks.
	elf := append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 57)...)
	if err := os.WriteFile(kernel, elf, 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs = filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("truncate", "-s", "32M", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	os.Chmod(dir, 0o755)
	return kernel, rootfs
}

func vmNames(t *testing.T, d *harness.Daemon, u *harness.User) []string {
	t.Helper()
	r := d.CLIAs(u, "", "vm", "ls", "--json")
	if r.Code != 0 {
		t.Fatalf("vm ls: %s", r)
	}
	var vms []api.VMView
	if err := json.Unmarshal([]byte(r.Stdout), &vms); err != nil {
		t.Fatalf("vm ls --json: %v\n%s", err, r.Stdout)
	}
	var names []string
	for _, v := range vms {
		names = append(names, v.Name)
	}
	return names
}

func TestRecordsSurviveRestart(t *testing.T) {
	testutil.RequireRoot(t)
	d := harness.NewDaemon(t, harness.Options{})
	d.Start()
	kernel, rootfs := fixtureImage(t, d.Dir)
	d.MustCLI("image", "register", "base", "--kernel", kernel, "--rootfs", rootfs)
	d.MustCLI("vm", "create", "--no-start", "dev", "--image", "base", "--vcpus", "3", "--memory", "1G", "--disk-size", "4G")

	d.Stop()
	d.Start()

	if got := vmNames(t, d, nil); len(got) != 1 || got[0] != "dev" {
		t.Fatalf("after restart vm ls = %v; want [dev]", got)
	}
	r := d.MustCLI("vm", "inspect", "dev", "--json")
	var v api.VMView
	if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "created" || v.Spec.VCPUCount != 3 || v.Spec.MemoryMiB != 1024 || v.Spec.WorkDiskSizeBytes != 4<<30 || v.ImageName != "base" {
		t.Errorf("vm after restart: %+v", v)
	}
	if v.Runtime.GuestIP != "172.16.0.2" || v.Runtime.DNSName != "dev.banger" || v.Runtime.VMDir == "" {
		t.Errorf("runtime after restart: %+v", v.Runtime)
	}
	// The daemon created its state dir with the database in it.
	if _, err := os.Stat(filepath.Join(d.StateDir, "banger.db")); err != nil {
		t.Errorf("no database: %v", err)
	}
	// Defaults: a VM with no sizes gets the model's defaults.
	d.MustCLI("vm", "create", "--no-start", "plain", "--image", "base")
	r = d.MustCLI("vm", "inspect", "plain", "--json")
	v = api.VMView{}
	json.Unmarshal([]byte(r.Stdout), &v)
	if v.Spec.VCPUCount != 2 || v.Spec.MemoryMiB != 2048 || v.Spec.WorkDiskSizeBytes != 8<<30 || v.Spec.SystemOverlaySizeByte != 8<<30 || v.Runtime.GuestIP != "172.16.0.3" {
		t.Errorf("defaults: %+v %+v", v.Spec, v.Runtime)
	}
	// vm rm removes the record.
	d.MustCLI("vm", "rm", "plain")
	if got := vmNames(t, d, nil); len(got) != 1 {
		t.Errorf("after rm: %v", got)
	}
}

func TestBadInputIsRefusedAndStoresNothing(t *testing.T) {
	testutil.RequireRoot(t)
	d := harness.NewDaemon(t, harness.Options{})
	d.Start()
	kernel, rootfs := fixtureImage(t, d.Dir)
	d.MustCLI("image", "register", "base", "--kernel", kernel, "--rootfs", rootfs)
	d.MustCLI("vm", "create", "--no-start", "taken", "--image", "base")

	notKernel := filepath.Join(d.Dir, "not-a-kernel")
	os.WriteFile(notKernel, []byte("hello"), 0o644)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"uppercase name", []string{"vm", "create", "--no-start", "Dev"}, "DNS label"},
		{"leading dash", []string{"vm", "create", "--no-start", "--", "-dev"}, "DNS label"},
		{"trailing dash", []string{"vm", "create", "--no-start", "dev-"}, "DNS label"},
		{"underscore", []string{"vm", "create", "--no-start", "dev_1"}, "DNS label"},
		{"too long", []string{"vm", "create", "--no-start", strings.Repeat("a", 64)}, "DNS label"},
		{"zero disk", []string{"vm", "create", "--no-start", "x1", "--disk-size", "0"}, "--disk-size: size must be positive"},
		{"negative disk", []string{"vm", "create", "--no-start", "x2", "--disk-size", "-1G"}, "--disk-size: size must be positive"},
		{"terabyte disk", []string{"vm", "create", "--no-start", "x3", "--disk-size", "1T"}, "unsupported size suffix"},
		{"bad suffix", []string{"vm", "create", "--no-start", "x4", "--overlay-size", "12X"}, "--overlay-size: unsupported size suffix"},
		{"empty size", []string{"vm", "create", "--no-start", "x5", "--disk-size", ""}, "size is required"},
		{"too big", []string{"vm", "create", "--no-start", "x6", "--disk-size", "129G"}, "exceeds max"},
		{"zero vcpus", []string{"vm", "create", "--no-start", "x7", "--vcpus", "0"}, "between 1 and 32"},
		{"many vcpus", []string{"vm", "create", "--no-start", "x8", "--vcpus", "33"}, "between 1 and 32"},
		{"small memory", []string{"vm", "create", "--no-start", "x9", "--memory", "64M"}, "at least 128"},
		{"unknown image", []string{"vm", "create", "--no-start", "x10", "--image", "nope"}, `image "nope" not found`},
		{"duplicate", []string{"vm", "create", "--no-start", "taken"}, "already exists"},
		{"register missing file", []string{"image", "register", "img1", "--kernel", "/nonexistent", "--rootfs", rootfs}, "no such file"},
		{"register not a kernel", []string{"image", "register", "img2", "--kernel", notKernel, "--rootfs", rootfs}, "neither an ELF vmlinux nor a bzImage"},
		{"register bad name", []string{"image", "register", "Bad_Name", "--kernel", kernel, "--rootfs", rootfs}, "image name"},
		{"register duplicate", []string{"image", "register", "base", "--kernel", kernel, "--rootfs", rootfs}, "already exists"},
		{"set shrink", []string{"vm", "set", "taken", "--disk-size", "1G"}, "can only grow"},
		{"set bad vcpus", []string{"vm", "set", "taken", "--vcpus", "99"}, "between 1 and 32"},
		{"set nothing", []string{"vm", "set", "taken"}, "at least one of"},
		{"rm unknown", []string{"vm", "rm", "ghost"}, `vm "ghost" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := d.CLI(tt.args...)
			if r.Code == 0 {
				t.Fatalf("banger %v succeeded; want a refusal\n%s", tt.args, r)
			}
			if !strings.Contains(r.Stderr, tt.want) {
				t.Errorf("banger %v stderr %q; want it to mention %q", tt.args, r.Stderr, tt.want)
			}
		})
	}
	if got := vmNames(t, d, nil); len(got) != 1 || got[0] != "taken" {
		t.Errorf("after bad input vm ls = %v; want [taken]", got)
	}
	r := d.MustCLI("image", "ls", "-q")
	if strings.TrimSpace(r.Stdout) != "base" {
		t.Errorf("after bad input image ls = %q; want base", r.Stdout)
	}
	r = d.MustCLI("vm", "inspect", "taken", "--json")
	if !strings.Contains(r.Stdout, `"work_disk_size_bytes": 8589934592`) {
		t.Errorf("refused set changed the vm: %s", r.Stdout)
	}
}

func TestMalformedRequestsGet400(t *testing.T) {
	testutil.RequireRoot(t)
	d := harness.NewDaemon(t, harness.Options{})
	d.Start()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.Socket)
	}}, Timeout: 10 * time.Second}
	bodies := []string{``, `{`, `[]`, `{"name": 5}`, `{"name":"ok","bogus":1}`, `{"name":"ok"} trailing`, strings.Repeat("x", 2<<20)}
	for _, b := range bodies {
		resp, err := client.Post("http://bangerd/v1/vms", "application/json", strings.NewReader(b))
		if err != nil {
			t.Fatalf("post %.20q: %v", b, err)
		}
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || eb.Error.Code != "EINVALID" || eb.Error.Message == "" {
			t.Errorf("post %.20q: status %d, %+v; want 400 EINVALID with a message", b, resp.StatusCode, eb)
		}
	}
	resp, err := client.Get("http://bangerd/v2/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown route: %d", resp.StatusCode)
	}
	// The daemon is still there.
	d.MustCLI("version")
	select {
	case <-d.Exited():
		t.Fatal("daemon exited")
	default:
	}
}

func TestOtherUsersSeeOnlyTheirOwn(t *testing.T) {
	testutil.RequireRoot(t)
	// The socket is group-owned by nogroup so that nobody (a member by
	// its primary gid) can connect, as a banger group member would.
	d := harness.NewDaemon(t, harness.Options{Config: `socket_group = "nogroup"`})
	d.Start()
	fi, err := os.Stat(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v; want 0660", fi.Mode().Perm())
	}
	kernel, rootfs := fixtureImage(t, d.Dir)
	d.MustCLI("image", "register", "base", "--kernel", kernel, "--rootfs", rootfs)
	d.MustCLI("vm", "create", "--no-start", "rootvm", "--image", "base")

	home := filepath.Join(d.Dir, "nobody-home")
	os.MkdirAll(home, 0o755)
	os.Chown(home, 65534, 65534)
	nobody := &harness.User{UID: 65534, GID: 65534, Home: home}

	if got := vmNames(t, d, nobody); len(got) != 0 {
		t.Fatalf("nobody sees %v; want nothing", got)
	}
	for _, args := range [][]string{{"vm", "rm", "rootvm"}, {"vm", "inspect", "rootvm"}, {"vm", "set", "rootvm", "--vcpus", "1"}} {
		r := d.CLIAs(nobody, "", args...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "not found") {
			t.Errorf("nobody %v: %s; want not found", args, r)
		}
	}
	// Root's image is shared: nobody can create a VM from it.
	r := d.CLIAs(nobody, "", "vm", "create", "--no-start", "mine", "--image", "base")
	if r.Code != 0 {
		t.Fatalf("nobody create: %s", r)
	}
	if got := vmNames(t, d, nobody); len(got) != 1 || got[0] != "mine" {
		t.Errorf("nobody sees %v; want [mine]", got)
	}
	// But cannot remove root's image.
	r = d.CLIAs(nobody, "", "image", "rm", "base")
	if r.Code == 0 {
		t.Errorf("nobody removed root's image: %s", r)
	}
	// nobody cannot register a file it cannot read.
	secret := filepath.Join(d.Dir, "secret.ext4")
	os.WriteFile(secret, []byte("x"), 0o600)
	r = d.CLIAs(nobody, "", "image", "register", "stolen", "--kernel", kernel, "--rootfs", secret)
	if r.Code == 0 || !strings.Contains(r.Stderr, "cannot read") {
		t.Errorf("nobody registered an unreadable file: %s", r)
	}
	// Root sees both VMs and nobody's owner uid.
	r = d.MustCLI("vm", "inspect", "mine", "--json")
	if !strings.Contains(r.Stdout, `"owner_uid": 65534`) {
		t.Errorf("owner not recorded: %s", r.Stdout)
	}
	if got := vmNames(t, d, nil); len(got) != 2 {
		t.Errorf("root sees %v; want both", got)
	}
	// The root VM survived nobody's attempts.
	d.MustCLI("vm", "inspect", "rootvm")
}

func TestDoctorReportsWithoutCrashing(t *testing.T) {
	testutil.RequireRoot(t)
	d := harness.NewDaemon(t, harness.Options{})
	d.Start()
	r := d.CLI("doctor", "--json")
	var checks []api.DoctorCheck
	if err := json.Unmarshal([]byte(r.Stdout), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r)
	}
	byName := map[string]api.DoctorCheck{}
	for _, c := range checks {
		byName[c.Name] = c
		if c.Status != "PASS" && c.Fix == "" && c.Name != "ip_forward" {
			t.Errorf("check %s is %s without a fix line", c.Name, c.Status)
		}
	}
	for _, n := range []string{"daemon", "kvm", "vmm", "firecracker", "device-mapper", "loop", "tun", "iptables", "ip_forward", "disk"} {
		if _, ok := byName[n]; !ok {
			t.Errorf("doctor has no %q check", n)
		}
	}
	if byName["daemon"].Status != "PASS" {
		t.Errorf("daemon check: %+v", byName["daemon"])
	}
	// The daemon runs in a namespace of the test's: the host cannot
	// resolve VM names, and doctor says what to do instead.
	if c := byName["host dns"]; c.Status != "WARN" || !strings.Contains(c.Detail, "runs in the network namespace "+d.Netns) || !strings.Contains(c.Fix, "port-forward") {
		t.Errorf("host dns check: %+v", c)
	}
	// On this kind of host (no device-mapper, ext4 state dir) new VMs'
	// disks are reflink clones in the storage pool (sparse copies with
	// storage_pool = "off"), and doctor names the strategy first.
	if o := byName["overlay"]; !strings.HasPrefix(o.Detail, "pool: ") && !strings.HasPrefix(o.Detail, "copy") && !strings.HasPrefix(o.Detail, "reflink") && !strings.HasPrefix(o.Detail, "dm-snapshot") {
		t.Errorf("overlay check does not name the strategy: %+v", o)
	}
	failed := false
	for _, c := range checks {
		failed = failed || c.Status == "FAIL"
	}
	if failed != (r.Code == 1) {
		t.Errorf("exit %d but failed=%v", r.Code, failed)
	}
	// Without the daemon the CLI still checks the host.
	d.Stop()
	r = d.CLI("doctor")
	if !strings.Contains(r.Stdout, "FAIL  daemon") || r.Code != 1 {
		t.Errorf("doctor without daemon: %s", r)
	}
}
