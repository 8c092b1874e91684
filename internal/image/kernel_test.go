package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"banger/internal/hostexec"
	"banger/internal/model"
)

func TestConfigHash(t *testing.T) {
	base := configHash("1", []byte("CONFIG_A=y\n"), []byte("CONFIG_B=y\n"))
	if again := configHash("1", []byte("CONFIG_A=y\n"), []byte("CONFIG_B=y\n")); again != base {
		t.Errorf("same inputs: %s, then %s", base, again)
	}
	changed := map[string]string{
		"recipe":   configHash("2", []byte("CONFIG_A=y\n"), []byte("CONFIG_B=y\n")),
		"config":   configHash("1", []byte("CONFIG_A=m\n"), []byte("CONFIG_B=y\n")),
		"fragment": configHash("1", []byte("CONFIG_A=y\n"), []byte("CONFIG_B=n\n")),
		"boundary": configHash("1", []byte("CONFIG_A=y\nCONFIG_B=y\n"), []byte("")),
	}
	for name, h := range changed {
		if h == base {
			t.Errorf("changing the %s keeps the hash %s", name, h)
		}
	}
	if got := KernelConfigHash(); got != KernelConfigHash() || len(got) != 64 {
		t.Errorf("KernelConfigHash = %q, want a stable sha256 hex", got)
	}
}

// TestKernelConfigHashGolden pins the hash of the embedded configuration:
// when this fails, kernels get a new name and are rebuilt; update the
// value only if that is intended.
func TestKernelConfigHashGolden(t *testing.T) {
	if got, want := KernelConfigHash()[:12], "09b635ccd1df"; got != want {
		t.Errorf("KernelConfigHash()[:12] = %s, want %s", got, want)
	}
}

func TestEmbeddedConfigHasRequiredOptions(t *testing.T) {
	merged := string(kernelBaseConfig) + "\n" + string(kernelFragment)
	if missing := missingKernelOptions(merged); len(missing) > 0 {
		t.Errorf("base config + fragment lack %v", missing)
	}
	if missing := missingKernelOptions(string(kernelBaseConfig)); !reflect.DeepEqual(missing, []string{"CONFIG_SERIO_I8042", "CONFIG_KEYBOARD_ATKBD"}) {
		t.Errorf("base config alone lacks %v, want only the i8042 keyboard the fragment adds", missing)
	}
}

func TestKernelName(t *testing.T) {
	hash := "0123456789abcdef0123"
	tests := []struct {
		version string
		want    string
	}{
		{"6.1.192-1", "vmlinux-6.1.192-1-0123456789ab"},
		{"6.1", "vmlinux-6.1-0123456789ab"},
		{"1:6.12.5-1+deb13u1~bpo", "vmlinux-1_6.12.5-1+deb13u1~bpo-0123456789ab"},
		{"6.1/../x", "vmlinux-6.1_.._x-0123456789ab"},
	}
	for _, tt := range tests {
		if got := kernelName(tt.version, hash); got != tt.want {
			t.Errorf("kernelName(%q) = %q, want %q", tt.version, got, tt.want)
		}
	}
}

func TestKernelArgv(t *testing.T) {
	if got, want := kernelMakeArgv(2), []string{"nice", "-n", "10", "make", "-j2", "vmlinux"}; !reflect.DeepEqual(got, want) {
		t.Errorf("kernelMakeArgv = %q, want %q", got, want)
	}
	want := [][]string{{"scripts/kconfig/merge_config.sh", "-m", ".config", "/b/frag"}, {"make", "olddefconfig"}}
	if got := kernelConfigureArgv("/b/frag"); !reflect.DeepEqual(got, want) {
		t.Errorf("kernelConfigureArgv = %q, want %q", got, want)
	}
}

// fakeKernelHost is a stateful fake of the kernel build's host: it
// extracts a fake source tree, merges config by appending, and "compiles"
// a small ELF vmlinux, recording every step.
type fakeKernelHost struct {
	t        *testing.T
	mu       sync.Mutex
	steps    []string
	failMake bool
	noPVH    bool
	// block, if set, makes the compile wait for the context's end.
	block bool
}

