package firecracker

import (
	"errors"
	"sort"
	"syscall"

	"banger/internal/model"
	procfs "banger/internal/proc"
)

// FindPID returns the PID of the live VMM serving the API socket apiSock,
// found by its command line: argv must hold "--api-sock" followed by
// exactly apiSock (or "--api-sock=apiSock"). A process whose arguments
// merely contain the path, such as banger-vmm-qemu's QEMU child with its
// QMP socket next to the API socket, does not match. Zombies count as
// dead. No match is a model.ENOTFOUND error, several an ECONFLICT one.
// The daemon recognises its VMMs more strictly (their uid and binary
// too); this is for tools and tests that only have the socket.
func FindPID(apiSock string) (int, error) {
	return findPID(procfs.Host, apiSock)
}

// Serves reports whether the live process pid is the VMM serving apiSock:
// a cheap check of a remembered PID, safe against PID reuse because the
// argv must name the socket.
func Serves(pid int, apiSock string) bool {
	if pid <= 0 {
		return false
	}
	p, err := procfs.Host.Get(pid)
	return err == nil && !p.Dead() && servesSocket(p.Argv, apiSock)
}

// findPID is FindPID over the proc file system r reads.
func findPID(r procfs.Reader, apiSock string) (int, error) {
	procs, err := r.List()
	if err != nil {
		return 0, err
	}
	var pids []int
	for _, p := range procs {
		if !p.Dead() && servesSocket(p.Argv, apiSock) {
			pids = append(pids, p.PID)
		}
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

// servesSocket reports whether argv names apiSock as its --api-sock.
func servesSocket(argv []string, apiSock string) bool {
	v, ok := procfs.FlagValue(argv, "--api-sock")
	return ok && v == apiSock
}

// Alive reports whether pid is a running (not zombie) process.
func Alive(pid int) bool {
	return alive(procfs.Host, pid)
}

func alive(r procfs.Reader, pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	p, err := r.Get(pid)
	return err == nil && !p.Dead()
}
