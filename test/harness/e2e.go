package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/proc"
	"banger/internal/testutil"
)

// Artifacts are the kernel and image scripts/prepare-artifacts.sh made
// with banger, shared by the end-to-end tests.
type Artifacts struct {
	Kernel   string
	ImageDir string
	SSHKey   string
}

// RequireArtifacts returns the prepared kernel and image, or skips (fails
// in CI) when they are missing.
func RequireArtifacts(t testing.TB) Artifacts {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "qemu-system-x86_64", "ip", "iptables", "ssh", "scp")
	a := Artifacts{
		Kernel:   testutil.RequireEnvFile(t, "BANGER_TEST_KERNEL", "a vmlinux built by `banger kernel build`"),
		ImageDir: testutil.RequireEnvFile(t, "BANGER_TEST_IMAGE_DIR", "the artifact dir of an image built by `banger image build`"),
		SSHKey:   testutil.RequireEnvFile(t, "BANGER_TEST_SSH_KEY", "the daemon key that image trusts"),
	}
	return a
}

// NewE2EDaemon starts a daemon in its own netns that boots guests with
// banger-vmm-qemu, using the prepared image's daemon key, with the image
// registered as "base". extra is appended to its config.
func NewE2EDaemon(t testing.TB, a Artifacts, extra string) *Daemon {
	t.Helper()
	bin := Binaries(t)
	cfg := fmt.Sprintf(`firecracker_bin = %q
ssh_key_path = %q
tap_pool_size = 2
boot_timeout = "4m"
stop_timeout = "45s"
default_image_name = "base"
%s`, filepath.Join(bin, "banger-vmm-qemu"), a.SSHKey, extra)
	d := NewDaemon(t, Options{Config: cfg})
	d.Start()
	d.MustCLI("image", "register", "base",
		"--kernel", filepath.Join(a.ImageDir, "vmlinux"),
		"--rootfs", filepath.Join(a.ImageDir, "rootfs.ext4"),
		"--work-seed", filepath.Join(a.ImageDir, "work-seed.ext4"))
	return d
}

// VM returns a VM as the CLI shows it.
func (d *Daemon) VM(t testing.TB, name string) api.VMView {
	t.Helper()
	r := d.MustCLI("vm", "inspect", name, "--json")
	var v api.VMView
	if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil {
		t.Fatalf("vm inspect --json: %v", err)
	}
	return v
}

