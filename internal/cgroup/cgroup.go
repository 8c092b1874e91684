// Package cgroup puts each VM's VMM in a control group of its own with
// limits derived from the VM's size: CPU time from its vCPUs, memory from
// its memory plus the VMM's overhead, a process count, and an IO weight.
// It speaks cgroup v2 (the unified hierarchy) and, on hosts that still
// mount the v1 controllers (as this project's CI machines do), cgroup v1,
// with the same Limits and Events.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mode is which cgroup hierarchy a Manager drives.
type Mode string

// The modes.
const (
	ModeV2   Mode = "v2"
	ModeV1   Mode = "v1"
	ModeNone Mode = "none"
)

// Period is the CPU bandwidth period, in microseconds.
const Period = 100000

// Limits are one group's limits. A zero field leaves that limit alone.
type Limits struct {
	// CPUQuotaUs is the CPU time allowed per Period.
	CPUQuotaUs int64 `json:"cpu_quota_us,omitempty"`
	// MemoryMaxBytes is the hard memory limit.
	MemoryMaxBytes int64 `json:"memory_max_bytes,omitempty"`
	// PidsMax is the most tasks (threads) the group may hold.
	PidsMax int64 `json:"pids_max,omitempty"`
	// IOWeight is the relative IO weight, 1 to 10000 (v1 maps it to
	// blkio's 10 to 1000 where the host's scheduler offers one).
	IOWeight int64 `json:"io_weight,omitempty"`
}

// Events counts how often a group hit its limits.
type Events struct {
	// CPUThrottled is how many periods the group was throttled in, and
	// CPUThrottledUs for how long in total.
	CPUThrottled   int64 `json:"cpu_throttled,omitempty"`
	CPUThrottledUs int64 `json:"cpu_throttled_us,omitempty"`
	// MemoryMax is how often the memory limit was reached; OOMKills how
	// many processes the kernel killed for it.
	MemoryMax int64 `json:"memory_max,omitempty"`
	OOMKills  int64 `json:"oom_kills,omitempty"`
	// PidsMax is how often a fork failed on the task limit.
	PidsMax int64 `json:"pids_max,omitempty"`
	// MemoryBytes is the group's current memory use.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
}

// v1Controllers are the v1 hierarchies banger uses.
var v1Controllers = []string{"cpu", "memory", "pids", "blkio"}

// v2Controllers are enabled for banger's subtree on v2.
var v2Controllers = []string{"cpu", "memory", "pids", "io"}

// nameRe is what a group name may be: it becomes a directory name.
var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// Manager creates and removes groups under one parent ("banger").
type Manager struct {
	mode   Mode
	root   string // /sys/fs/cgroup
	parent string // the subtree's name, e.g. "banger"
	why    string
}

// Detect inspects root (normally /sys/fs/cgroup) and returns a Manager
// for the hierarchy it finds, with groups under parent. When neither
// hierarchy is usable the Manager's mode is ModeNone and Why says why.
func Detect(root, parent string) *Manager {
	m := &Manager{root: root, parent: parent, mode: ModeNone}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		m.mode = ModeV2
		m.why = "cgroup v2 (unified hierarchy) at " + root
		return m
	}
	var missing []string
	for _, c := range []string{"cpu", "memory", "pids"} {
		if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		m.mode = ModeV1
		m.why = "cgroup v1 controllers under " + root + " (the v2 controllers are taken by v1 on this host)"
		return m
	}
	m.why = fmt.Sprintf("no usable cgroup hierarchy under %s (v1 controllers missing: %s)", root, strings.Join(missing, ", "))
	return m
}

// Mode returns the hierarchy in use.
func (m *Manager) Mode() Mode { return m.mode }

// Why says which hierarchy is used, or why none is.
func (m *Manager) Why() string { return m.why }

// dirs returns a group's directories, one per hierarchy it lives in.
func (m *Manager) dirs(name string) []string {
	switch m.mode {
	case ModeV2:
		return []string{filepath.Join(m.root, m.parent, name)}
	case ModeV1:
		var out []string
		for _, c := range v1Controllers {
			if _, err := os.Stat(filepath.Join(m.root, c)); err == nil {
				out = append(out, filepath.Join(m.root, c, m.parent, name))
			}
		}
		return out
	}
	return nil
}

