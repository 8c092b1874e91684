package storage

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

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

	if err := m.CreateWorkDisk(ctx, seed, disk, 64<<20); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	if got := fileSize(t, disk); got != 64<<20 {
		t.Errorf("work disk is %d bytes, want %d", got, 64<<20)
	}
	if !sameContent(t, seed, disk, 16<<20) {
		t.Error("work disk does not start with the seed")
	}
	tmp := tempPath(disk)
	if got, want := o.Runner().Calls(), []string{"e2fsck -fy " + tmp, "resize2fs " + tmp}; !reflect.DeepEqual(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
	noFile(t, tmp)
	if got, _ := AllocatedBytes(disk); got > 1<<20 {
		t.Errorf("work disk allocates %d bytes, want it sparse", got)
	}

	if err := m.CreateWorkDisk(ctx, seed, disk, 64<<20); model.ErrorCode(err) != model.ECONFLICT {
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
			err := m.CreateWorkDisk(ctx, seed, disk, tc.size)
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
	if err := m.CreateWorkDisk(context.Background(), "", disk, 32<<20); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	if got, want := o.Runner().Calls(), []string{"mkfs.ext4 -q -F -L work " + tempPath(disk)}; !reflect.DeepEqual(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
	if got := fileSize(t, disk); got != 32<<20 {
		t.Errorf("work disk is %d bytes, want %d", got, 32<<20)
	}
}

func TestGrowWorkDisk(t *testing.T) {
	ctx := context.Background()
	m, o := newFake(t)
	disk := filepath.Join(t.TempDir(), "work.ext4")
	makeImage(t, disk, 64<<20, map[int64][]byte{8192: pattern(4096, 5)})

	for _, tc := range []struct {
		name      string
		size      int64
		code      string
		wantSize  int64
		wantCalls []string
	}{
		{name: "shrink", size: 32 << 20, code: model.EINVALID, wantSize: 64 << 20},
		{name: "same", size: 64 << 20, wantSize: 64 << 20},
		{name: "grow", size: 128 << 20, wantSize: 128 << 20, wantCalls: []string{"e2fsck -fy " + disk, "resize2fs " + disk}},
		{name: "over max", size: model.MaxDiskBytes + 1, code: model.EINVALID, wantSize: 128 << 20},
	} {
		o.Runner().Reset()
		err := m.GrowWorkDisk(ctx, disk, tc.size)
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
	if err := m.GrowWorkDisk(ctx, disk+".missing", 1<<30); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("GrowWorkDisk of a missing disk: %v, want ENOTFOUND", err)
	}

	// A filesystem that fails its check keeps its size.
	bad := filepath.Join(t.TempDir(), "bad.ext4")
	if err := os.WriteFile(bad, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.GrowWorkDisk(ctx, bad, 2<<20); err == nil {
		t.Error("GrowWorkDisk of a non-ext4 file succeeded")
	}
	if got := fileSize(t, bad); got != 1<<20 {
		t.Errorf("failed grow changed the size to %d", got)
	}
}
