package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/oci/ocitest"
	"banger/internal/testutil"
	"banger/test/harness"
)

// small is a VM's size for the image tests.
var small = []string{"--vcpus", "1", "--memory", "512M", "--disk-size", "1G", "--overlay-size", "2G"}

// inspectImage returns an image as image inspect --json shows it.
func inspectImage(t *testing.T, d *harness.Daemon, name string) api.ImageDetail {
	t.Helper()
	r := d.MustCLI("image", "inspect", name, "--json")
	var det api.ImageDetail
	if err := json.Unmarshal([]byte(r.Stdout), &det); err != nil {
		t.Fatal(err)
	}
	return det
}

// stopGracefully stops a VM and checks its guest ended it (the stop did
// not wait for stop_timeout and kill).
func stopGracefully(t *testing.T, d *harness.Daemon, vm string) {
	t.Helper()
	start := time.Now()
	d.MustCLI("vm", "stop", vm)
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("vm stop %s took %s: the guest did not end on Ctrl-Alt-Del", vm, took)
	}
}

// TestOCIBusyboxImage imports an Alpine-like image without systemd (an
// OCI layout directory, then the same layers as a docker save archive),
// boots each with banger-init as PID 1, and checks what the layers made,
// the session config, Ctrl-Alt-Del and poweroff.
func TestOCIBusyboxImage(t *testing.T) {
	a := harness.RequireArtifacts(t)
	dir := t.TempDir()
	var layers []ocitest.Layer
	for i, p := range busyboxLayers(t, dir) {
		layers = append(layers, ocitest.Layer{Path: p, Compress: []string{"gzip", "zstd", ""}[i]})
	}
	layout := filepath.Join(dir, "layout")
	digest, err := ocitest.Layout(layout, layers, ocitest.Options{Env: busyboxEnv, WorkingDir: "/home/app", User: "app"})
	if err != nil {
		t.Fatal(err)
	}
	d := harness.NewE2EDaemon(t, a, "")

	r := d.MustCLI("image", "build", "bb", "--from", layout, "--kernel", a.Kernel)
	if !strings.Contains(r.Stdout, "init banger-init") {
		t.Errorf("image build --from layout: %s", r)
	}
	for _, step := range []string{"] upload", "] unpack: layer 3/3", "] configure", "] rootfs", "] verify"} {
		if !strings.Contains(r.Stderr, step) {
			t.Errorf("progress lacks %q:\n%s", step, r.Stderr)
		}
	}
	det := inspectImage(t, d, "bb")
	if s := det.Source; s == nil || s.Kind != "oci-layout" || s.ManifestDigest != digest || s.Layers != 3 || s.Init != "banger-init" || !strings.HasPrefix(s.ChainID, "sha256:") {
		t.Errorf("source: %+v", det.Source)
	}
	if c := det.Config; c == nil || c.User != "app" || c.WorkingDir != "/home/app" || len(c.Env) != 2 {
		t.Errorf("config: %+v", det.Config)
	}
	if r := d.MustCLI("image", "inspect", "bb"); !strings.Contains(r.Stdout, "source:      oci-layout") || !strings.Contains(r.Stdout, "sessions:    user app, in /home/app") {
		t.Errorf("image inspect:\n%s", r.Stdout)
	}

	d.MustCLI(append([]string{"vm", "create", "bb1", "--image", "bb"}, small...)...)
	script := `id -un; pwd; echo "$GREETING"; ls /data; ls /opq; cat /replace/inner
stat -c '%a %h %U' /usr/local/bin/suidtest; readlink /usr/local/bin/abs; readlink /usr/local/bin/rel
test -e /etc/motd && echo motd-present || echo motd-gone
hostname; grep -c nameserver /etc/resolv.conf; grep ' /root ' /proc/mounts | cut -d' ' -f3; cat /proc/1/comm`
	r = d.MustCLI("exec", "bb1", "--", "sh", "-c", script)
	want := "app\n/home/app\nhello from the image\nold2\nz\nnow a directory\n4755 2 root\n/bin/busybox\n../../../bin/busybox\nmotd-gone\nbb1\n1\next4\nbanger-init\n"
	if r.Stdout != want {
		t.Errorf("in the guest:\n%s\nwant:\n%s", r.Stdout, want)
	}
	if r := d.CLI("exec", "bb1", "--", "sh", "-c", "echo oops >&2; exit 3"); r.Code != 3 || !strings.Contains(r.Stderr, "oops") {
		t.Errorf("exit status: %s", r)
	}
	if r := d.MustCLI("ssh", "bb1", "--", "echo $HOME"); strings.TrimSpace(r.Stdout) != "/home/app" {
		t.Errorf("ssh as the image's user: %s", r)
	}
	stopGracefully(t, d, "bb1")
	if r := d.MustCLI("logs", "bb1"); !strings.Contains(r.Stdout, "banger-init: Ctrl-Alt-Del: stopping") || !strings.Contains(r.Stdout, "rebooting (ends the VM)") {
		t.Errorf("console after stop lacks banger-init's shutdown:\n%s", r.Stdout)
	}

	// The same layers as a docker save archive, without a user: root's
	// sessions, and poweroff from inside ends the VM.
	archive := filepath.Join(dir, "bb-docker.tar")
	if err := ocitest.DockerArchive(archive, layers, ocitest.Options{Env: busyboxEnv}, "bangerbox:1"); err != nil {
		t.Fatal(err)
	}
	r = d.MustCLI("image", "build", "bbd", "--from", "docker-archive:"+archive, "--kernel", a.Kernel)
	det2 := inspectImage(t, d, "bbd")
	if s := det2.Source; s == nil || s.Kind != "docker-archive" || s.ChainID != det.Source.ChainID || !strings.HasPrefix(s.ArchiveDigest, "sha256:") || s.ManifestDigest != "" {
		t.Errorf("docker archive source: %+v (layout's chain %s)", det2.Source, det.Source.ChainID)
	}
	d.MustCLI(append([]string{"vm", "create", "bb2", "--image", "bbd"}, small...)...)
	if r := d.MustCLI("exec", "bb2", "--", "sh", "-c", "id -u; ls /data"); r.Stdout != "0\nold2\n" {
		t.Errorf("docker archive guest: %q", r.Stdout)
	}
	d.CLI("exec", "bb2", "--", "poweroff")
	harness.WaitFor(t, 60*time.Second, "bb2 stopped after poweroff", func() bool { return d.VM(t, "bb2").State == "stopped" })

	d.MustCLI("vm", "rm", "bb1", "bb2")
	d.MustCLI("image", "rm", "bb", "bbd")
	if left := d.Leftovers(t, 2); len(left) > 0 {
		t.Errorf("leftovers: %v", left)
	}
}