// Path is a group's directory in the unified hierarchy (v2), or in the
// memory controller's (v1): where a user would look (in the host's mount
// namespace, when the manager reaches it through another process's root).
func (m *Manager) Path(name string) string {
	root := m.root
	if r, ok := strings.CutPrefix(root, "/proc/1/root"); ok && strings.HasPrefix(r, "/") {
		root = r
	}
	switch m.mode {
	case ModeV2:
		return filepath.Join(root, m.parent, name)
	case ModeV1:
		return filepath.Join(root, "memory", m.parent, name)
	}
	return ""
}

func checkName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("cgroup name %q: want lowercase letters, digits and hyphens", name)
	}
	return nil
}

// Create makes the group (an existing one is reused) and sets its limits.
func (m *Manager) Create(name string, lim Limits) error {
	if m.mode == ModeNone {
		return fmt.Errorf("create cgroup %s: %s", name, m.why)
	}
	if err := checkName(name); err != nil {
		return err
	}
	if m.mode == ModeV2 {
		if err := m.enableV2(); err != nil {
			return fmt.Errorf("create cgroup %s: %w", name, err)
		}
	}
	for _, d := range m.dirs(name) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", name, err)
		}
	}
	if err := m.SetLimits(name, lim); err != nil {
		m.Remove(name)
		return err
	}
	return nil
}

// enableV2 turns the controllers on for the root's and the parent's
// children (a v2 group only gets a controller its parent delegates).
func (m *Manager) enableV2() error {
	parent := filepath.Join(m.root, m.parent)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	for _, dir := range []string{m.root, parent} {
		avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, c := range strings.Fields(string(avail)) {
			have[c] = true
		}
		var want []string
		for _, c := range v2Controllers {
			if have[c] {
				want = append(want, "+"+c)
			}
		}
		if len(want) == 0 {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(want, " ")), 0o644); err != nil {
			return fmt.Errorf("enable controllers in %s: %w", dir, err)
		}
	}
	return nil
}

// writes returns the files and values that set lim, for this mode.
func (m *Manager) writes(name string, lim Limits) [][2]string {
	var w [][2]string
	switch m.mode {
	case ModeV2:
		d := filepath.Join(m.root, m.parent, name)
		if lim.CPUQuotaUs > 0 {
			w = append(w, [2]string{filepath.Join(d, "cpu.max"), fmt.Sprintf("%d %d", lim.CPUQuotaUs, Period)})
		}
		if lim.MemoryMaxBytes > 0 {
			w = append(w, [2]string{filepath.Join(d, "memory.max"), strconv.FormatInt(lim.MemoryMaxBytes, 10)})
			w = append(w, [2]string{filepath.Join(d, "memory.swap.max"), "0"})
		}
		if lim.PidsMax > 0 {
			w = append(w, [2]string{filepath.Join(d, "pids.max"), strconv.FormatInt(lim.PidsMax, 10)})
		}
		if lim.IOWeight > 0 {
			w = append(w, [2]string{filepath.Join(d, "io.weight"), "default " + strconv.FormatInt(lim.IOWeight, 10)})
		}
	case ModeV1:
		p := func(ctrl, file string) string { return filepath.Join(m.root, ctrl, m.parent, name, file) }
		if lim.CPUQuotaUs > 0 {
			w = append(w, [2]string{p("cpu", "cpu.cfs_period_us"), strconv.Itoa(Period)})
			w = append(w, [2]string{p("cpu", "cpu.cfs_quota_us"), strconv.FormatInt(lim.CPUQuotaUs, 10)})
		}
		if lim.MemoryMaxBytes > 0 {
			w = append(w, [2]string{p("memory", "memory.limit_in_bytes"), strconv.FormatInt(lim.MemoryMaxBytes, 10)})
		}
		if lim.PidsMax > 0 {
			w = append(w, [2]string{p("pids", "pids.max"), strconv.FormatInt(lim.PidsMax, 10)})
		}
		if lim.IOWeight > 0 {
			// blkio weights exist only with a proportional scheduler
			// (BFQ, CFQ); without one there is nothing to set.
			v := max(10, min(1000, lim.IOWeight/10))
			for _, f := range []string{"blkio.bfq.weight", "blkio.weight"} {
				if _, err := os.Stat(p("blkio", f)); err == nil {
					w = append(w, [2]string{p("blkio", f), strconv.FormatInt(v, 10)})
					break
				}
			}
		}
	}
	return w
}

