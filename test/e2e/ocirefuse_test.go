package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"banger/internal/oci/ocitest"
	"banger/test/harness"
)

// treeListing lists the paths under dir (relative; with filesOnly, not
// directories), for before/after comparisons.
func treeListing(t *testing.T, dir string, filesOnly bool) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != dir && !(filesOnly && fi.IsDir()) {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestOCIRefusesBadImages sends the daemon images it must refuse (not an
// image, a corrupt layer, a layer climbing out with .., a layer writing
// through an absolute symbolic link an earlier layer made): each is
// refused with a message saying what is wrong, and the daemon's images,
// cache and the link's target are as they were. No guest boots.
func TestOCIRefusesBadImages(t *testing.T) {
	a := harness.RequireArtifacts(t)
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	os.Mkdir(outside, 0o755)

	notImage := filepath.Join(dir, "notes.tar")
	os.WriteFile(notImage, []byte(strings.Repeat("not an image\n", 200)), 0o644)

	good := newLayer(t, filepath.Join(dir, "good.tar"))
	good.dir("etc", 0o755, 0, 0)
	good.file("etc/hello", "hello\n", 0o644, 0, 0)
	goodPath := good.close()
	corrupt := filepath.Join(dir, "corrupt.tar")
	if _, err := ocitest.OCIArchive(corrupt, []ocitest.Layer{{Path: goodPath, Compress: "gzip"}}, ocitest.Options{CorruptLayer: 1}); err != nil {
		t.Fatal(err)
	}

	up := newLayer(t, filepath.Join(dir, "up.tar"))
	up.file("../../../../../../../"+outside[1:]+"/dotdot", "pwned\n", 0o644, 0, 0)
	dotdot := filepath.Join(dir, "dotdot.tar")
	if _, err := ocitest.OCIArchive(dotdot, []ocitest.Layer{{Path: goodPath}, {Path: up.close()}}, ocitest.Options{}); err != nil {
		t.Fatal(err)
	}

	l1 := newLayer(t, filepath.Join(dir, "link.tar"))
	l1.symlink("opt", outside)
	l2 := newLayer(t, filepath.Join(dir, "through.tar"))
	l2.file("opt/through", "pwned\n", 0o644, 0, 0)
	through := filepath.Join(dir, "through-docker.tar")
	if err := ocitest.DockerArchive(through, []ocitest.Layer{{Path: goodPath}, {Path: l1.close()}, {Path: l2.close()}}, ocitest.Options{}, "evil:1"); err != nil {
		t.Fatal(err)
	}

	d := harness.NewE2EDaemon(t, a, "")
	images, cache := filepath.Join(d.StateDir, "images"), filepath.Join(d.StateDir, "cache")
	beforeImages, beforeCache := treeListing(t, images, false), treeListing(t, cache, true)
	for _, tc := range []struct{ name, from, want string }{
		{"notimage", notImage, "not an image archive"},
		{"corrupt", "oci-archive:" + corrupt, "layer 1"},
		{"dotdot", dotdot, "climbs out"},
		{"through", "docker-archive:" + through, "symbolic link"},
	} {
		r := d.CLI("image", "build", tc.name, "--from", tc.from, "--kernel", a.Kernel)
		if r.Code == 0 || !strings.Contains(r.Stderr, tc.want) {
			t.Errorf("%s: want a refusal saying %q: %s", tc.name, tc.want, r)
		}
		t.Logf("%s: %s", tc.name, strings.TrimSpace(r.Stderr))
	}
	if r := d.MustCLI("image", "ls"); strings.Contains(r.Stdout, "dotdot") || strings.Contains(r.Stdout, "through") || strings.Contains(r.Stdout, "corrupt") {
		t.Errorf("refused images listed:\n%s", r.Stdout)
	}
	if after := treeListing(t, images, false); strings.Join(after, "\n") != strings.Join(beforeImages, "\n") {
		t.Errorf("images dir changed: %v -> %v", beforeImages, after)
	}
	if after := treeListing(t, cache, true); strings.Join(after, "\n") != strings.Join(beforeCache, "\n") {
		t.Errorf("cache changed: %v -> %v", beforeCache, after)
	}
	if es, _ := os.ReadDir(outside); len(es) > 0 {
		t.Errorf("written outside the image: %v", es)
	}
}
