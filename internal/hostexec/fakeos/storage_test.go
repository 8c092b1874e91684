package fakeos

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run runs argv on o and returns its output and whether it failed.
func run(o *OS, argv ...string) (string, error) {
	out, err := o.Runner().Run(context.Background(), argv[0], argv[1:]...)
	return string(out), err
}

func mustRun(t *testing.T, o *OS, argv ...string) string {
	t.Helper()
	out, err := run(o, argv...)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return out
}

func tempFile(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLosetupAttachListDetach(t *testing.T) {
	o := New()
	base := tempFile(t, "base.ext4", 1<<20)
	cow := tempFile(t, "vm.cow", 2<<20)

	if got := mustRun(t, o, "losetup", "--find", "--show", "--read-only", base); got != "/dev/loop0\n" {
		t.Errorf("first attach printed %q, want /dev/loop0", got)
	}
	if got := mustRun(t, o, "losetup", "--find", "--show", cow); got != "/dev/loop1\n" {
		t.Errorf("second attach printed %q, want /dev/loop1", got)
	}
	if got, want := o.StorageString(), fmt.Sprintf("loop /dev/loop0 %s ro\nloop /dev/loop1 %s\n", base, cow); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}

	var doc struct {
		Loops []map[string]any `json:"loopdevices"`
	}
	out := mustRun(t, o, "losetup", "-l", "-J", "-O", "NAME,BACK-FILE,RO,MAJ:MIN", "-j", cow)
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse %q: %v", out, err)
	}
	if got := fmt.Sprint(doc.Loops); got != fmt.Sprintf("[map[back-file:%s maj:min:  7:1   name:/dev/loop1 ro:false]]", cow) {
		t.Errorf("losetup -j %s listed %s", cow, got)
	}

	mustRun(t, o, "losetup", "-d", "/dev/loop0")
	// The lowest free number is reused.
	if got := mustRun(t, o, "losetup", "--find", "--show", base); got != "/dev/loop0\n" {
		t.Errorf("attach after detach printed %q, want /dev/loop0", got)
	}
	if _, err := run(o, "losetup", "-d", "/dev/loop7"); err == nil {
		t.Error("detaching an unattached loop succeeded")
	}
	if _, err := run(o, "losetup", "--find", "--show", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("attaching a missing file succeeded")
	}
	if _, err := run(o, "losetup", "-a"); err == nil || len(o.Runner().Unexpected()) != 1 {
		t.Errorf("unknown losetup form: err %v, unexpected %v", err, o.Runner().Unexpected())
	}
}

func TestLosetupListMarksDeletedFiles(t *testing.T) {
	o := New()
	f := tempFile(t, "gone.img", 1<<20)
	mustRun(t, o, "losetup", "--find", "--show", f)
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, o, "losetup", "-l", "-J", "-O", "NAME,BACK-FILE")
	if !strings.Contains(out, f+" (deleted)") {
		t.Errorf("listing %s does not mark the deleted file", out)
	}
}

func TestDmsetupSnapshot(t *testing.T) {
	o := New()
	base := tempFile(t, "base.ext4", 64<<20)
	cow := tempFile(t, "vm.cow", 128<<20)
	mustRun(t, o, "losetup", "--find", "--show", "--read-only", base)
	mustRun(t, o, "losetup", "--find", "--show", cow)
	if got := mustRun(t, o, "blockdev", "--getsz", "/dev/loop0"); got != "131072\n" {
		t.Errorf("blockdev --getsz printed %q, want 131072", got)
	}

	for _, bad := range []string{
		"0 131071 snapshot /dev/loop0 /dev/loop1 P 8", // wrong length
		"0 131072 snapshot /dev/loop0 /dev/loop5 P 8", // cow not attached
		"0 131072 snapshot /dev/loop1 /dev/loop0 P 8", // read-only cow
		"0 131072 snapshot /dev/loop0 /dev/loop1 X 8", // bad persistence
		"0 131072 linear /dev/loop0 0",                // not a snapshot
	} {
		if _, err := run(o, "dmsetup", "create", "banger-x", "--table", bad); err == nil {
			t.Errorf("dmsetup create accepted %q", bad)
		}
	}
	if got := mustRun(t, o, "dmsetup", "ls"); got != "No devices found\n" {
		t.Errorf("ls after failed creates printed %q", got)
	}

	table := "0 131072 snapshot /dev/loop0 /dev/loop1 P 8"
	mustRun(t, o, "dmsetup", "create", "banger-x", "--table", table)
	if _, err := run(o, "dmsetup", "create", "banger-x", "--table", table); err == nil {
		t.Error("creating an existing name succeeded")
	}
	if got := mustRun(t, o, "dmsetup", "table", "banger-x"); got != "0 131072 snapshot 7:0 7:1 P 8\n" {
		t.Errorf("table printed %q", got)
	}
	if got := mustRun(t, o, "dmsetup", "ls", "--target", "snapshot"); got != "banger-x\t(253:0)\n" {
		t.Errorf("ls --target snapshot printed %q", got)
	}
	if got := mustRun(t, o, "dmsetup", "ls", "--target", "linear"); got != "No devices found\n" {
		t.Errorf("ls --target linear printed %q", got)
	}
	mustRun(t, o, "dmsetup", "mknodes", "banger-x")
	if _, err := run(o, "losetup", "-d", "/dev/loop1"); err == nil {
		t.Error("detaching a loop under a dm device succeeded")
	}
	if got, want := o.StorageString(), fmt.Sprintf("loop /dev/loop0 %s ro\nloop /dev/loop1 %s\ndm banger-x %s\n", base, cow, table); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}

	mustRun(t, o, "dmsetup", "remove", "banger-x")
	if _, err := run(o, "dmsetup", "remove", "banger-x"); err == nil {
		t.Error("removing a missing device succeeded")
	}
	if _, err := run(o, "dmsetup", "table", "banger-x"); err == nil {
		t.Error("table of a missing device succeeded")
	}
	mustRun(t, o, "losetup", "-d", "/dev/loop1")
	mustRun(t, o, "losetup", "-d", "/dev/loop0")
	if got := o.StorageString(); got != "" {
		t.Errorf("state after teardown:\n%s", got)
	}
	if got := mustRun(t, o, "dmsetup", "targets"); !strings.Contains(got, "\nsnapshot ") {
		t.Errorf("targets lacks snapshot: %q", got)
	}
}

func TestE2fsprogsNeedExt4(t *testing.T) {
	o := New()
	img := tempFile(t, "disk.img", 1<<20)
	for _, argv := range [][]string{{"e2fsck", "-fy", img}, {"resize2fs", img}} {
		if _, err := run(o, argv...); err == nil {
			t.Errorf("%v on a non-ext4 file succeeded", argv)
		}
	}
	mustRun(t, o, "mkfs.ext4", "-q", "-F", "-L", "work", img)
	mustRun(t, o, "e2fsck", "-fy", img)
	mustRun(t, o, "resize2fs", img)
	if _, err := run(o, "e2fsck", "-fy", img+".missing"); err == nil {
		t.Error("e2fsck of a missing file succeeded")
	}
}
