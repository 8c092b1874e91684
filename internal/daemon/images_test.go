package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/hostexec/fakeos"
	"banger/internal/model"
)

// imageFixture writes a kernel (an ELF header) and an ext4-looking
// rootfs into dir.
func imageFixture(t *testing.T, dir string) (kernel, rootfs string) {
	t.Helper()
	kernel = filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 57)...), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs = filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(rootfs, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fakeos.WriteExt4Magic(rootfs); err != nil {
		t.Fatal(err)
	}
	return kernel, rootfs
}

// uploadOf is the stream a CLI sends for files by role.
func uploadOf(t *testing.T, files map[string]string) api.OpenFunc {
	t.Helper()
	var buf bytes.Buffer
	for _, role := range []string{api.RoleKernel, api.RoleRootfs, api.RoleInitrd, api.RoleWorkSeed} {
		p, ok := files[role]
		if !ok {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := api.WriteFilePart(context.Background(), &buf, role, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return func() (io.Reader, error) { return bytes.NewReader(buf.Bytes()), nil }
}

func TestUploadedImageIsTheDaemonsCopy(t *testing.T) {
	e := newTestDaemon(t, false)
	dir := t.TempDir()
	kernel, rootfs := imageFixture(t, dir)
	alice := api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000})
	resp, err := e.d.UploadImage(alice, api.ImageUploadRequest{Name: "mine"}, uploadOf(t, map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs}), api.NoProgress)
	if err != nil {
		t.Fatal(err)
	}
	img := resp.Image
	if img.OwnerUID != 1000 || !e.d.imageIsOwn(img) || img.ArtifactDir != e.d.layout.imageDir(img.ID) {
		t.Fatalf("image %+v: want alice's, with files in the state dir", img)
	}
	// The user swaps the original for a link to a secret: the image's
	// files, and what inspect says of them, do not change.
	want, _ := os.ReadFile(rootfs)
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, bytes.Repeat([]byte("s"), 12345), 0o600)
	os.Remove(rootfs)
	os.Symlink(secret, rootfs)
	got, _ := os.ReadFile(img.RootfsPath)
	if !bytes.Equal(got, want) {
		t.Error("the daemon's copy changed with the original")
	}
	det, err := e.d.GetImage(alice, "mine")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range det.Artifacts {
		if a.Role == "rootfs" && (a.SizeBytes != int64(len(want)) || a.Path != img.RootfsPath) {
			t.Errorf("inspect rootfs %+v", a)
		}
		if a.SizeBytes == 12345 || strings.Contains(a.Path, dir) {
			t.Errorf("inspect shows the user's side: %+v", a)
		}
	}
	// A VM is created on it; root's bare "mine" is not alice's.
	if _, err := e.d.CreateVM(alice, model.VMCreateRequest{Name: "a1", ImageName: "mine", NoStart: true}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.findImage(e.ctx, "mine"); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("root's bare name found alice's image: %v", err)
	}
	if got, err := e.d.findImage(e.ctx, "1000/mine"); err != nil || got.ID != img.ID {
		t.Errorf("root's 1000/mine: %v", err)
	}
	// Root's VM on alice's image blocks its removal; alice is not told
	// the VM's name.
	if _, err := e.d.CreateVM(e.ctx, model.VMCreateRequest{Name: "rootsecret", ImageName: "1000/mine", NoStart: true}, api.NoProgress); err != nil {
		t.Fatal(err)
	}
	err = e.d.DeleteImage(alice, "mine")
	if model.ErrorCode(err) != model.ECONFLICT || strings.Contains(err.Error(), "rootsecret") || !strings.Contains(err.Error(), "a1 and 1 of other users") {
		t.Errorf("removing an image another user's VM uses: %v", err)
	}
	e.d.DeleteVM(e.ctx, "rootsecret", api.VMDeleteOptions{}, api.NoProgress)
	// Removal takes the copies with it.
	e.d.DeleteVM(alice, "a1", api.VMDeleteOptions{}, api.NoProgress)
	if err := e.d.DeleteImage(alice, "mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(img.ArtifactDir); !os.IsNotExist(err) {
		t.Errorf("artifact dir after rm: %v", err)
	}
}