// SetLimits changes a group's limits.
func (m *Manager) SetLimits(name string, lim Limits) error {
	if err := checkName(name); err != nil {
		return err
	}
	for _, w := range m.writes(name, lim) {
		if err := os.WriteFile(w[0], []byte(w[1]), 0o644); err != nil {
			// memory.swap.max is absent without swap accounting.
			if strings.HasSuffix(w[0], "memory.swap.max") && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("cgroup %s: set %s to %q: %w", name, filepath.Base(w[0]), w[1], err)
		}
	}
	return nil
}

// Limits reads a group's limits back from the kernel.
func (m *Manager) Limits(name string) (Limits, error) {
	var l Limits
	if err := checkName(name); err != nil {
		return l, err
	}
	switch m.mode {
	case ModeV2:
		d := filepath.Join(m.root, m.parent, name)
		if f := strings.Fields(readString(filepath.Join(d, "cpu.max"))); len(f) == 2 && f[0] != "max" {
			l.CPUQuotaUs, _ = strconv.ParseInt(f[0], 10, 64)
		}
		l.MemoryMaxBytes = readInt(filepath.Join(d, "memory.max"))
		l.PidsMax = readInt(filepath.Join(d, "pids.max"))
		if f := strings.Fields(readString(filepath.Join(d, "io.weight"))); len(f) == 2 {
			l.IOWeight, _ = strconv.ParseInt(f[1], 10, 64)
		}
	case ModeV1:
		p := func(ctrl, file string) string { return filepath.Join(m.root, ctrl, m.parent, name, file) }
		if q := readInt(p("cpu", "cpu.cfs_quota_us")); q > 0 {
			l.CPUQuotaUs = q * Period / max(1, readInt(p("cpu", "cpu.cfs_period_us")))
		}
		if v := readInt(p("memory", "memory.limit_in_bytes")); v > 0 && v < 1<<62 {
			l.MemoryMaxBytes = v
		}
		l.PidsMax = readInt(p("pids", "pids.max"))
	default:
		return l, errors.New(m.why)
	}
	return l, nil
}

// Add moves a process into the group (every hierarchy of it).
func (m *Manager) Add(name string, pid int) error {
	if err := checkName(name); err != nil {
		return err
	}
	for _, d := range m.dirs(name) {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: add pid %d: %w", name, pid, err)
		}
	}
	return nil
}

// OpenFD opens the group's v2 directory for clone3's CLONE_INTO_CGROUP
// (SysProcAttr.UseCgroupFD), so a process starts inside it. On v1 it
// returns -1 and no error: the caller moves the process with Add.
func (m *Manager) OpenFD(name string) (int, error) {
	if m.mode != ModeV2 {
		return -1, nil
	}
	if err := checkName(name); err != nil {
		return -1, err
	}
	fd, err := syscall.Open(filepath.Join(m.root, m.parent, name), syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("cgroup %s: open: %w", name, err)
	}
	return fd, nil
}

// Procs lists the processes in the group.
func (m *Manager) Procs(name string) ([]int, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	for _, d := range m.dirs(name) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				seen[pid] = true
			}
		}
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// Events reads how often the group hit its limits.
func (m *Manager) Events(name string) (Events, error) {
	var e Events
	if err := checkName(name); err != nil {
		return e, err
	}
	switch m.mode {
	case ModeV2:
		d := filepath.Join(m.root, m.parent, name)
		cpu := readKV(filepath.Join(d, "cpu.stat"))
		e.CPUThrottled, e.CPUThrottledUs = cpu["nr_throttled"], cpu["throttled_usec"]
		mem := readKV(filepath.Join(d, "memory.events"))
		e.MemoryMax, e.OOMKills = mem["max"], mem["oom_kill"]
		e.PidsMax = readKV(filepath.Join(d, "pids.events"))["max"]
		e.MemoryBytes = readInt(filepath.Join(d, "memory.current"))
	case ModeV1:
		p := func(ctrl, file string) string { return filepath.Join(m.root, ctrl, m.parent, name, file) }
		cpu := readKV(p("cpu", "cpu.stat"))
		e.CPUThrottled = cpu["nr_throttled"]
		e.CPUThrottledUs = cpu["throttled_time"] / 1000
		e.MemoryMax = readInt(p("memory", "memory.failcnt"))
		e.OOMKills = readKV(p("memory", "memory.oom_control"))["oom_kill"]
		e.PidsMax = readKV(p("pids", "pids.events"))["max"]
		e.MemoryBytes = readInt(p("memory", "memory.usage_in_bytes"))
	default:
		return e, errors.New(m.why)
	}
	return e, nil
}