func (f *fakeKernelHost) RunStep(ctx context.Context, log *os.File, s step) error {
	f.mu.Lock()
	f.steps = append(f.steps, strings.Join(s.Argv, " "))
	f.mu.Unlock()
	switch {
	case s.Argv[0] == "tar" && s.Argv[1] == "-xf":
		return os.MkdirAll(filepath.Join(s.Argv[4], "linux-source-6.1", "scripts", "kconfig"), 0o755)
	case s.Argv[0] == "scripts/kconfig/merge_config.sh":
		frag, err := os.ReadFile(s.Argv[3])
		if err != nil {
			return err
		}
		cfg, err := os.OpenFile(filepath.Join(s.Dir, ".config"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer cfg.Close()
		_, err = cfg.Write(frag)
		return err
	case reflect.DeepEqual(s.Argv, []string{"make", "olddefconfig"}):
		return nil
	case s.Argv[0] == "nice":
		fmt.Fprintf(log, "  CC      init/main.o\n  CC      kernel/fork.o\n  LD      vmlinux\n")
		if f.block {
			<-ctx.Done()
			return ctx.Err()
		}
		if f.failMake {
			fmt.Fprintf(log, "kernel/fork.c:1: error: boom\n")
			return errors.New("make: exit status 2")
		}
		notes := []testNote{pvhNote}
		if f.noPVH {
			notes = nil
		}
		writeTestELF(f.t, filepath.Join(s.Dir, "vmlinux"), notes...)
		return nil
	}
	f.t.Errorf("unexpected step %q", s.Argv)
	return hostexec.ErrUnexpected
}

func (f *fakeKernelHost) Steps() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.steps...)
}

