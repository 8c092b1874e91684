package store

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"banger/internal/model"
)

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "banger.db")
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func testImage(name string) model.Image {
	id, _ := model.NewID()
	now := model.Now()
	return model.Image{ID: id, Name: name, RootfsPath: "/x/rootfs.ext4", KernelPath: "/x/vmlinux", CreatedAt: now, UpdatedAt: now}
}

func testVM(name, imageID, ip string) model.VMRecord {
	id, _ := model.NewID()
	now := model.Now()
	return model.VMRecord{
		ID: id, Name: name, ImageID: imageID, State: model.VMStateCreated, OwnerUID: 1000,
		CreatedAt: now, UpdatedAt: now, LastTouchedAt: now,
		Spec:    model.VMSpec{VCPUCount: 2, MemoryMiB: 2048, SystemOverlaySizeByte: 8 << 30, WorkDiskSizeBytes: 8 << 30},
		Runtime: model.VMRuntime{GuestIP: ip, VMDir: "/var/lib/banger/vms/" + id, TapDevice: "bgtap0"},
	}
}

func TestMigrationsFromEmpty(t *testing.T) {
	db, path := openTest(t)
	v, err := db.SchemaVersion(context.Background())
	if err != nil || v < 1 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	db.Close()
	// Reopening applies nothing twice.
	db2, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	v2, _ := db2.SchemaVersion(context.Background())
	if v2 != v {
		t.Errorf("version changed on reopen: %d -> %d", v, v2)
	}
}

