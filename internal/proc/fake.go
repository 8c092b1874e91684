package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// WriteFake adds p to a fake /proc tree at root (for unit tests of the
// packages that read processes): its stat, cmdline and status files, and
// an exe link to exe when it is not empty. RSS is in pages, as in stat.
func WriteFake(root string, p Process, exe string) error {
	dir := filepath.Join(root, strconv.Itoa(p.PID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	state := p.State
	if state == 0 {
		state = 'S'
	}
	name := "proc"
	if len(p.Argv) > 0 {
		name = filepath.Base(p.Argv[0])
	}
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice threads
	// itrealvalue starttime vsize rss
	stat := fmt.Sprintf("%d (%s) %c %d 0 0 0 0 0 0 0 0 0 %d 0 0 0 20 0 1 0 %d %d %d 0\n",
		p.PID, name, state, p.PPID, p.Ticks, p.StartTicks, p.VSZ, p.RSS)
	var cmd string
	if len(p.Argv) > 0 {
		cmd = strings.Join(p.Argv, "\x00") + "\x00"
	}
	status := fmt.Sprintf("Name:\t%s\nState:\t%c\nUid:\t%d\t%d\t%d\t%d\n", name, state, p.UID, p.UID, p.UID, p.UID)
	for f, content := range map[string]string{"stat": stat, "cmdline": cmd, "status": status} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if exe != "" {
		os.Remove(filepath.Join(dir, "exe"))
		return os.Symlink(exe, filepath.Join(dir, "exe"))
	}
	return nil
}

// WriteFakeNetNS gives process pid of a fake /proc tree at root the
// network namespace ns (as /proc/PID/ns/net names it).
func WriteFakeNetNS(root string, pid int, ns string) error {
	dir := filepath.Join(root, strconv.Itoa(pid), "ns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir, "net"))
	return os.Symlink(ns, filepath.Join(dir, "net"))
}
