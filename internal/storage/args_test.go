package storage

import (
	"reflect"
	"strings"
	"testing"

	"banger/internal/model"
)

func TestArgv(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []string
		want string
	}{
		{"attach ro", attachLoopArgs("/v/rootfs.ext4", true), "--find --show --read-only /v/rootfs.ext4"},
		{"attach rw", attachLoopArgs("/v/system.cow", false), "--find --show /v/system.cow"},
		{"detach", detachLoopArgs("/dev/loop3"), "-d /dev/loop3"},
		{"list", listLoopsArgs(""), "-l -J -O NAME,BACK-FILE,RO,MAJ:MIN"},
		{"list file", listLoopsArgs("/v/a b.cow"), "-l -J -O NAME,BACK-FILE,RO,MAJ:MIN -j /v/a b.cow"},
		{"dm create", dmCreateArgs("banger-x", "0 8 snapshot /dev/loop0 /dev/loop1 P 8"), "create banger-x --table 0 8 snapshot /dev/loop0 /dev/loop1 P 8"},
		{"dm remove", dmRemoveArgs("banger-x"), "remove banger-x"},
		{"dm table", dmTableArgs("banger-x"), "table banger-x"},
		{"dm mknodes", dmMknodesArgs("banger-x"), "mknodes banger-x"},
		{"dm ls", dmListArgs(), "ls"},
		{"dm targets", dmTargetsArgs(), "targets"},
		{"getsz", getszArgs("/dev/loop0"), "--getsz /dev/loop0"},
		{"e2fsck", e2fsckArgs("/v/work.ext4"), "-fy /v/work.ext4"},
		{"resize2fs", resize2fsArgs("/v/work.ext4"), "/v/work.ext4"},
		{"mkfs", mkfsArgs("/v/work.ext4"), "-q -F -L work /v/work.ext4"},
	} {
		if got := strings.Join(tc.got, " "); got != tc.want {
			t.Errorf("%s: argv %q, want %q", tc.name, got, tc.want)
		}
	}
	// A path with spaces stays one argument.
	if got := listLoopsArgs("/v/a b.cow"); got[len(got)-1] != "/v/a b.cow" {
		t.Errorf("list file: last argument %q", got[len(got)-1])
	}
}

func TestSnapshotTable(t *testing.T) {
	got := snapshotTable(2097152, "/dev/loop0", "/dev/loop1")
	if want := "0 2097152 snapshot /dev/loop0 /dev/loop1 P 8"; got != want {
		t.Errorf("snapshotTable = %q, want %q", got, want)
	}
}

func TestDMName(t *testing.T) {
	if got := DMName(testVMID); got != testDM {
		t.Errorf("DMName = %q, want %q", got, testDM)
	}
}

func TestParseLoops(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want []LoopDevice
	}{
		{"none, new", "{\n   \"loopdevices\": [\n\n   ]\n}\n", []LoopDevice{}},
		{"none, old", "", nil},
		{"2.38", `{"loopdevices": [
			{"name": "/dev/loop0", "back-file": "/var/lib/banger/images/a/rootfs.ext4", "ro": true, "maj:min": "  7:0  "},
			{"name": "/dev/loop1", "back-file": "/var/lib/banger/vms/x y/system.cow (deleted)", "ro": false, "maj:min": "7:1"}]}`,
			[]LoopDevice{
				{Dev: "/dev/loop0", BackFile: "/var/lib/banger/images/a/rootfs.ext4", ReadOnly: true, MajMin: "7:0"},
				{Dev: "/dev/loop1", BackFile: "/var/lib/banger/vms/x y/system.cow", Deleted: true, MajMin: "7:1"},
			}},
		{"old strings", `{"loopdevices": [{"name": "/dev/loop2", "back-file": "/a", "ro": "1", "maj:min": "7:2"}, {"name": "/dev/loop3", "back-file": "/b", "ro": "0", "maj:min": "7:3"}]}`,
			[]LoopDevice{
				{Dev: "/dev/loop2", BackFile: "/a", ReadOnly: true, MajMin: "7:2"},
				{Dev: "/dev/loop3", BackFile: "/b", MajMin: "7:3"},
			}},
	} {
		got, err := parseLoops([]byte(tc.out))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: parseLoops = %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if _, err := parseLoops([]byte("/dev/loop0: [2049]:12 (/a)")); err == nil {
		t.Error("parseLoops accepted non-JSON output")
	}
}

func TestParseDMList(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want []string
	}{
		{"No devices found\n", nil},
		{"", nil},
		{"banger-abc\t(253:0)\nvg0-root\t(253, 1)\n", []string{"banger-abc", "vg0-root"}},
	} {
		if got := parseDMList([]byte(tc.out)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseDMList(%q) = %q, want %q", tc.out, got, tc.want)
		}
	}
}

func TestParseTableDeps(t *testing.T) {
	for _, tc := range []struct {
		table string
		want  []string
	}{
		{"0 2097152 snapshot 7:0 7:1 P 8", []string{"7:0", "7:1"}},
		{"0 100 linear 8:1 0", nil},
		{"", nil},
	} {
		if got := parseTableDeps(tc.table); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseTableDeps(%q) = %q, want %q", tc.table, got, tc.want)
		}
	}
}

func TestParseTargets(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want bool
	}{
		{"snapshot-merge   v1.5.0\nsnapshot         v1.16.0\nlinear v1.4.0\n", true},
		{"snapshot-origin  v1.9.0\nsnapshot-merge v1.5.0\nlinear v1.4.0\n", false},
		{"", false},
	} {
		if got := parseTargets([]byte(tc.out)); got != tc.want {
			t.Errorf("parseTargets(%q) = %v, want %v", tc.out, got, tc.want)
		}
	}
}

func TestParseStrategy(t *testing.T) {
	for _, s := range []string{"", "dm-snapshot", "reflink", "copy"} {
		if got, err := ParseStrategy(s); err != nil || string(got) != s {
			t.Errorf("ParseStrategy(%q) = %q, %v", s, got, err)
		}
	}
	if _, err := ParseStrategy("overlayfs"); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("ParseStrategy(overlayfs): %v, want EINVALID", err)
	}
}

func TestCOWSize(t *testing.T) {
	for _, tc := range []struct {
		requested, origin, want int64
	}{
		{8 << 30, 2 << 30, 8 << 30},
		// Too small for a full rewrite of the origin: grown.
		{1 << 20, 128 << 20, 128<<20 + 1<<20 + 1<<20},
		{1<<20 + 1, 0, 1<<20 + 4096}, // rounded up to whole chunks
	} {
		if got := cowSize(tc.requested, tc.origin); got != tc.want {
			t.Errorf("cowSize(%d, %d) = %d, want %d", tc.requested, tc.origin, got, tc.want)
		}
	}
}

func TestUnreferencedLoops(t *testing.T) {
	loops := []LoopDevice{{Dev: "/dev/loop0", MajMin: "7:0"}, {Dev: "/dev/loop1", MajMin: "7:1"}, {Dev: "/dev/loop2", MajMin: "7:2"}}
	dms := []DMDevice{{Name: "banger-a", Deps: []string{"7:0", "7:2"}}}
	got := UnreferencedLoops(loops, dms)
	if want := []LoopDevice{{Dev: "/dev/loop1", MajMin: "7:1"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("UnreferencedLoops = %+v, want %+v", got, want)
	}
	if got := UnreferencedLoops(loops, nil); len(got) != 3 {
		t.Errorf("UnreferencedLoops with no dm devices = %+v, want all", got)
	}
}