func TestImageCRUD(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	img := testImage("debian")
	img.SeededSSHPublicKeyFingerprint = "SHA256:abc"
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateImage(ctx, testImage("debian")); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("duplicate name: %v", err)
	}
	// Names are per owner: another uid may use the same one.
	theirs := testImage("debian")
	theirs.OwnerUID = 1000
	if err := db.CreateImage(ctx, theirs); err != nil {
		t.Errorf("same name, other owner: %v", err)
	}
	named, err := db.ImagesNamed(ctx, "debian")
	if err != nil || len(named) != 2 || named[0].ID != img.ID || named[1].ID != theirs.ID {
		t.Errorf("ImagesNamed = %+v, %v", named, err)
	}
	if named, err := db.ImagesNamed(ctx, img.ID); err != nil || len(named) != 1 || named[0].Name != "debian" {
		t.Errorf("ImagesNamed(id) = %+v, %v", named, err)
	}
	db.DeleteImage(ctx, theirs.ID)
	got, err := db.GetImage(ctx, img.ID)
	if err != nil || got.Name != "debian" || got.SeededSSHPublicKeyFingerprint != "SHA256:abc" || !got.CreatedAt.Equal(img.CreatedAt) {
		t.Errorf("GetImage = %+v, %v", got, err)
	}
	// GetImage takes IDs only (names are resolved per caller above it).
	if _, err := db.GetImage(ctx, "debian"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("GetImage by name: %v", err)
	}
	if _, err := db.GetImage(ctx, "nope"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("missing image: %v", err)
	}
	img.BuildSize = "2G"
	if err := db.UpdateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	list, _ := db.ListImages(ctx)
	if len(list) != 1 || list[0].BuildSize != "2G" {
		t.Errorf("list %+v", list)
	}
	if err := db.DeleteImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteImage(ctx, img.ID); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("second delete: %v", err)
	}
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	db, path := openTest(t)
	img := testImage("debian")
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	vm := testVM("dev", img.ID, "172.16.0.2")
	vm.Stats.MetricsRaw = map[string]any{"utc_timestamp_ms": float64(1)}
	if err := db.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateVM(ctx, testVM("dev", img.ID, "172.16.0.3")); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("duplicate name: %v", err)
	}
	if err := db.CreateVM(ctx, testVM("other", img.ID, "172.16.0.2")); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("duplicate ip: %v", err)
	}
	if err := db.CreateVM(ctx, testVM("orphan", "no-such-image", "172.16.0.9")); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("unknown image: %v", err)
	}
	if err := db.DeleteImage(ctx, img.ID); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("delete used image: %v", err)
	}
	names, _ := db.VMsUsingImage(ctx, img.ID)
	if len(names) != 1 || names[0] != "dev" {
		t.Errorf("VMsUsingImage %v", names)
	}

	vm.State = model.VMStateRunning
	vm.Runtime.LastError = "boom"
	if err := db.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := db.TouchVM(ctx, vm.ID, vm.LastTouchedAt.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Everything survives a reopen.
	db2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	got, err := db2.GetVM(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.VMStateRunning || got.Runtime.State != model.VMStateRunning || got.Runtime.LastError != "boom" || got.Runtime.TapDevice != "bgtap0" || got.OwnerUID != 1000 {
		t.Errorf("got %+v", got)
	}
	if !reflect.DeepEqual(got.Spec, vm.Spec) || got.Stats.MetricsRaw["utc_timestamp_ms"] != float64(1) {
		t.Errorf("spec/stats %+v %+v", got.Spec, got.Stats)
	}
	if !got.LastTouchedAt.Equal(vm.LastTouchedAt.Add(time.Minute)) {
		t.Errorf("touched %v", got.LastTouchedAt)
	}
	ips, _ := db2.GuestIPs(ctx)
	if len(ips) != 1 || ips[0] != "172.16.0.2" {
		t.Errorf("ips %v", ips)
	}
	if err := db2.DeleteVM(ctx, got.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db2.GetVM(ctx, "dev"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("after delete: %v", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	img := testImage("debian")
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- db.CreateVM(ctx, testVM(fmt.Sprintf("vm%d", i), img.ID, fmt.Sprintf("172.16.0.%d", i+2)))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	list, _ := db.ListVMs(ctx)
	if len(list) != 20 {
		t.Errorf("got %d vms", len(list))
	}
}

// TestImageNamesMigration opens a database made by the schema before
// names were per owner, with a VM on an image, and checks the migration
// keeps every row and the foreign key.
func TestImageNamesMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for _, v := range []int{1, 2} {
		names, _ := fs.Glob(migrationFS, fmt.Sprintf("migrations/%04d_*.sql", v))
		body, _ := migrationFS.ReadFile(names[0])
		if _, err := raw.Exec(string(body)); err != nil {
			t.Fatal(err)
		}
		raw.Exec(`INSERT INTO schema_migrations VALUES (?, 'then')`, v)
	}
	if _, err := raw.Exec(`INSERT INTO images (id, name, owner_uid, rootfs_path, kernel_path, created_at, updated_at) VALUES ('img1', 'default', 0, '/r', '/k', 't', 't')`); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`INSERT INTO vms (id, name, image_id, owner_uid, state, guest_ip, created_at, updated_at, last_touched_at, spec_json, runtime_json) VALUES ('vm1', 'dev', 'img1', 1000, 'stopped', '172.16.0.2', 't', 't', 't', '{}', '{}')`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, _ := db.SchemaVersion(ctx); v < 3 {
		t.Fatalf("schema version %d", v)
	}
	img, err := db.GetImage(ctx, "img1")
	if err != nil || img.Name != "default" || img.RootfsPath != "/r" {
		t.Fatalf("image after migration: %+v %v", img, err)
	}
	if vm, err := db.GetVM(ctx, "dev"); err != nil || vm.ImageID != "img1" {
		t.Fatalf("vm after migration: %+v %v", vm, err)
	}
	// The VM still holds its image, and a user may now use root's name.
	if err := db.DeleteImage(ctx, "img1"); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("delete of a used image after migration: %v", err)
	}
	mine := testImage("default")
	mine.OwnerUID = 1000
	if err := db.CreateImage(ctx, mine); err != nil {
		t.Errorf("a user's default beside root's: %v", err)
	}
	if err := db.CreateVM(ctx, testVM("orphan", "no-such-image", "172.16.0.9")); model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("foreign keys off after migration: %v", err)
	}
}

// UsageOf adds up exactly what a walk over the owner's decoded rows adds
// up, and nothing of another owner's.
func TestUsageOf(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	img := testImage("debian")
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	if u, err := db.UsageOf(ctx, 1000); err != nil || u != (VMUsage{}) {
		t.Fatalf("empty: %+v %v", u, err)
	}
	states := []model.VMState{model.VMStateCreated, model.VMStateRunning, model.VMStateCreated, model.VMStateStopped}
	var want VMUsage
	for i, st := range states {
		vm := testVM(fmt.Sprintf("v%d", i), img.ID, fmt.Sprintf("172.16.0.%d", i+2))
		vm.State = st
		vm.Spec.WorkDiskSizeBytes = int64(i+1) << 30
		if i == 3 {
			vm.OwnerUID = 1001
		} else {
			want.VMs++
			if st == model.VMStateCreated {
				want.Unstarted++
			}
			want.DiskBytes += vm.Spec.SystemOverlaySizeByte + vm.Spec.WorkDiskSizeBytes
		}
		if err := db.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if u, err := db.UsageOf(ctx, 1000); err != nil || u != want {
		t.Errorf("UsageOf(1000) = %+v, %v; want %+v", u, err, want)
	}
	if u, err := db.UsageOf(ctx, 1001); err != nil || u.VMs != 1 || u.Unstarted != 0 || u.DiskBytes != 8<<30+4<<30 {
		t.Errorf("UsageOf(1001) = %+v, %v", u, err)
	}
	if n, err := db.CountVMs(ctx); err != nil || n != 4 {
		t.Errorf("CountVMs = %d, %v", n, err)
	}
}