// TestOCIDebianImage imports the Debian base the image builder caches as
// an OCI archive (a zstd layer) with a layer of changes on top, boots it
// with its own systemd, checks the layers and the session config, and
// imports it again from the cache.
func TestOCIDebianImage(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "debugfs")
	dir := t.TempDir()
	archive := filepath.Join(dir, "debian.tar")
	layers := []ocitest.Layer{{Path: debianCacheTar(t), Compress: "zstd"}, {Path: debianLayer(t, dir), Compress: "gzip"}}
	if _, err := ocitest.OCIArchive(archive, layers, ocitest.Options{Env: debianEnv, WorkingDir: "/srv/app", User: "dev"}); err != nil {
		t.Fatal(err)
	}
	d := harness.NewE2EDaemon(t, a, "")
	start := time.Now()
	r := d.MustCLI("image", "build", "deb", "--from", "oci-archive:"+archive, "--kernel", a.Kernel)
	first := time.Since(start)
	if !strings.Contains(r.Stdout, "init systemd") {
		t.Errorf("image build: %s", r)
	}
	det := inspectImage(t, d, "deb")
	if s := det.Source; s == nil || s.Kind != "oci-archive" || s.Layers != 2 || s.Init != "systemd" {
		t.Errorf("source: %+v", det.Source)
	}
	// File capabilities (ping's) survive into the root filesystem.
	if out, _ := exec.Command("debugfs", "-R", "ea_list /usr/bin/ping", det.RootfsPath).CombinedOutput(); !strings.Contains(string(out), "security.capability") {
		t.Errorf("ping lost its capability:\n%s", out)
	}

	d.MustCLI(append([]string{"vm", "create", "deb", "--image", "deb"}, small...)...)
	script := `id -un; pwd; echo "$APP_MODE"; cat README
test -e /etc/motd && echo motd-present || echo motd-gone
ls /etc/update-motd.d; cat /etc/issue.net/inner
stat -c '%a %h' /usr/local/bin/tool; stat -c %a /usr/bin/passwd; readlink /usr/local/bin/abs-link
cat /proc/1/comm; findmnt -n -o FSTYPE /root`
	r = d.MustCLI("exec", "deb", "--", "sh", "-c", script)
	want := "dev\n/srv/app\ntest\nthe app\nmotd-gone\n99-banger\nnow a directory\n4755 2\n4755\n/usr/bin/env\nsystemd\next4\n"
	if r.Stdout != want {
		t.Errorf("in the guest:\n%s\nwant:\n%s", r.Stdout, want)
	}
	stopGracefully(t, d, "deb")

	// The same layers again: from the cache, without unpacking.
	start = time.Now()
	r = d.MustCLI("image", "build", "deb2", "--from", archive, "--kernel", a.Kernel)
	again := time.Since(start)
	if !strings.Contains(r.Stderr, "layers already unpacked") || strings.Contains(r.Stderr, "] unpack: layer") {
		t.Errorf("second import did not use the cache:\n%s", r.Stderr)
	}
	t.Logf("import %s, again from the cache %s", first.Round(time.Millisecond), again.Round(time.Millisecond))
	if det2 := inspectImage(t, d, "deb2"); det2.Source == nil || det2.Source.ChainID != det.Source.ChainID || det2.Source.ArchiveDigest != det.Source.ArchiveDigest {
		t.Errorf("second import's source %+v, want the first's", det2.Source)
	}
	d.MustCLI("vm", "rm", "deb")
	d.MustCLI("image", "rm", "deb", "deb2")
	if left := d.Leftovers(t, 2); len(left) > 0 {
		t.Errorf("leftovers: %v", left)
	}
}

