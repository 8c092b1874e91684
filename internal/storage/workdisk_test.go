package storage

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func TestCreateWorkDisk(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "work-seed.ext4")
	makeImage(t, seed, 16<<20, map[int64][]byte{4096: pattern(64<<10, 4)})
	disk := filepath.Join(dir, "vm", "work.ext4")
	mkdirFor(t, disk)

	if err := m.CreateWorkDisk(ctx, seed, disk, 64<<20, testOwner(t)); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	if got := fileSize(t, disk); got != 64<<20 {
		t.Errorf("work disk is %d bytes, want %d", got, 64<<20)
	}
	if !sameContent(t, seed, disk, 16<<20) {
		t.Error("work disk does not start with the seed")
	}
	tmp := tempPath(disk)
	as := "[as " + testOwner(t).String() + ", fd 3=" + tmp + "] "
	if got, want := o.Runner().Calls(), []string{as + "e2fsck -fy /proc/self/fd/3", as + "resize2fs /proc/self/fd/3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
	checkOwned(t, disk, testOwner(t))
	noFile(t, tmp)
	if got, _ := AllocatedBytes(disk); got > 1<<20 {
		t.Errorf("work disk allocates %d bytes, want it sparse", got)
	}

	if err := m.CreateWorkDisk(ctx, seed, disk, 64<<20, testOwner(t)); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("CreateWorkDisk over an existing disk: %v, want ECONFLICT", err)
	}
}

func TestCreateWorkDiskErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		seed string // "" no seed, "missing", or a seed of 16 MiB
		size int64
		fail string
		code string
	}{
		{name: "smaller than seed", seed: "16M", size: 8 << 20, code: model.EINVALID},
		{name: "zero", seed: "16M", size: 0, code: model.EINVALID},
		{name: "over max", seed: "16M", size: model.MaxDiskBytes + 1, code: model.EINVALID},
		{name: "missing seed", seed: "missing", size: 64 << 20, code: model.ENOTFOUND},
		{name: "resize fails", seed: "16M", size: 64 << 20, fail: "resize2fs", code: model.EINTERNAL},
		{name: "mkfs fails", seed: "", size: 64 << 20, fail: "mkfs.ext4", code: model.EINTERNAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, o := newFake(t)
			dir := t.TempDir()
			seed := ""
			switch tc.seed {
			case "missing":
				seed = filepath.Join(dir, "nope.ext4")
			case "16M":
				seed = filepath.Join(dir, "seed.ext4")
				makeImage(t, seed, 16<<20, nil)
			}
			if tc.fail != "" {
				o.Fail[tc.fail] = "injected failure"
			}
			disk := filepath.Join(dir, "work.ext4")
			err := m.CreateWorkDisk(ctx, seed, disk, tc.size, testOwner(t))
			if model.ErrorCode(err) != tc.code {
				t.Errorf("CreateWorkDisk: %v, want %s", err, tc.code)
			}
			noFile(t, disk)
			noFile(t, tempPath(disk))
		})
	}
}

func TestCreateWorkDiskWithoutSeed(t *testing.T) {
	m, o := newFake(t)
	disk := filepath.Join(t.TempDir(), "work.ext4")
	if err := m.CreateWorkDisk(context.Background(), "", disk, 32<<20, testOwner(t)); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	if got, want := o.Runner().Calls(), []string{"mkfs.ext4 -q -F -L work " + tempPath(disk)}; !reflect.DeepEqual(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
	if got := fileSize(t, disk); got != 32<<20 {
		t.Errorf("work disk is %d bytes, want %d", got, 32<<20)
	}
	checkOwned(t, disk, testOwner(t))
}

func TestGrowWorkDisk(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	disk := filepath.Join(t.TempDir(), "work.ext4")
	makeImage(t, disk, 64<<20, map[int64][]byte{8192: pattern(4096, 5)})
	as := "[as " + testOwner(t).String() + ", fd 3=" + disk + "] "

	for _, tc := range []struct {
		name      string
		size      int64
		code      string
		wantSize  int64
		wantCalls []string
	}{
		{name: "shrink", size: 32 << 20, code: model.EINVALID, wantSize: 64 << 20},
		{name: "same", size: 64 << 20, wantSize: 64 << 20},
		{name: "grow", size: 128 << 20, wantSize: 128 << 20, wantCalls: []string{as + "e2fsck -fy /proc/self/fd/3", as + "resize2fs /proc/self/fd/3"}},
		{name: "over max", size: model.MaxDiskBytes + 1, code: model.EINVALID, wantSize: 128 << 20},
	} {
		o.Runner().Reset()
		err := m.GrowWorkDisk(ctx, disk, tc.size, testOwner(t))
		if model.ErrorCode(err) != tc.code {
			t.Errorf("%s: GrowWorkDisk: %v, want code %q", tc.name, err, tc.code)
		}
		if got := fileSize(t, disk); got != tc.wantSize {
			t.Errorf("%s: disk is %d bytes, want %d", tc.name, got, tc.wantSize)
		}
		if got := o.Runner().Calls(); !reflect.DeepEqual(got, tc.wantCalls) {
			t.Errorf("%s: ran %q, want %q", tc.name, got, tc.wantCalls)
		}
	}
	if err := m.GrowWorkDisk(ctx, disk+".missing", 1<<30, testOwner(t)); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("GrowWorkDisk of a missing disk: %v, want ENOTFOUND", err)
	}

	// A filesystem that fails its check keeps its size.
	bad := filepath.Join(t.TempDir(), "bad.ext4")
	if err := os.WriteFile(bad, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.GrowWorkDisk(ctx, bad, 2<<20, testOwner(t)); err == nil {
		t.Error("GrowWorkDisk of a non-ext4 file succeeded")
	}
	if got := fileSize(t, bad); got != 1<<20 {
		t.Errorf("failed grow changed the size to %d", got)
	}
}

func TestWorkDiskRefusesRoot(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.ext4")
	makeImage(t, seed, 16<<20, nil)
	disk := filepath.Join(dir, "work.ext4")
	root := hostexec.Credential{}
	if err := m.CreateWorkDisk(ctx, seed, disk, 64<<20, root); err == nil || !strings.Contains(err.Error(), "as root") {
		t.Errorf("CreateWorkDisk as root: %v, want a refusal", err)
	}
	noFile(t, disk)
	makeImage(t, disk, 16<<20, nil)
	if err := m.GrowWorkDisk(ctx, disk, 64<<20, root); err == nil || !strings.Contains(err.Error(), "as root") {
		t.Errorf("GrowWorkDisk as root: %v, want a refusal", err)
	}
	if got := fileSize(t, disk); got != 16<<20 {
		t.Errorf("refused grow changed the size to %d", got)
	}
	if got := o.Runner().Calls(); len(got) != 0 {
		t.Errorf("ran %q", got)
	}
}
