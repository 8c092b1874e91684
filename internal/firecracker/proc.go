package firecracker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"banger/internal/model"
)

// FindPID returns the PID of the live VMM serving the API socket apiSock,
// found by its command line: argv must hold "--api-sock" followed by
// exactly apiSock (or "--api-sock=apiSock"). A process whose arguments
// merely contain the path, such as banger-vmm-qemu's QEMU child with its
// QMP socket next to the API socket, does not match. Zombies count as
// dead. No match is a model.ENOTFOUND error.
func FindPID(apiSock string) (int, error) {
	return findPID("/proc", apiSock)
}

// Serves reports whether the live process pid is the VMM serving apiSock:
// a cheap check of a remembered PID (one /proc read instead of a scan),
// safe against PID reuse because the argv must name the socket.
func Serves(pid int, apiSock string) bool {
	if pid <= 0 {
		return false
	}
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !servesSocket(raw, apiSock) {
		return false
	}
	return procState("/proc", pid) != 'Z'
}

// findPID is FindPID over the proc file system at procRoot.
func findPID(procRoot, apiSock string) (int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, fmt.Errorf("find vmm pid: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil || !servesSocket(raw, apiSock) {
			continue // gone meanwhile, or not ours
		}
		if procState(procRoot, pid) == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	switch len(pids) {
	case 0:
		return 0, model.Errorf(model.ENOTFOUND, "no live vmm serves %s", apiSock)
	case 1:
		return pids[0], nil
	default:
		sort.Ints(pids)
		return 0, model.Errorf(model.ECONFLICT, "several processes claim vmm api socket %s: %v", apiSock, pids)
	}
}

// servesSocket reports whether the NUL-separated argv raw names apiSock
// as its --api-sock.
func servesSocket(raw []byte, apiSock string) bool {
	argv := bytes.Split(bytes.TrimRight(raw, "\x00"), []byte{0})
	for i, a := range argv {
		s := string(a)
		if s == "--api-sock" && i+1 < len(argv) && string(argv[i+1]) == apiSock {
			return true
		}
		if v, ok := strings.CutPrefix(s, "--api-sock="); ok && v == apiSock {
			return true
		}
	}
	return false
}

// procState returns the state letter of /proc/PID/stat (R, S, D, Z, ...),
// or 0 when the process is gone.
func procState(procRoot string, pid int) byte {
	raw, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// The command name is in parentheses and may contain spaces or
	// parentheses itself; the state follows the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 || i+2 >= len(raw) {
		return 0
	}
	return raw[i+2]
}

// Alive reports whether pid is a running (not zombie) process.
func Alive(pid int) bool {
	return alive("/proc", pid)
}

func alive(procRoot string, pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	st := procState(procRoot, pid)
	return st != 0 && st != 'Z' && st != 'X'
}