func TestUploadRefusals(t *testing.T) {
	e := newTestDaemon(t, false)
	dir := t.TempDir()
	kernel, rootfs := imageFixture(t, dir)
	notKernel := filepath.Join(dir, "text")
	os.WriteFile(notKernel, []byte("hello"), 0o644)
	alice := api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000})
	mallory := api.WithCaller(e.ctx, api.Caller{UID: 1001, GID: 1001})
	if _, err := e.d.UploadImage(alice, api.ImageUploadRequest{Name: "taken"}, uploadOf(t, map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs}), api.NoProgress); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		ctx   context.Context
		req   api.ImageUploadRequest
		files map[string]string
		code  string
		say   string
	}{
		{"no rootfs", alice, api.ImageUploadRequest{Name: "a"}, map[string]string{api.RoleKernel: kernel}, model.EINVALID, "no rootfs"},
		{"not a kernel", alice, api.ImageUploadRequest{Name: "b"}, map[string]string{api.RoleKernel: notKernel, api.RoleRootfs: rootfs}, model.EINVALID, "neither an ELF"},
		{"bad work seed", alice, api.ImageUploadRequest{Name: "c"}, map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs, api.RoleWorkSeed: notKernel}, model.EINVALID, "work seed"},
		{"own name taken", alice, api.ImageUploadRequest{Name: "taken"}, map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs}, model.ECONFLICT, "already exists"},
		{"bad name", alice, api.ImageUploadRequest{Name: "Bad_Name"}, nil, model.EINVALID, "image name"},
	}
	for _, tt := range tests {
		_, err := e.d.UploadImage(tt.ctx, tt.req, uploadOf(t, tt.files), api.NoProgress)
		if model.ErrorCode(err) != tt.code || !strings.Contains(err.Error(), tt.say) {
			t.Errorf("%s: %v; want %s saying %q", tt.name, err, tt.code, tt.say)
		}
	}
	// Another user may use the name: no conflict, no hint it is taken.
	if _, err := e.d.UploadImage(mallory, api.ImageUploadRequest{Name: "taken"}, uploadOf(t, map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs}), api.NoProgress); err != nil {
		t.Errorf("mallory's own \"taken\": %v", err)
	}
	// A role sent twice, or one no image has.
	var buf bytes.Buffer
	for _, role := range []string{api.RoleKernel, api.RoleKernel} {
		f, _ := os.Open(kernel)
		api.WriteFilePart(e.ctx, &buf, role, f)
		f.Close()
	}
	_, err := e.d.UploadImage(alice, api.ImageUploadRequest{Name: "twice"}, func() (io.Reader, error) { return &buf, nil }, api.NoProgress)
	if model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "twice") {
		t.Errorf("kernel twice: %v", err)
	}
	buf.Reset()
	f, _ := os.Open(kernel)
	api.WriteFilePart(e.ctx, &buf, "ssh_key", f)
	f.Close()
	_, err = e.d.UploadImage(alice, api.ImageUploadRequest{Name: "odd"}, func() (io.Reader, error) { return &buf, nil }, api.NoProgress)
	if model.ErrorCode(err) != model.EINVALID {
		t.Errorf("an unknown role: %v", err)
	}
	// Nothing half made is left in the images dir.
	entries, _ := os.ReadDir(e.d.layout.imagesDir())
	for _, en := range entries {
		if strings.Contains(en.Name(), ".tmp-") {
			t.Errorf("left behind: %s", en.Name())
		}
	}
}

