package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

func TestClassifySource(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "img.tar")
	os.WriteFile(archive, []byte("x"), 0o644)
	for _, tc := range []struct {
		in   string
		want importSource
	}{
		{"docker://python:3.12", importSource{reference: "python:3.12"}},
		{"python:3.12", importSource{reference: "python:3.12"}},
		{"oci-archive:" + archive, importSource{archive: archive}},
		{"docker-archive:/x/y.tar", importSource{archive: "/x/y.tar"}},
		{"oci:" + dir, importSource{layout: dir}},
		{archive, importSource{archive: archive}},
		{dir, importSource{layout: dir}},
	} {
		got, err := classifySource(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("classifySource(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	// A path that looks like one but is missing is not taken for a
	// registry reference.
	for _, in := range []string{filepath.Join(dir, "missing.tar"), "./missing.tar"} {
		if _, err := classifySource(in); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("classifySource(%q): %v, want EINVALID", in, err)
		}
	}
}

func TestSessionCommand(t *testing.T) {
	plain := api.VMView{}
	if _, ok := sessionCommand(plain, []string{"id"}); ok {
		t.Error("an image without a config got a session command")
	}
	vm := api.VMView{ImageConfig: &model.ImageConfig{User: "app"}}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "exec /usr/lib/banger/banger-init session"},
		{[]string{"echo $HOME"}, `exec /usr/lib/banger/banger-init session -c 'echo $HOME'`},
		{[]string{"sh", "-c", "it's"}, `exec /usr/lib/banger/banger-init session -c 'sh -c '\''it'\''\'\'''\''s'\'''`},
	} {
		got, ok := sessionCommand(vm, tc.args)
		if !ok || got != tc.want {
			t.Errorf("sessionCommand(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestBuilderArgv(t *testing.T) {
	b := builder{name: "buildah", bin: "/usr/bin/buildah"}
	if got, want := b.buildArgv("/p/Dockerfile", "/p", "/t/iid"), []string{"/usr/bin/buildah", "build", "--isolation", "chroot", "--file", "/p/Dockerfile", "--iidfile", "/t/iid", "/p"}; !reflect.DeepEqual(got, want) {
		t.Errorf("buildah build: %q", got)
	}
	if got := strings.Join(b.saveArgv("abc", "/t/a.tar"), " "); got != "/usr/bin/buildah push abc oci-archive:/t/a.tar" {
		t.Errorf("buildah save: %q", got)
	}
	p := builder{name: "podman", bin: "/usr/bin/podman"}
	if got := strings.Join(p.saveArgv("abc", "/t/a.tar"), " "); got != "/usr/bin/podman save --format oci-archive --output /t/a.tar abc" {
		t.Errorf("podman save: %q", got)
	}
	if got := strings.Join(p.rmiArgv("abc"), " "); got != "/usr/bin/podman rmi abc" {
		t.Errorf("podman rmi: %q", got)
	}
}
