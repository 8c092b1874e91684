package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"banger/internal/testutil"
)

// TestBuildKernelReal builds the guest kernel from the host's
// linux-source package. It first cancels a build in the middle of the
// compile and checks that nothing is left running or on disk, then builds
// one to the end, checks it, and boots an image with it. The full compile
// takes about ten minutes on two cores: with BANGER_TEST_KERNEL_BUILD=1 it
// is forced; otherwise the build may come from the machine-wide kernel
// cache ($BANGER_TEST_KERNEL_CACHE, which scripts/test.sh points at the
// cache `banger kernel build` just filled), which proves the cache path.
func TestBuildKernelReal(t *testing.T) {
	testutil.Slow(t)
	testutil.Heavy(t)
	testutil.RequireTools(t, "make", "gcc", "flex", "bison", "bc", "tar", "xz", "nice", "dpkg-query")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	cache := filepath.Join(testCacheDir(), "kernels")
	if c := os.Getenv("BANGER_TEST_KERNEL_CACHE"); c != "" {
		cache = c
	}
	force := os.Getenv("BANGER_TEST_KERNEL_BUILD") == "1"

	t.Run("cancel", func(t *testing.T) {
		dir := t.TempDir()
		cctx, ccancel := context.WithCancel(ctx)
		defer ccancel()
		progress := func(step, msg string) {
			t.Logf("cancel build: %-9s %s", step, msg)
			if step == "compile" {
				time.AfterFunc(15*time.Second, ccancel)
			}
		}
		_, err := BuildKernel(cctx, KernelOptions{Dir: dir, CacheDir: cache, Force: true}, progress)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("BuildKernel after cancel = %v, want context.Canceled", err)
		}
		assertNoBuildDirs(t, dir)
		if pids := processesUnder(dir); len(pids) > 0 {
			t.Errorf("processes still working in %s after the cancel: %v", dir, pids)
		}
		if list, _ := ListKernels(dir); len(list) != 0 {
			t.Errorf("cancelled build left kernels: %+v", list)
		}
	})

	dir := t.TempDir()
	start := time.Now()
	k, err := BuildKernel(ctx, KernelOptions{Dir: dir, CacheDir: cache, Force: force, Jobs: runtime.NumCPU()},
		func(step, msg string) { t.Logf("build: %-9s %s", step, msg) })
	if err != nil {
		t.Fatalf("BuildKernel: %v", err)
	}
	t.Logf("built %s in %s: %+v", k.Name, time.Since(start).Round(time.Second), k)
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "linux-source-6.1").Output()
	if err == nil && !strings.HasPrefix(k.Name, "vmlinux-"+string(out)+"-") {
		t.Errorf("name %s does not record the package version %s", k.Name, out)
	}
	if !strings.HasSuffix(k.Name, "-"+KernelConfigHash()[:12]) {
		t.Errorf("name %s does not end in the config hash", k.Name)
	}
	if err := verifyKernel(k.Path); err != nil {
		t.Error(err)
	}
	if !force && !k.Reused {
		t.Logf("no cached kernel in %s: this run compiled one", cache)
	}
	if b, err := os.ReadFile(k.LogPath); err != nil || !strings.Contains(string(b), "  CC ") {
		t.Errorf("build log %s: %v; want the compile's output", k.LogPath, err)
	}
	again, err := BuildKernel(ctx, KernelOptions{Dir: dir}, nil)
	if err != nil || !again.Reused || again.Path != k.Path {
		t.Errorf("second BuildKernel = %+v, %v; want the same kernel reused", again, err)
	}
	list, err := ListKernels(dir)
	if err != nil || len(list) != 1 || list[0].Name != k.Name || list[0].SourceVersion != k.SourceVersion {
		t.Errorf("ListKernels = %+v, %v", list, err)
	}

	t.Run("boot", func(t *testing.T) {
		testutil.RequireRoot(t)
		testutil.RequireTools(t, "debootstrap", "chroot", "mkfs.ext4", "e2fsck", "qemu-system-x86_64", "ip", "cp")
		keyPath := filepath.Join(t.TempDir(), "id_ed25519")
		pub, _, err := EnsureSSHKey(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		art, err := BuildImage(ctx, ImageOptions{
			Name: "kernel-test", OutDir: filepath.Join(t.TempDir(), "img"), CacheDir: testCacheDir(),
			KernelPath: k.Path, SSHPublicKey: pub, DNS: "192.0.2.53",
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		testBootImage(t, ctx, art, keyPath)
	})
}

// processesUnder returns the pids whose working directory is dir or below.
func processesUnder(dir string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