func TestUploadDiskLimit(t *testing.T) {
	e := newTestDaemon(t, false)
	e.d.cfg.Limits = model.UserLimits{DiskBytes: 6 << 20}
	dir := t.TempDir()
	kernel, rootfs := imageFixture(t, dir)
	alice := api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000})
	files := map[string]string{api.RoleKernel: kernel, api.RoleRootfs: rootfs}
	if _, err := e.d.UploadImage(alice, api.ImageUploadRequest{Name: "one"}, uploadOf(t, files), api.NoProgress); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.UploadImage(alice, api.ImageUploadRequest{Name: "two"}, uploadOf(t, files), api.NoProgress)
	if model.ErrorCode(err) != model.ELIMIT || !strings.Contains(err.Error(), "limits.disk") {
		t.Errorf("second image over the limit: %v", err)
	}
	// Admins are exempt.
	admin := api.WithCaller(e.ctx, api.Caller{UID: 1003, GID: 1003, Admin: true})
	for _, n := range []string{"a1", "a2"} {
		if _, err := e.d.UploadImage(admin, api.ImageUploadRequest{Name: n}, uploadOf(t, files), api.NoProgress); err != nil {
			t.Errorf("admin upload %s: %v", n, err)
		}
	}
	// VMs count their disk sizes (64M each here).
	if _, err := e.d.CreateVM(alice, model.VMCreateRequest{Name: "big", ImageName: "one", NoStart: true}, api.NoProgress); model.ErrorCode(err) != model.ELIMIT {
		t.Errorf("a VM past the disk limit: %v", err)
	}
}

func TestRootRegistersByPathAndNobodyElse(t *testing.T) {
	e := newTestDaemon(t, false)
	dir := t.TempDir()
	kernel, rootfs := imageFixture(t, dir)
	resp, err := e.d.RegisterImage(e.ctx, api.ImageRegisterRequest{Name: "rooted", KernelPath: kernel, RootfsPath: rootfs})
	if err != nil {
		t.Fatal(err)
	}
	if !e.d.imageIsOwn(resp.Image) || resp.Image.RootfsPath == rootfs {
		t.Errorf("root's register kept the paths: %+v", resp.Image)
	}
	// Changing root's original changes nothing either.
	os.WriteFile(rootfs, []byte("changed"), 0o644)
	if fi, _ := os.Stat(resp.Image.RootfsPath); fi.Size() != 4<<20 {
		t.Errorf("copy size %d", fi.Size())
	}
	for _, c := range []api.Caller{{UID: 1000, GID: 1000}, {UID: 1003, GID: 1003, Admin: true}} {
		_, err := e.d.RegisterImage(api.WithCaller(e.ctx, c), api.ImageRegisterRequest{Name: "p", KernelPath: kernel, RootfsPath: rootfs})
		if model.ErrorCode(err) != model.EFORBIDDEN {
			t.Errorf("uid %d registering by path: %v", c.UID, err)
		}
		_, err = e.d.BuildImage(api.WithCaller(e.ctx, c), api.ImageBuildRequest{Name: "p", KernelPath: kernel}, api.NoProgress)
		if model.ErrorCode(err) != model.EFORBIDDEN {
			t.Errorf("uid %d building with a kernel path: %v", c.UID, err)
		}
	}
	// Root's FIFO is refused at once: the daemon does not wait for a
	// writer.
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	start := time.Now()
	_, err = e.d.RegisterImage(e.ctx, api.ImageRegisterRequest{Name: "fifo", KernelPath: fifo, RootfsPath: rootfs})
	if model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), "not a regular file") || time.Since(start) > time.Second {
		t.Errorf("a FIFO kernel: %v after %s", err, time.Since(start))
	}
}