// Leftovers lists what exists in the daemon's netns and state dir that
// its rows do not explain: taps beyond the pool or held by no running VM,
// tagged rules of VMs not running with NAT, untagged rules, packet filter
// objects of VMs not running (and running VMs without one), loop devices
// on state files, dm devices, VMM processes and VM dirs without a row,
// saved states of VMs not suspended (and suspended VMs without one).
func (d *Daemon) Leftovers(t testing.TB, poolSize int) []string {
	t.Helper()
	var vms []api.VMView
	r := d.MustCLI("vm", "ls", "--json")
	if err := json.Unmarshal([]byte(r.Stdout), &vms); err != nil {
		t.Fatal(err)
	}
	var out []string
	running := map[string]api.VMView{}
	dirs := map[string]bool{}
	for _, v := range vms {
		dirs[filepath.Base(v.Runtime.VMDir)] = true
		if v.State == "running" {
			running[v.Runtime.TapDevice] = v
		}
	}
	// Taps: the pool plus one per running VM.
	// An observation that fails is a failed test, never "nothing left".
	links, err := d.InNetns("ip", "-o", "link", "show", "type", "tun")
	if err != nil {
		t.Fatalf("leftovers: ip link show: %v: %s", err, links)
	}
	taps := 0
	for _, l := range strings.Split(links, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
		if strings.HasPrefix(name, "bgtap") {
			taps++
		}
	}
	if want := poolSize + len(running); taps != want {
		out = append(out, fmt.Sprintf("%d taps, want %d (pool %d + %d running)", taps, want, poolSize, len(running)))
	}
	// Rules: only tagged ones, only for running VMs with NAT.
	for _, table := range []string{"filter", "nat"} {
		rules, err := d.InNetns("iptables", "-t", table, "-S")
		if err != nil {
			t.Fatalf("leftovers: iptables -t %s -S: %v: %s", table, err, rules)
		}
		for _, l := range strings.Split(rules, "\n") {
			if !strings.HasPrefix(l, "-A ") {
				continue
			}
			i := strings.Index(l, "banger:vm=")
			if i < 0 {
				out = append(out, "untagged rule: "+l)
				continue
			}
			tag := l[i:]
			ok := false
			for tap, v := range running {
				if v.Spec.NATEnabled && strings.Contains(tag, "tap="+tap) && strings.Contains(tag, "vm="+v.ID[:12]) {
					ok = true
				}
			}
			if !ok {
				out = append(out, "orphan rule: "+l)
			}
		}
	}
	out = append(out, d.filterLeftovers(running)...)
	// A fork's quarantine (network/quarantine.go) never outlives the
	// fork: no table, no address.
	if tables, err := d.InNetns("nft", "list", "tables"); err != nil {
		t.Fatalf("leftovers: nft list tables: %v: %s", err, tables)
	} else if strings.Contains(tables, "banger_q_") {
		out = append(out, "quarantine tables: "+tables)
	}
	if addrs, err := d.InNetns("ip", "-o", "addr", "show"); err != nil {
		t.Fatalf("leftovers: ip addr show: %v: %s", err, addrs)
	} else if strings.Contains(addrs, "169.254.169.1") {
		out = append(out, "quarantine address: "+addrs)
	}
	// Loop devices on state files; dm devices.
	lo, err := exec.Command("losetup", "-a").CombinedOutput()
	if err != nil {
		t.Fatalf("leftovers: losetup -a: %v: %s", err, lo)
	}
	// The storage pool's file has one loop device, mounted while the
	// daemon runs; a second would be a leftover (and a danger).
	poolFile := filepath.Join(d.StateDir, "pool.img")
	poolLoops := 0
	for _, l := range strings.Split(string(lo), "\n") {
		if strings.Contains(l, "("+poolFile+")") && poolLoops == 0 {
			poolLoops++
			continue
		}
		if strings.Contains(l, d.StateDir) {
			out = append(out, "loop device: "+l)
		}
	}
	// dmsetup fails without device-mapper in the kernel (as on this
	// project's machines): then there are no dm devices to leave. The
	// kernel says whether it has the driver; a /dev/mapper/control node
	// may exist without it (dmsetup makes one when it runs).
	if misc, err := os.ReadFile("/proc/misc"); err == nil && strings.Contains(string(misc), "device-mapper") {
		dm, err := exec.Command("dmsetup", "ls").CombinedOutput()
		if err != nil {
			t.Fatalf("leftovers: dmsetup ls: %v: %s", err, dm)
		}
		if strings.Contains(string(dm), "banger-") {
			out = append(out, "dm devices: "+string(dm))
		}
	}
	// VMM processes: one per running VM, none other.
	procs, err := vmmProcesses(d.StateDir)
	if err != nil {
		t.Fatalf("leftovers: %v", err)
	}
	if len(procs) != len(running) {
		out = append(out, fmt.Sprintf("%d VMM processes (%v), want %d", len(procs), procs, len(running)))
	}
	out = append(out, savedStateLeftovers(vms)...)
	// VM dirs: only rows' dirs.
	entries, err := os.ReadDir(filepath.Join(d.StateDir, "vms"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("leftovers: %v", err)
	}
	for _, e := range entries {
		if !dirs[e.Name()] {
			out = append(out, "vm dir without a row: "+e.Name())
		}
	}
	// Disks in the storage pool: only rows' (the pool is mounted in the
	// daemon's mount namespace, so look through its eyes).
	if pool, err := d.InMounts("sh", "-c", "ls -A "+filepath.Join(d.StateDir, "pool", "vms")+" 2>/dev/null || true"); err == nil {
		for _, name := range strings.Fields(pool) {
			if !dirs[name] {
				out = append(out, "pool disks without a row: "+name)
			}
		}
	}
	return out
}

// savedStateLeftovers checks suspend's files: a suspended VM has a
// complete saved state (<vm dir>/saved/{state,mem}), no other VM has
// one, and nothing of a suspend, resume or drop cut short is left (the
// VMM's snapshot files, saved.new, saved.old).
func savedStateLeftovers(vms []api.VMView) []string {
	var out []string
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	for _, v := range vms {
		dir := v.Runtime.VMDir
		saved := filepath.Join(dir, "saved")
		complete := exists(filepath.Join(saved, "state")) && exists(filepath.Join(saved, "mem"))
		switch {
		case v.State == "suspended" && !complete:
			out = append(out, fmt.Sprintf("suspended vm %s has no complete saved state", v.Name))
		case v.State != "suspended" && exists(saved):
			out = append(out, fmt.Sprintf("vm %s is %s but has a saved state", v.Name, v.State))
		}
		for _, p := range []string{"saved.new", "saved.old", "vmm/suspend.state", "vmm/suspend.mem"} {
			if exists(filepath.Join(dir, p)) {
				out = append(out, fmt.Sprintf("vm %s: %s left by a cut-short suspend or resume", v.Name, p))
			}
		}
	}
	return out
}

// filterLeftovers checks banger's nftables objects: every per-VM object
// (chains, sets, counters named vm-<short id>..., elements of the base
// sets and map with the comment vm-<short id> or that jump to a VM's
// chain) must belong to a running VM, and every running VM must have its
// filter elements, and its chain when its egress is not open.
func (d *Daemon) filterLeftovers(running map[string]api.VMView) []string {
	live := map[string]string{} // short id → name
	for _, v := range running {
		live[v.ID[:12]] = v.Name
	}
	raw, err := d.InNetns("nft", "-j", "list", "ruleset")
	if err != nil {
		return []string{"nft list ruleset: " + err.Error() + ": " + raw}
	}
	var doc struct {
		Nftables []map[string]struct {
			Family string            `json:"family"`
			Table  string            `json:"table"`
			Name   string            `json:"name"`
			Elem   []json.RawMessage `json:"elem"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		return []string{"nft -j list ruleset: " + err.Error()}
	}
	owner := func(name string) (string, bool) {
		rest, ok := strings.CutPrefix(name, "vm-")
		if !ok {
			return "", false
		}
		for _, suf := range []string{"-allow", "-dns", "-seen", "-denied"} {
			rest = strings.TrimSuffix(rest, suf)
		}
		return rest, true
	}
	// elemOwner reads a listed element: its owner from its comment
	// ("vm-<short>") or from the chain a map element jumps to, and
	// whether it jumps to that VM's chain.
	elemOwner := func(raw json.RawMessage) (short string, jumps bool, key string) {
		var pair []json.RawMessage
		if json.Unmarshal(raw, &pair) == nil && len(pair) == 2 {
			var v struct {
				Jump struct{ Target string } `json:"jump"`
			}
			if json.Unmarshal(pair[1], &v) == nil && v.Jump.Target != "" {
				short, jumps = owner(v.Jump.Target)
			}
			raw = pair[0]
		}
		var w struct {
			Elem struct {
				Comment string `json:"comment"`
			} `json:"elem"`
		}
		if json.Unmarshal(raw, &w) == nil && w.Elem.Comment != "" {
			if c, ok := owner(w.Elem.Comment); ok {
				short = c
			}
		}
		return short, jumps, string(raw)
	}
	var out []string
	chains := map[string]int{}
	elems := map[string]int{}
	jumps := map[string]bool{}
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			if o.Table != "banger" || (kind != "chain" && kind != "set" && kind != "map" && kind != "counter") {
				continue
			}
			if short, ok := owner(o.Name); ok {
				if kind == "chain" {
					chains[short]++
				}
				if live[short] == "" {
					out = append(out, fmt.Sprintf("orphan nft %s %s %s", o.Family, kind, o.Name))
				}
				continue
			}
			// The base sets and map: a VM's elements carry its comment.
			for _, e := range o.Elem {
				short, jump, key := elemOwner(e)
				if short == "" {
					continue
				}
				elems[short]++
				jumps[short] = jumps[short] || jump
				if live[short] == "" {
					out = append(out, fmt.Sprintf("orphan nft %s element %s %s", o.Family, o.Name, key))
				}
			}
		}
	}
	// A running VM has its three elements (taps, ident, guests), and
	// when its guests element jumps to its chain (egress none or allow),
	// that chain.
	for short, name := range live {
		want := 0
		if jumps[short] {
			want = 1
		}
		if elems[short] != 3 || chains[short] != want {
			out = append(out, fmt.Sprintf("running vm %s has %d of its 3 filter elements and %d of its %d chains", name, elems[short], chains[short], want))
		}
	}
	return out
}

// vmmProcesses lists processes whose argv has an --api-sock under dir.
func vmmProcesses(dir string) ([]string, error) {
	procs, err := proc.Host.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range procs {
		if sock, ok := proc.FlagValue(p.Argv, "--api-sock"); ok && strings.HasPrefix(sock, dir) && !p.Dead() {
			out = append(out, strconv.Itoa(p.PID))
		}
	}
	return out, nil
}

// WaitFor polls cond until it is true or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}
