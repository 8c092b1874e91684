package store

import (
	"context"
	"fmt"
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
	got, err := db.GetImage(ctx, "debian")
	if err != nil || got.ID != img.ID || got.SeededSSHPublicKeyFingerprint != "SHA256:abc" || !got.CreatedAt.Equal(img.CreatedAt) {
		t.Errorf("GetImage = %+v, %v", got, err)
	}
	if got, err := db.GetImage(ctx, img.ID); err != nil || got.Name != "debian" {
		t.Errorf("GetImage by id = %+v, %v", got, err)
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
