package oci

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/model"
	"banger/internal/oci/ocitest"
)

// applyImage applies every layer of img onto root, verifying each.
func applyImage(t *testing.T, img *Image, root string) error {
	t.Helper()
	a, err := OpenApplier(root)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := range img.Layers {
		lr, err := img.Open(i)
		if err != nil {
			return err
		}
		err = a.Apply(context.Background(), lr)
		if err == nil {
			err = lr.Finish()
		}
		lr.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// testLayers writes two layer tars: a file replaced by a directory and a
// whiteout across them.
func testLayers(t *testing.T, dir string, compress ...string) []ocitest.Layer {
	t.Helper()
	l1 := filepath.Join(dir, "l1.tar")
	l2 := filepath.Join(dir, "l2.tar")
	os.WriteFile(l1, layerTar(t, dir2("etc/"), file("etc/os-release", "ID=test", 0o644), file("x", "file", 0o644), file("gone", "g", 0o644)), 0o644)
	os.WriteFile(l2, layerTar(t, dir2("x/"), file("x/y", "y", 0o644), file(".wh.gone", "", 0o644)), 0o644)
	ls := []ocitest.Layer{{Path: l1}, {Path: l2}}
	for i, c := range compress {
		ls[i].Compress = c
	}
	return ls
}

func dir2(name string) ent { return dir(name, 0o755) }

const wantTree = "etc/\netc/os-release ID=test\nx/\nx/y y"

func TestArchives(t *testing.T) {
	opts := ocitest.Options{Env: []string{"PATH=/usr/bin", "A=b"}, WorkingDir: "/app", User: "1000:1000"}
	for _, tc := range []struct {
		name string
		make func(t *testing.T, dir string) (*Image, string)
		kind string
	}{
		{"oci-archive-gzip-zstd", func(t *testing.T, dir string) (*Image, string) {
			out := filepath.Join(dir, "img.tar")
			if _, err := ocitest.OCIArchive(out, testLayers(t, dir, "gzip", "zstd"), opts); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			img, kind, err := OpenArchive(f)
			if err != nil {
				t.Fatal(err)
			}
			return img, kind
		}, KindOCIArchive},
		{"docker-archive", func(t *testing.T, dir string) (*Image, string) {
			out := filepath.Join(dir, "img.tar")
			if err := ocitest.DockerArchive(out, testLayers(t, dir), opts, "test:1"); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			img, kind, err := OpenArchive(f)
			if err != nil {
				t.Fatal(err)
			}
			return img, kind
		}, KindDockerArchive},
		{"oci-layout", func(t *testing.T, dir string) (*Image, string) {
			out := filepath.Join(dir, "layout")
			if _, err := ocitest.Layout(out, testLayers(t, dir, "gzip"), opts); err != nil {
				t.Fatal(err)
			}
			img, closeFn, err := OpenLayout(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(closeFn)
			return img, KindOCILayout
		}, KindOCILayout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img, kind := tc.make(t, dir)
			if kind != tc.kind {
				t.Errorf("kind %q, want %q", kind, tc.kind)
			}
			if got := strings.Join(img.Config.Config.Env, " "); got != "PATH=/usr/bin A=b" {
				t.Errorf("env %q", got)
			}
			if img.Config.Config.WorkingDir != "/app" || img.Config.Config.User != "1000:1000" {
				t.Errorf("config %+v", img.Config.Config)
			}
			if len(img.Layers) != 2 || !strings.HasPrefix(img.ChainID(), "sha256:") {
				t.Errorf("layers %d, chain %q", len(img.Layers), img.ChainID())
			}
			root := filepath.Join(dir, "root")
			os.Mkdir(root, 0o755)
			if err := applyImage(t, img, root); err != nil {
				t.Fatal(err)
			}
			if got := tree(t, root); got != wantTree {
				t.Errorf("tree:\n%s\nwant:\n%s", got, wantTree)
			}
		})
	}
}

func TestChainIDIsStable(t *testing.T) {
	img := &Image{Layers: []Layer{{DiffID: "sha256:" + strings.Repeat("a", 64)}, {DiffID: "sha256:" + strings.Repeat("b", 64)}}}
	// sha256("sha256:aaa... sha256:bbb...")
	want := sha256Digest([]byte("sha256:" + strings.Repeat("a", 64) + " sha256:" + strings.Repeat("b", 64)))
	if got := img.ChainID(); got != want {
		t.Errorf("chain %s, want %s", got, want)
	}
	one := &Image{Layers: img.Layers[:1]}
	if got := one.ChainID(); got != img.Layers[0].DiffID {
		t.Errorf("chain of one layer %s, want its diff ID", got)
	}
}

// TestBadArchives: each is refused with EINVALID, before or while its
// layers are read.
func TestBadArchives(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, dir, out string)
		want string
	}{
		{"not-a-tar", func(t *testing.T, dir, out string) {
			os.WriteFile(out, []byte(strings.Repeat("not an archive\n", 100)), 0o644)
		}, "not an image archive"},
		{"tar-without-image", func(t *testing.T, dir, out string) {
			os.WriteFile(out, layerTar(t, file("hello.txt", "hi", 0o644)), 0o644)
		}, "not a container image"},
		{"corrupt-gzip-layer", func(t *testing.T, dir, out string) {
			if _, err := ocitest.OCIArchive(out, testLayers(t, dir, "gzip", "gzip"), ocitest.Options{CorruptLayer: 2}); err != nil {
				t.Fatal(err)
			}
		}, "layer 2"},
		{"corrupt-plain-layer", func(t *testing.T, dir, out string) {
			if _, err := ocitest.OCIArchive(out, testLayers(t, dir), ocitest.Options{CorruptLayer: 1}); err != nil {
				t.Fatal(err)
			}
		}, "layer 1"},
		{"corrupt-docker-layer", func(t *testing.T, dir, out string) {
			if err := ocitest.DockerArchive(out, testLayers(t, dir), ocitest.Options{CorruptLayer: 2}, "x:y"); err != nil {
				t.Fatal(err)
			}
		}, "layer 2"},
		{"arm64", func(t *testing.T, dir, out string) {
			if _, err := ocitest.OCIArchive(out, testLayers(t, dir), ocitest.Options{Architecture: "arm64"}); err != nil {
				t.Fatal(err)
			}
		}, "arm64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "img.tar")
			tc.make(t, dir, out)
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			img, _, err := OpenArchive(f)
			if err == nil {
				root := filepath.Join(dir, "root")
				os.Mkdir(root, 0o755)
				err = applyImage(t, img, root)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if model.ErrorCode(err) != model.EINVALID {
				t.Errorf("code %s, want EINVALID: %v", model.ErrorCode(err), err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestLayoutRefusesLinks: a layout whose blob is a link is refused, not
// followed.
func TestLayoutRefusesLinks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "layout")
	if _, err := ocitest.Layout(out, testLayers(t, dir), ocitest.Options{}); err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(out, "index.json")
	os.Rename(idx, filepath.Join(dir, "index.json"))
	os.Symlink(filepath.Join(dir, "index.json"), idx)
	if _, _, err := OpenLayout(out); err == nil {
		t.Fatal("a linked index.json was followed")
	}
}
