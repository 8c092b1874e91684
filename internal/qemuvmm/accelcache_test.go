package qemuvmm

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// cacheFixture is a cache in a temporary directory, with a boot id file
// and a stand-in QEMU binary of its own.
type cacheFixture struct {
	c      *AccelCache
	qemu   string
	bootID string
}

func newCacheFixture(t *testing.T) *cacheFixture {
	t.Helper()
	dir := t.TempDir()
	f := &cacheFixture{qemu: filepath.Join(dir, "qemu"), bootID: filepath.Join(dir, "boot_id")}
	os.WriteFile(f.qemu, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	os.WriteFile(f.bootID, []byte("11111111-2222-3333-4444-555555555555\n"), 0o644)
	f.c = &AccelCache{Dir: filepath.Join(dir, "run", "banger-vmm-qemu"), BootIDPath: f.bootID}
	return f
}

func (f *cacheFixture) files(t *testing.T) []string {
	t.Helper()
	entries, _ := os.ReadDir(f.c.Dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestAccelCacheRoundTrip(t *testing.T) {
	f := newCacheFixture(t)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Fatal("empty cache hit")
	}
	choice := AccelChoice{Accel: AccelTCG, Why: "kvm unusable", TSCkHz: 2596128}
	if err := f.c.Store(f.qemu, choice); err != nil {
		t.Fatal(err)
	}
	got, ok := f.c.Load(f.qemu)
	if !ok || got.Accel != AccelTCG || got.TSCkHz != 2596128 || !strings.HasPrefix(got.Why, "kvm unusable") {
		t.Errorf("got %+v %v", got, ok)
	}
	if names := f.files(t); len(names) != 1 || names[0] != "accel-11111111-2222-3333-4444-555555555555.json" {
		t.Errorf("cache dir holds %q, want only this boot's file", names)
	}
	st, _ := os.Stat(filepath.Join(f.c.Dir, f.files(t)[0]))
	if st.Mode().Perm() != 0o644 {
		t.Errorf("cache file mode %v, want 0644 (readable by unprivileged VMMs)", st.Mode())
	}
	// Storing again replaces it.
	if err := f.c.Store(f.qemu, AccelChoice{Accel: AccelKVM, Why: "ran"}); err != nil {
		t.Fatal(err)
	}
	if got, ok := f.c.Load(f.qemu); !ok || got.Accel != AccelKVM {
		t.Errorf("after replacing: got %+v %v", got, ok)
	}
	// A new boot misses, and its store removes the old boot's file.
	os.WriteFile(f.bootID, []byte("99999999-2222-3333-4444-555555555555\n"), 0o644)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Error("another boot's choice was used")
	}
	if err := f.c.Store(f.qemu, choice); err != nil {
		t.Fatal(err)
	}
	if names := f.files(t); len(names) != 1 || !strings.Contains(names[0], "99999999") {
		t.Errorf("cache dir holds %q after a new boot's store", names)
	}
	// Another QEMU binary (or the same one upgraded) misses.
	os.WriteFile(f.qemu, []byte("#!/bin/sh\nexit 2\n"), 0o755)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Error("a changed qemu binary hit the cache")
	}
}

// TestAccelCacheRefusesPlantedFiles checks that a cache file others could
// have written is not believed.
func TestAccelCacheRefusesPlantedFiles(t *testing.T) {
	f := newCacheFixture(t)
	if err := f.c.Store(f.qemu, AccelChoice{Accel: AccelTCG}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.c.Dir, f.files(t)[0])
	os.Chmod(p, 0o666)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Error("a world-writable cache file was used")
	}
	os.Chmod(p, 0o644)
	raw, _ := os.ReadFile(p)
	os.WriteFile(p, []byte(strings.Replace(string(raw), `"tcg"`, `"hvf"`, 1)), 0o644)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Error("an unknown accelerator was used")
	}
	os.Remove(p)
	os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), p)
	if _, ok := f.c.Load(f.qemu); ok {
		t.Error("a symlink was followed")
	}
}

// TestChooseAccelUsesCache checks that auto reads a cached answer without
// probing (the stand-in QEMU would fail) and that explicit choices ignore
// the cache.
func TestChooseAccelUsesCache(t *testing.T) {
	f := newCacheFixture(t)
	f.c.Store(f.qemu, AccelChoice{Accel: AccelKVM, Why: "probe ran"})
	c, err := ChooseAccel(context.Background(), f.qemu, AccelAuto, time.Second, f.c)
	if err != nil || c.Accel != AccelKVM || !strings.Contains(c.Why, "cached") {
		t.Errorf("auto: got %+v, %v; want the cached kvm", c, err)
	}
	c, err = ChooseAccel(context.Background(), f.qemu, AccelTCG, time.Second, f.c)
	if err != nil || c.Accel != AccelTCG {
		t.Errorf("tcg: got %+v, %v", c, err)
	}
}