func newKernelDeps(t *testing.T, host *fakeKernelHost, tarballs ...string) kernelDeps {
	t.Helper()
	src := t.TempDir()
	for _, tb := range tarballs {
		if err := os.WriteFile(filepath.Join(src, tb), []byte("tarball"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := &hostexec.Fake{Handler: func(argv []string, _ string) (string, error) {
		if argv[0] == "dpkg-query" && argv[len(argv)-1] == "linux-source-6.1" {
			return "6.1.192-1", nil
		}
		if argv[0] == "dpkg-query" {
			return "dpkg-query: no packages found matching " + argv[len(argv)-1], errors.New("exit status 1")
		}
		return "", hostexec.ErrUnexpected
	}}
	return kernelDeps{steps: host, run: run, srcDir: src, tools: func(string) bool { return true }}
}

func TestBuildKernel(t *testing.T) {
	host := &fakeKernelHost{t: t}
	deps := newKernelDeps(t, host, "linux-source-6.1.tar.xz")
	dir := filepath.Join(t.TempDir(), "kernels")
	cache := filepath.Join(t.TempDir(), "cache")
	var steps []string
	progress := func(step, msg string) { steps = append(steps, step) }

	k, err := buildKernel(context.Background(), deps, KernelOptions{Dir: dir, CacheDir: cache, Jobs: 2}, progress)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	wantName := "vmlinux-6.1.192-1-" + KernelConfigHash()[:12]
	if k.Name != wantName || k.Path != filepath.Join(dir, wantName) || k.SourceVersion != "6.1.192-1" || k.Reused {
		t.Errorf("kernel = %+v, want %s built from 6.1.192-1", k, wantName)
	}
	if k.LogPath != k.Path+".log" {
		t.Errorf("log = %q, want %q", k.LogPath, k.Path+".log")
	}
	wantSteps := []string{
		"tar -xf " + filepath.Join(deps.srcDir, "linux-source-6.1.tar.xz") + " -C ",
		"scripts/kconfig/merge_config.sh -m .config ",
		"make olddefconfig",
		"nice -n 10 make -j2 vmlinux",
	}
	got := host.Steps()
	if len(got) != len(wantSteps) {
		t.Fatalf("steps = %q, want %d steps", got, len(wantSteps))
	}
	for i := range wantSteps {
		if !strings.HasPrefix(got[i], wantSteps[i]) {
			t.Errorf("step %d = %q, want prefix %q", i, got[i], wantSteps[i])
		}
	}
	if want := []string{"source", "extract", "configure", "compile", "compile", "verify", "install"}; !reflect.DeepEqual(steps, want) {
		t.Errorf("progress steps = %q, want %q", steps, want)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".lock-") {
			names = append(names, e.Name())
		}
	}
	if want := []string{wantName, wantName + ".json", wantName + ".log"}; !reflect.DeepEqual(names, want) {
		t.Errorf("kernel dir = %q, want %q (no build dir left)", names, want)
	}

	// A second build with the same inputs reuses the kernel.
	host.steps = nil
	again, err := buildKernel(context.Background(), deps, KernelOptions{Dir: dir, CacheDir: cache}, nil)
	if err != nil || !again.Reused || again.Path != k.Path || len(host.Steps()) != 0 {
		t.Errorf("second build = %+v, %v, steps %q; want reuse without steps", again, err, host.Steps())
	}

	// Another kernel dir gets it from the cache.
	dir2 := filepath.Join(t.TempDir(), "kernels")
	fromCache, err := buildKernel(context.Background(), deps, KernelOptions{Dir: dir2, CacheDir: cache}, nil)
	if err != nil || !fromCache.Reused || fromCache.Path != filepath.Join(dir2, wantName) || len(host.Steps()) != 0 {
		t.Errorf("cached build = %+v, %v, steps %q; want a copy from the cache", fromCache, err, host.Steps())
	}
	if ok, err := HasPVHNote(fromCache.Path); err != nil || !ok {
		t.Errorf("cached kernel: PVH note %t, %v", ok, err)
	}

	// Force rebuilds.
	forced, err := buildKernel(context.Background(), deps, KernelOptions{Dir: dir, Force: true}, nil)
	if err != nil || forced.Reused || len(host.Steps()) != 4 {
		t.Errorf("forced build = %+v, %v, steps %q; want a rebuild", forced, err, host.Steps())
	}

	list, err := ListKernels(dir)
	if err != nil || len(list) != 1 || list[0].Name != wantName || list[0].SizeBytes != forced.SizeBytes {
		t.Errorf("ListKernels = %+v, %v; want the one kernel", list, err)
	}
}

func TestBuildKernelFailures(t *testing.T) {
	tests := []struct {
		name     string
		tarballs []string
		version  string
		failMake bool
		noPVH    bool
		tools    func(string) bool
		wantCode string
		wantMsg  string
	}{
		{name: "no source package", wantCode: model.EUNAVAILABLE, wantMsg: "apt-get install linux-source build-essential"},
		{name: "wrong series", tarballs: []string{"linux-source-6.1.tar.xz"}, version: "6.12", wantCode: model.EUNAVAILABLE, wantMsg: "apt-get install linux-source-6.12 "},
		{name: "no compiler", tarballs: []string{"linux-source-6.1.tar.xz"}, tools: func(n string) bool { return n != "gcc" && n != "flex" },
			wantCode: model.EUNAVAILABLE, wantMsg: "gcc, flex not on PATH: run apt-get install build-essential"},
		{name: "compile error", tarballs: []string{"linux-source-6.1.tar.xz"}, failMake: true, wantCode: model.EINTERNAL, wantMsg: "error: boom"},
		{name: "no pvh note", tarballs: []string{"linux-source-6.1.tar.xz"}, noPVH: true, wantCode: model.EINTERNAL, wantMsg: "no Xen PVH note"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := &fakeKernelHost{t: t, failMake: tt.failMake, noPVH: tt.noPVH}
			deps := newKernelDeps(t, host, tt.tarballs...)
			if tt.tools != nil {
				deps.tools = tt.tools
			}
			dir := t.TempDir()
			_, err := buildKernel(context.Background(), deps, KernelOptions{Dir: dir, Version: tt.version}, nil)
			if code := model.ErrorCode(err); code != tt.wantCode {
				t.Fatalf("error code = %q (%v), want %q", code, err, tt.wantCode)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %v, want it to mention %q", err, tt.wantMsg)
			}
			assertNoBuildDirs(t, dir)
			if list, _ := ListKernels(dir); len(list) != 0 {
				t.Errorf("failed build left kernels %+v", list)
			}
		})
	}
}

func TestBuildKernelCancel(t *testing.T) {
	host := &fakeKernelHost{t: t, block: true}
	deps := newKernelDeps(t, host, "linux-source-6.1.tar.xz")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	progress := func(step, msg string) {
		if step == "compile" {
			cancel()
		}
	}
	_, err := buildKernel(ctx, deps, KernelOptions{Dir: dir}, progress)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	assertNoBuildDirs(t, dir)
}

func TestFindKernelSourceNewest(t *testing.T) {
	deps := newKernelDeps(t, &fakeKernelHost{t: t}, "linux-source-5.10.tar.xz", "linux-source-6.1.tar.xz", "linux-source-6.12.tar.xz", "linux-config-6.1", "README")
	src, err := findKernelSource(context.Background(), deps, "")
	if err != nil {
		t.Fatal(err)
	}
	// 6.12 is newer than 6.1; it has no package, so its version is the
	// tarball's series.
	want := kernelSource{Tarball: filepath.Join(deps.srcDir, "linux-source-6.12.tar.xz"), Package: "linux-source-6.12", Series: "6.12", Version: "6.12"}
	if src != want {
		t.Errorf("source = %+v, want %+v", src, want)
	}
	src, err = findKernelSource(context.Background(), deps, "6.1")
	if err != nil || src.Version != "6.1.192-1" {
		t.Errorf("source 6.1 = %+v, %v; want version 6.1.192-1", src, err)
	}
}

func assertNoBuildDirs(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".build-") {
			t.Errorf("build dir %s left behind", e.Name())
		}
	}
}