// hostNetns names the host's network namespace for the test (ip netns
// attach), so a daemon in a namespace of its own downloads through it
// (build_netns).
func hostNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("bgk-host-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "attach", name, fmt.Sprint(os.Getpid())).CombinedOutput(); err != nil && !strings.Contains(string(out), "exists") {
		t.Fatalf("ip netns attach: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// TestOCIDockerfileInstallsSSH builds a Dockerfile with buildah on top of
// the cached Debian base (FROM an oci-archive: reference: no registry is
// reachable) that removes the SSH server; the import installs it again
// with the image's apt in the build sandbox (downloads from Debian's
// archive through build_netns), and the VM boots and answers.
func TestOCIDockerfileInstallsSSH(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "buildah")
	dir := t.TempDir()
	base := filepath.Join(dir, "debian.tar")
	if _, err := ocitest.OCIArchive(base, []ocitest.Layer{{Path: debianCacheTar(t)}}, ocitest.Options{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}); err != nil {
		t.Fatal(err)
	}
	// The builder's storage is the test's, and so is what is left in it.
	storage := filepath.Join(dir, "storage.conf")
	os.WriteFile(storage, []byte(fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(dir, "graph"), filepath.Join(dir, "run"))), 0o644)
	t.Setenv("CONTAINERS_STORAGE_CONF", storage)
	ctxDir := filepath.Join(dir, "ctx")
	os.Mkdir(ctxDir, 0o755)
	os.WriteFile(filepath.Join(ctxDir, "marker"), []byte("copied from the context\n"), 0o644)
	dockerfile := filepath.Join(dir, "Dockerfile")
	os.WriteFile(dockerfile, []byte(fmt.Sprintf(`FROM oci-archive:%s
RUN apt-get purge -y openssh-server openssh-sftp-server && test ! -e /usr/sbin/sshd
COPY marker /opt/marker
ENV BUILT=yes
WORKDIR /opt
`, base)), 0o644)

	d := harness.NewE2EDaemon(t, a, fmt.Sprintf("build_netns = %q\n", hostNetns(t)))
	r := d.MustCLI("image", "build", "dk", "--dockerfile", dockerfile, "--context", ctxDir, "--kernel", a.Kernel)
	if !strings.Contains(r.Stderr, "] dockerfile: STEP 2/5: RUN apt-get purge") || !strings.Contains(r.Stderr, "] ssh: the image has no SSH server: installing openssh-server with apt") {
		t.Errorf("progress:\n%s", r.Stderr)
	}
	if !strings.Contains(r.Stdout, "openssh-server installed with apt") {
		t.Errorf("result: %s", r.Stdout)
	}
	det := inspectImage(t, d, "dk")
	if s := det.Source; s == nil || s.Kind != "dockerfile" || s.Reference != dockerfile || s.SSHInstalledWith != "apt" || s.Init != "systemd" {
		t.Errorf("source: %+v", det.Source)
	}
	// The image banger built is gone from the builder's storage; the
	// base its FROM pulled stays, as the builder's cache.
	out, err := exec.Command("buildah", "images", "-q").Output()
	if err != nil {
		t.Fatalf("buildah images: %v", err)
	}
	for _, id := range strings.Fields(string(out)) {
		env, _ := exec.Command("buildah", "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Env}}", id).Output()
		if strings.Contains(string(env), "BUILT=yes") {
			t.Errorf("the build left its image %s in the builder's storage", id)
		}
	}
	if len(strings.Fields(string(out))) != 1 {
		t.Errorf("builder's storage after the build: %q, want only the base image", out)
	}
	d.MustCLI(append([]string{"vm", "create", "dk", "--image", "dk"}, small...)...)
	r = d.MustCLI("exec", "dk", "--", "sh", "-c", `pwd; cat marker; echo "$BUILT"; dpkg-query -W -f '${Status}\n' openssh-server; stat -c %U /usr/sbin/sshd /etc/ssh/sshd_config`)
	if want := "/opt\ncopied from the context\nyes\ninstall ok installed\nroot\nroot\n"; r.Stdout != want {
		t.Errorf("in the guest:\n%s\nwant:\n%s", r.Stdout, want)
	}
	d.MustCLI("vm", "rm", "--force", "dk")
}
