package oci

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"banger/internal/model"
)

// pushTestImage serves an in-memory registry on loopback holding the
// test layers as test/app:1, and returns the registry's host.
func pushTestImage(t *testing.T, auth func(*http.Request) bool) string {
	t.Helper()
	reg := registry.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth != nil && !auth(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	img := empty.Image
	for _, l := range testLayers(t, dir, "gzip", "gzip") {
		layer, err := tarball.LayerFromFile(l.Path)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"FROM=registry"}
	cf.Config.User = "nobody"
	img, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/test/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var opts []remote.Option
	if auth != nil {
		opts = append(opts, remote.WithTransport(basicAuthTransport{}))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	return host
}

type basicAuthTransport struct{}

func (basicAuthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth("u", "p")
	return http.DefaultTransport.RoundTrip(r)
}

func TestPull(t *testing.T) {
	host := pushTestImage(t, nil)
	img, full, err := Pull(context.Background(), host+"/test/app:1", PullOptions{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if full != host+"/test/app:1" {
		t.Errorf("reference %q", full)
	}
	if !strings.HasPrefix(img.ManifestDigest, "sha256:") || img.Config.Config.User != "nobody" {
		t.Errorf("image %+v", img)
	}
	root := filepath.Join(t.TempDir(), "root")
	os.Mkdir(root, 0o755)
	if err := applyImage(t, img, root); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, root); got != wantTree {
		t.Errorf("tree:\n%s\nwant:\n%s", got, wantTree)
	}
	if _, _, err := Pull(context.Background(), host+"/test/missing:1", PullOptions{PlainHTTP: true}); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("missing image: %v, want ENOTFOUND", err)
	}
}

func TestPullWithCredentials(t *testing.T) {
	host := pushTestImage(t, func(r *http.Request) bool {
		u, p, ok := r.BasicAuth()
		return ok && u == "u" && p == "p"
	})
	_, _, err := Pull(context.Background(), host+"/test/app:1", PullOptions{PlainHTTP: true})
	if model.ErrorCode(err) != model.EFORBIDDEN {
		t.Errorf("anonymous pull: %v, want EFORBIDDEN", err)
	}
	if _, _, err := Pull(context.Background(), host+"/test/app:1", PullOptions{PlainHTTP: true, Auth: &Auth{Username: "u", Password: "p"}}); err != nil {
		t.Errorf("pull with credentials: %v", err)
	}
}

func TestParseReference(t *testing.T) {
	reg, full, err := ParseReference("registry.test:5000/team/app:1", false)
	if err != nil || reg != "registry.test:5000" || full != "registry.test:5000/team/app:1" {
		t.Errorf("got %q %q %v", reg, full, err)
	}
	if _, _, err := ParseReference("UPPER/case", false); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("bad reference: %v", err)
	}
}
