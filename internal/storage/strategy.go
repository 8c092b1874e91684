package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DetectStrategy returns the overlay strategy to use for VM files under
// dir, and a sentence saying why, for `banger doctor` and `vm inspect`.
// dm-snapshot is chosen when device-mapper works and has (or can load)
// the snapshot target; else reflink when dir's filesystem clones files
// (probed by cloning a small temporary file in dir); else copy. A
// strategy forced in Options is returned as is, with the detected
// situation in the reason.
func (m *Manager) DetectStrategy(ctx context.Context, dir string) (Strategy, string) {
	dmOK, dmWhy := m.probeDM(ctx)
	var (
		st  Strategy
		why string
	)
	switch {
	case dmOK:
		st, why = StrategyDMSnapshot, dmWhy
	default:
		if ok, rWhy := m.probeReflink(dir); ok {
			st, why = StrategyReflink, dmWhy+"; "+rWhy
		} else {
			st, why = StrategyCopy, dmWhy+"; "+rWhy
		}
	}
	if m.force != "" {
		return m.force, fmt.Sprintf("forced by configuration (detection would pick %s: %s)", st, why)
	}
	return st, why
}

// Forced returns the strategy forced in Options, or "".
func (m *Manager) Forced() Strategy { return m.force }

// probeDM reports whether dm-snapshot can be used, and why.
func (m *Manager) probeDM(ctx context.Context) (bool, string) {
	if !m.exists(m.dmControl) {
		return false, fmt.Sprintf("no device-mapper (%s does not exist)", m.dmControl)
	}
	out, err := m.run.Run(ctx, "dmsetup", dmTargetsArgs()...)
	if err != nil {
		// dmsetup's own explanation spans lines; its first says it.
		msg := err.Error()
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return false, fmt.Sprintf("device-mapper unusable (%s)", msg)
	}
	if parseTargets(out) {
		return true, "device-mapper has the snapshot target"
	}
	if m.snapshotModule() {
		return true, "device-mapper's snapshot target is a module the kernel loads on first use"
	}
	return false, "device-mapper lacks the snapshot target (no dm-snapshot module)"
}

// snapshotModule reports whether the running kernel has a dm-snapshot
// module, which device-mapper loads when a table first names the target.
func (m *Manager) snapshotModule() bool {
	f, err := os.Open(filepath.Join(m.modulesDir, m.release(), "modules.dep"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mod, _, _ := strings.Cut(sc.Text(), ":")
		if strings.HasPrefix(filepath.Base(mod), "dm-snapshot.ko") {
			return true
		}
	}
	return false
}

// probeReflink reports whether files in dir can be cloned, by cloning a
// small temporary file there.
func (m *Manager) probeReflink(dir string) (bool, string) {
	src, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %s (%v)", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %s (%v)", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %s (%v)", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := m.clone(dst, src); err != nil {
		return false, fmt.Sprintf("%s does not support reflink (FICLONE: %v)", dir, err)
	}
	return true, fmt.Sprintf("%s supports reflink (FICLONE)", dir)
}

// kernelRelease returns the running kernel's release, as `uname -r`.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