// Remove deletes the group. Its processes must be gone; a group that is
// already gone is not an error. The kernel may need a moment after the
// last process exits, so Remove retries briefly.
func (m *Manager) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	var errs []error
	for _, d := range m.dirs(name) {
		var err error
		for i := 0; i < 50; i++ {
			err = os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				err = nil
				break
			}
			if !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// List returns the names of the groups under the parent.
func (m *Manager) List() ([]string, error) {
	seen := map[string]bool{}
	var bases []string
	switch m.mode {
	case ModeV2:
		bases = []string{filepath.Join(m.root, m.parent)}
	case ModeV1:
		for _, c := range v1Controllers {
			bases = append(bases, filepath.Join(m.root, c, m.parent))
		}
	}
	for _, b := range bases {
		ents, err := os.ReadDir(b)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.IsDir() && nameRe.MatchString(e.Name()) {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

func readString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readInt(path string) int64 {
	s := readString(path)
	if s == "" || s == "max" {
		return 0
	}
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

// readKV reads a flat "key value" file (cpu.stat, memory.events, ...).
func readKV(path string) map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// MountHidden makes the kernel's cgroup hierarchies visible at root when
// this process's mount namespace hides them: `ip netns exec` (how the
// quickstart and the tests run the daemon) mounts a fresh /sys without
// /sys/fs/cgroup's mounts. The hierarchies this process is in are read
// from /proc/self/cgroup and mounted again under root (a tmpfs), which
// shows the same groups as the host's mounts. It does nothing when root
// already shows a hierarchy, and says what it mounted.
func MountHidden(root string) (string, error) {
	if Detect(root, "x").Mode() != ModeNone {
		return "", nil
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	v1, v2 := hierarchies(string(b))
	switch {
	case len(v1) > 0:
		if err := unix.Mount("cgroup", root, "tmpfs", 0, "mode=755"); err != nil {
			return "", fmt.Errorf("mount a tmpfs on %s: %w", root, err)
		}
		var done []string
		for _, opts := range v1 {
			dir := filepath.Join(root, strings.ReplaceAll(opts, ",", "_"))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return "", err
			}
			if err := unix.Mount("cgroup", dir, "cgroup", 0, opts); err != nil {
				return "", fmt.Errorf("mount cgroup %s on %s: %w", opts, dir, err)
			}
			// The controllers also answer to their own names (a
			// hierarchy "cpu,cpuacct" is at cpu and cpuacct too).
			for _, c := range strings.Split(opts, ",") {
				if link := filepath.Join(root, c); link != dir {
					os.Symlink(filepath.Base(dir), link)
				}
			}
			done = append(done, opts)
		}
		return "cgroup v1 (" + strings.Join(done, " ") + ") mounted again at " + root, nil
	case v2:
		if err := unix.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
			return "", fmt.Errorf("mount cgroup2 on %s: %w", root, err)
		}
		return "cgroup2 mounted again at " + root, nil
	}
	return "", nil
}

// hierarchies reads /proc/self/cgroup: the option strings of the v1
// hierarchies banger uses (e.g. "cpu", "memory", "cpu,cpuacct"), and
// whether the process is in a v2 hierarchy only.
func hierarchies(procCgroup string) (v1 []string, v2only bool) {
	want := map[string]bool{"cpu": true, "memory": true, "pids": true, "blkio": true}
	sawV1 := false
	for _, line := range strings.Split(procCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" {
			v2only = true
			continue
		}
		if f[1] == "" || strings.HasPrefix(f[1], "name=") {
			continue
		}
		sawV1 = true
		for _, c := range strings.Split(f[1], ",") {
			if want[c] {
				v1 = append(v1, f[1])
				break
			}
		}
	}
	sort.Strings(v1)
	return v1, v2only && !sawV1
}
