// Package proc is banger's one reader of the /proc file system: process
// IDs, command lines, owners, executables, CPU time, memory, parents and
// children. Reconcile, the stats poller, VMM discovery and the test
// harness all read processes through it; unit tests point it at a fake
// tree of files.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Process is one process as /proc shows it.
type Process struct {
	PID  int
	PPID int
	// State is the state letter of /proc/PID/stat: R, S, D, Z, X, ...
	State byte
	// UID is the real uid (the first of /proc/PID/status's Uid line).
	UID int
	// Argv is the command line; empty for kernel threads and zombies.
	Argv []string
	// Ticks is user plus system CPU time, in clock ticks.
	Ticks uint64
	// StartTicks is when the process started, in clock ticks since boot:
	// with the PID it names one process for good (PIDs are reused).
	StartTicks uint64
	// RSS and VSZ are resident and virtual memory, in bytes.
	RSS, VSZ int64
}

// Dead reports whether the process has exited (a zombie or gone).
func (p Process) Dead() bool { return p.State == 'Z' || p.State == 'X' || p.State == 0 }

// Reader reads one /proc tree.
type Reader struct {
	// Root is the proc file system: "/proc" for the host.
	Root string
	// PageSize converts RSS pages to bytes; 0 means the host's.
	PageSize int64
}

// Host is the host's /proc.
var Host = Reader{Root: "/proc"}

func (r Reader) page() int64 {
	if r.PageSize > 0 {
		return r.PageSize
	}
	return int64(os.Getpagesize())
}

// PIDs lists the process IDs in the tree, in order.
func (r Reader) PIDs() ([]int, error) {
	ents, err := os.ReadDir(r.Root)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// Get reads one process. A process that is gone is an fs.ErrNotExist
// error.
func (r Reader) Get(pid int) (Process, error) {
	dir := filepath.Join(r.Root, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Process{}, err
	}
	p, err := parseStat(stat)
	if err != nil {
		return Process{}, fmt.Errorf("process %d: %w", pid, err)
	}
	p.PID = pid
	p.RSS *= r.page()
	if raw, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		p.Argv = splitArgv(raw)
	}
	p.UID = -1
	if st, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		p.UID = parseUID(st)
	}
	return p, nil
}

// Argv reads only a process's command line (cheaper than Get).
func (r Reader) Argv(pid int) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(r.Root, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	return splitArgv(raw), nil
}

// Exe returns the path of a process's executable (the target of
// /proc/PID/exe), which a process cannot fake the way it can its argv.
func (r Reader) Exe(pid int) (string, error) {
	return os.Readlink(filepath.Join(r.Root, strconv.Itoa(pid), "exe"))
}

// NetNS names a process's network namespace (the target of
// /proc/PID/ns/net, "net:[4026531840]"): two processes are in the same
// namespace when the names are equal.
func (r Reader) NetNS(pid int) (string, error) {
	return os.Readlink(filepath.Join(r.Root, strconv.Itoa(pid), "ns", "net"))
}

// List reads every process; ones that exit meanwhile are skipped.
func (r Reader) List() ([]Process, error) {
	pids, err := r.PIDs()
	if err != nil {
		return nil, err
	}
	out := make([]Process, 0, len(pids))
	for _, pid := range pids {
		p, err := r.Get(pid)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errBadStat) {
				continue
			}
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// ListWhere reads the processes whose command line keep accepts. It
// reads only each process's cmdline to decide, so finding a few
// processes among many costs one read per process instead of three.
func (r Reader) ListWhere(keep func(argv []string) bool) ([]Process, error) {
	pids, err := r.PIDs()
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, pid := range pids {
		argv, err := r.Argv(pid)
		if err != nil || !keep(argv) {
			continue
		}
		p, err := r.Get(pid)
		if err != nil {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// Table is a snapshot of every process, indexed for tree walks.
type Table struct {
	Procs    map[int]Process
	Children map[int][]int
}

// Snapshot reads a Table.
func (r Reader) Snapshot() (Table, error) {
	ps, err := r.List()
	if err != nil {
		return Table{}, err
	}
	t := Table{Procs: make(map[int]Process, len(ps)), Children: map[int][]int{}}
	for _, p := range ps {
		t.Procs[p.PID] = p
		t.Children[p.PPID] = append(t.Children[p.PPID], p.PID)
	}
	return t, nil
}

// Tree returns pid and its descendants, pid first.
func (t Table) Tree(pid int) []Process {
	var out []Process
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if e, ok := t.Procs[p]; ok {
			out = append(out, e)
		}
		queue = append(queue, t.Children[p]...)
	}
	return out
}

// Usage sums CPU ticks, RSS and VSZ over pid and its descendants (a
// banger-vmm-qemu VMM runs its guest in a QEMU child).
func (t Table) Usage(pid int) (ticks uint64, rss, vsz int64) {
	for _, p := range t.Tree(pid) {
		ticks += p.Ticks
		rss += p.RSS
		vsz += p.VSZ
	}
	return ticks, rss, vsz
}

// FlagValue returns the value of a "--flag VALUE" or "--flag=VALUE"
// argument in argv, and whether it is there.
func FlagValue(argv []string, flag string) (string, bool) {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1], true
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
	}
	return "", false
}

var errBadStat = errors.New("malformed stat")

// parseStat reads the fields of /proc/PID/stat that banger uses. The
// command name is in parentheses and may itself hold spaces and
// parentheses; the fields follow the last ')'.
func parseStat(raw []byte) (Process, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return Process{}, errBadStat
	}
	f := strings.Fields(string(raw[i+1:]))
	// After the name: state(0) ppid(1) ... utime(11) stime(12) ...
	// starttime(19) vsize(20) rss(21).
	if len(f) <= 21 || len(f[0]) != 1 {
		return Process{}, errBadStat
	}
	var p Process
	p.State = f[0][0]
	p.PPID, _ = strconv.Atoi(f[1])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	p.Ticks = u + s
	p.StartTicks, _ = strconv.ParseUint(f[19], 10, 64)
	p.VSZ, _ = strconv.ParseInt(f[20], 10, 64)
	p.RSS, _ = strconv.ParseInt(f[21], 10, 64)
	return p, nil
}

func splitArgv(raw []byte) []string {
	raw = bytes.TrimRight(raw, "\x00")
	if len(raw) == 0 {
		return nil
	}
	parts := bytes.Split(raw, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

func parseUID(status []byte) int {
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if uid, err := strconv.Atoi(f[0]); err == nil {
					return uid
				}
			}
		}
	}
	return -1
}