func TestKernelBuildsArePrivileged(t *testing.T) {
	e := newTestDaemon(t, false)
	e.d.cfg.AdminGroup = "banger-admin"
	_, err := e.d.BuildKernel(api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000}), api.KernelBuildRequest{Force: true}, api.NoProgress)
	if model.ErrorCode(err) != model.EFORBIDDEN || !strings.Contains(err.Error(), "banger-admin") {
		t.Errorf("a user's kernel build: %v", err)
	}
	// A user's image build with no kernel built yet says who can build
	// one, before taking a build slot.
	_, err = e.d.BuildImage(api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000}), api.ImageBuildRequest{Name: "x"}, api.NoProgress)
	if model.ErrorCode(err) != model.EUNAVAILABLE || !strings.Contains(err.Error(), "kernel build") {
		t.Errorf("a user's image build without a kernel: %v", err)
	}
	// Mirrors are checked before anything runs.
	for mirror, code := range map[string]string{
		"http://u:p@deb.example/debian": model.EINVALID,
		"-o/tmp/x":                      model.EINVALID,
		"http://127.0.0.1:8080/debian":  model.EFORBIDDEN,
	} {
		_, err = e.d.BuildImage(api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000}), api.ImageBuildRequest{Name: "x", Mirror: mirror}, api.NoProgress)
		if model.ErrorCode(err) != code {
			t.Errorf("mirror %q: %v; want %s", mirror, err, code)
		}
	}
}

func TestLegacyImages(t *testing.T) {
	e := newTestDaemon(t, false)
	dir := t.TempDir()
	kernel, rootfs := imageFixture(t, dir)
	now := model.Now()
	rootImg := model.Image{ID: strings.Repeat("b", 64), Name: "old", KernelPath: kernel, RootfsPath: rootfs, CreatedAt: now, UpdatedAt: now}
	userImg := model.Image{ID: strings.Repeat("c", 64), Name: "theirs", OwnerUID: 1000, KernelPath: kernel, RootfsPath: rootfs, CreatedAt: now, UpdatedAt: now}
	for _, img := range []model.Image{rootImg, userImg} {
		if err := e.d.store.CreateImage(e.ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	alice := api.WithCaller(e.ctx, api.Caller{UID: 1000, GID: 1000})
	if _, err := e.d.CreateVM(alice, model.VMCreateRequest{Name: "v1", ImageName: "theirs", NoStart: true}, api.NoProgress); model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "register it again") && !strings.Contains(err.Error(), "registers it again") {
		t.Errorf("a VM on a user's legacy image: %v", err)
	}
	e.d.settleLegacyImages(e.ctx)
	got, _ := e.d.store.GetImage(e.ctx, rootImg.ID)
	if !e.d.imageIsOwn(got) || got.ArtifactDir != e.d.layout.imageDir(rootImg.ID) {
		t.Errorf("root's legacy image after start: %+v", got)
	}
	if b, _ := os.ReadFile(got.RootfsPath); len(b) != 4<<20 {
		t.Errorf("root's copied rootfs: %d bytes", len(b))
	}
	theirs, _ := e.d.store.GetImage(e.ctx, userImg.ID)
	if theirs.RootfsPath != rootfs {
		t.Errorf("a user's legacy image was touched: %+v", theirs)
	}
	det, err := e.d.GetImage(alice, "theirs")
	if err != nil || det.Note == "" {
		t.Errorf("inspect of a user's legacy image: %+v %v", det, err)
	}
	for _, a := range det.Artifacts {
		if !a.Missing || a.SizeBytes != 0 {
			t.Errorf("inspect looked at a user's file as root: %+v", a)
		}
	}
	if err := e.d.DeleteImage(alice, "theirs"); err != nil {
		t.Errorf("removing a legacy image: %v", err)
	}
	if _, err := os.Stat(rootfs); err != nil {
		t.Errorf("removing a legacy image removed the user's file: %v", err)
	}
}

func TestMirrorKeyring(t *testing.T) {
	user, admin := api.Caller{UID: 1000}, api.Caller{UID: 1001, Admin: true}
	if got := mirrorKeyring(user, "http://deb.example/debian"); got != debianKeyring {
		t.Errorf("a user's mirror: keyring %q", got)
	}
	for _, tt := range []struct {
		c      api.Caller
		mirror string
	}{{user, ""}, {admin, "http://deb.example/debian"}, {api.Caller{UID: 0}, "http://deb.example/debian"}} {
		if got := mirrorKeyring(tt.c, tt.mirror); got != "" {
			t.Errorf("uid %d, mirror %q: keyring %q; want the configured trust", tt.c.UID, tt.mirror, got)
		}
	}
}
