package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
)

func TestDetectStrategy(t *testing.T) {
	const (
		withSnapshot    = "snapshot-origin  v1.9.0\nsnapshot         v1.16.0\nlinear           v1.4.0\n"
		withoutSnapshot = "snapshot-origin  v1.9.0\nlinear           v1.4.0\n"
	)
	for _, tc := range []struct {
		name      string
		control   bool   // /dev/mapper/control exists
		targets   string // dmsetup targets output; "fail" fails
		module    bool   // modules.dep lists dm-snapshot
		reflink   bool   // FICLONE works in the directory
		force     Strategy
		want      Strategy
		wantWhy   string
		wantCalls int
	}{
		{name: "dm", control: true, targets: withSnapshot, want: StrategyDMSnapshot, wantWhy: "has the snapshot target", wantCalls: 1},
		{name: "dm module", control: true, targets: withoutSnapshot, module: true, want: StrategyDMSnapshot, wantWhy: "loads on first use", wantCalls: 1},
		{name: "dm without snapshot, reflink", control: true, targets: withoutSnapshot, reflink: true, want: StrategyReflink, wantWhy: "lacks the snapshot target", wantCalls: 1},
		{name: "dmsetup fails", control: true, targets: "fail", want: StrategyCopy, wantWhy: "device-mapper unusable", wantCalls: 1},
		{name: "no dm, reflink", reflink: true, want: StrategyReflink, wantWhy: "supports reflink"},
		{name: "no dm, no reflink", want: StrategyCopy, wantWhy: "does not support reflink"},
		{name: "forced", force: StrategyCopy, reflink: true, want: StrategyCopy, wantWhy: "forced by configuration (detection would pick reflink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fake := &hostexec.Fake{Handler: func(argv []string, _ string) (string, error) {
				if strings.Join(argv, " ") != "dmsetup targets" {
					return "", hostexec.ErrUnexpected
				}
				if tc.targets == "fail" {
					return "/dev/mapper/control: open failed: No such device", errors.New("exit status 1")
				}
				return tc.targets, nil
			}}
			m := New(fake, testLogger(t), Options{Strategy: tc.force})
			m.dmControl = filepath.Join(root, "control")
			if tc.control {
				if err := os.WriteFile(m.dmControl, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			m.modulesDir = filepath.Join(root, "modules")
			m.release = func() string { return "6.1.0-test" }
			dep := "kernel/drivers/md/dm-mod.ko.xz:\n"
			if tc.module {
				dep += "kernel/drivers/md/dm-snapshot.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz\n"
			}
			if err := os.MkdirAll(filepath.Join(m.modulesDir, "6.1.0-test"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(m.modulesDir, "6.1.0-test", "modules.dep"), []byte(dep), 0o644); err != nil {
				t.Fatal(err)
			}
			cloned := 0
			m.clone = func(dst, src *os.File) error {
				cloned++
				if filepath.Dir(dst.Name()) != filepath.Join(root, "state") || filepath.Dir(src.Name()) != filepath.Join(root, "state") {
					t.Errorf("probe cloned %s to %s, outside the state directory", src.Name(), dst.Name())
				}
				if tc.reflink {
					return nil
				}
				return unix.EOPNOTSUPP
			}
			state := filepath.Join(root, "state")
			if err := os.Mkdir(state, 0o755); err != nil {
				t.Fatal(err)
			}

			got, why := m.DetectStrategy(context.Background(), state)
			if got != tc.want || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("DetectStrategy = %s (%s), want %s (…%s…)", got, why, tc.want, tc.wantWhy)
			}
			if n := len(fake.Calls()); n != tc.wantCalls {
				t.Errorf("ran %q, want %d commands", fake.Calls(), tc.wantCalls)
			}
			if u := fake.Unexpected(); len(u) > 0 {
				t.Errorf("unexpected commands %q", u)
			}
			if entries, _ := os.ReadDir(state); len(entries) != 0 {
				t.Errorf("probe left %d files in the state directory", len(entries))
			}
		})
	}
}

// TestProbeReflinkHere runs the real FICLONE probe on the test's temporary
// directory; filesystems known to lack reflink must report so.
func TestProbeReflinkHere(t *testing.T) {
	dir := t.TempDir()
	m := New(nil, testLogger(t), Options{})
	ok, why := m.probeReflink(dir)
	t.Logf("reflink in %s: %v (%s)", dir, ok, why)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC, unix.TMPFS_MAGIC:
		if ok {
			t.Errorf("probe says %s (ext4 or tmpfs) supports reflink", dir)
		}
	case unix.BTRFS_SUPER_MAGIC:
		if !ok {
			t.Errorf("probe says %s (btrfs) lacks reflink: %s", dir, why)
		}
	}
	if _, why := m.probeReflink(filepath.Join(dir, "missing")); !strings.Contains(why, "cannot probe") {
		t.Errorf("probe of a missing directory says %q", why)
	}
}
