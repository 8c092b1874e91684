package e2e

import (
	"archive/tar"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/testutil"
)

// layerWriter writes one layer tar, as a container engine would.
type layerWriter struct {
	t  testing.TB
	f  *os.File
	tw *tar.Writer
}

func newLayer(t testing.TB, path string) *layerWriter {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	return &layerWriter{t: t, f: f, tw: tar.NewWriter(f)}
}

var layerTime = time.Unix(1767225600, 0)

func (l *layerWriter) header(h *tar.Header) {
	l.t.Helper()
	h.ModTime = layerTime
	h.Format = tar.FormatPAX
	if err := l.tw.WriteHeader(h); err != nil {
		l.t.Fatal(err)
	}
}

func (l *layerWriter) dir(name string, mode int64, uid, gid int) {
	l.header(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode, Uid: uid, Gid: gid})
}

func (l *layerWriter) file(name, data string, mode int64, uid, gid int) {
	l.t.Helper()
	l.header(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(data))})
	if _, err := l.tw.Write([]byte(data)); err != nil {
		l.t.Fatal(err)
	}
}

// copy adds the host (or extracted) file src as name.
func (l *layerWriter) copy(src, name string, mode int64) {
	l.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		l.t.Fatal(err)
	}
	l.file(name, string(b), mode, 0, 0)
}

func (l *layerWriter) symlink(name, target string) {
	l.header(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
}

func (l *layerWriter) hardlink(name, target string) {
	l.header(&tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target})
}

func (l *layerWriter) close() string {
	l.t.Helper()
	if err := l.tw.Close(); err != nil {
		l.t.Fatal(err)
	}
	if err := l.f.Close(); err != nil {
		l.t.Fatal(err)
	}
	return l.f.Name()
}

// debianCacheTar is the Debian base system the image builder cached
// ($BANGER_TEST_CACHE/rootfs-*.tar).
func debianCacheTar(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("BANGER_TEST_CACHE")
	matches, _ := filepath.Glob(filepath.Join(dir, "rootfs-*.tar"))
	if dir == "" || len(matches) == 0 {
		testutil.Unmet(t, "BANGER_TEST_CACHE holds no rootfs-*.tar (the image builder's Debian base, cached by scripts/prepare-artifacts.sh)")
	}
	return matches[0]
}

var (
	debianOnce sync.Once
	debianDir  string
	debianErr  error
)

// debianRoot extracts the Debian base once per test binary, to take
// files from.
func debianRoot(t testing.TB) string {
	t.Helper()
	cache := debianCacheTar(t)
	debianOnce.Do(func() {
		dir, err := os.MkdirTemp("/var/tmp", "bgk-debian-")
		if err != nil {
			debianErr = err
			return
		}
		out, err := exec.Command("tar", "-xf", cache, "-C", dir).CombinedOutput()
		if err != nil {
			debianErr = fmt.Errorf("tar -x %s: %v: %s", cache, err, out)
		}
		debianDir = dir
	})
	if debianErr != nil {
		t.Fatal(debianErr)
	}
	return debianDir
}

// removeDebianRoot removes the tree debianRoot extracted, once every
// test of the binary has run.
func removeDebianRoot() {
	if debianDir != "" {
		os.RemoveAll(debianDir)
	}
}

// inRoot resolves p (absolute inside root) through the links of root's
// tree, as the guest would, and returns the host path.
func inRoot(t testing.TB, root, p string) string {
	t.Helper()
	cur := "/"
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for i := 0; i < len(parts); i++ {
		next := path.Join(cur, parts[i])
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return filepath.Join(root, next)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(filepath.Join(root, next))
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			rest := append(strings.Split(strings.Trim(target, "/"), "/"), parts[i+1:]...)
			cur, parts, i = "/", rest, -1
			continue
		}
		cur = next
	}
	return filepath.Join(root, cur)
}

// elfClosure returns the files an executable of root needs to run: the
// dynamic loader and every library, by the name the loader looks for.
func elfClosure(t testing.TB, root, bin string) map[string]string {
	t.Helper()
	libDirs := []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	out := map[string]string{}
	var walk func(p string)
	walk = func(host string) {
		f, err := elf.Open(host)
		if err != nil {
			t.Fatalf("elf %s: %v", host, err)
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b, _ := io.ReadAll(prog.Open())
				interp := strings.TrimRight(string(b), "\x00")
				if _, ok := out[interp]; !ok {
					out[interp] = inRoot(t, root, interp)
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			t.Fatal(err)
		}
		for _, lib := range libs {
			dst := "/usr/lib/x86_64-linux-gnu/" + lib
			if _, ok := out[dst]; ok {
				continue
			}
			found := ""
			for _, d := range libDirs {
				if h := inRoot(t, root, path.Join(d, lib)); fileExists(h) {
					found = h
					break
				}
			}
			if found == "" {
				t.Fatalf("library %s of %s not in %s", lib, host, root)
			}
			out[dst] = found
			walk(found)
		}
	}
	walk(inRoot(t, root, bin))
	return out
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// busyboxApplets are linked to /bin/busybox in the Alpine-like image.
var busyboxApplets = []string{"sh", "ash", "ls", "cat", "echo", "id", "env", "pwd", "mkdir", "rm", "sleep", "uname",
	"hostname", "ps", "mount", "umount", "stat", "readlink", "test", "grep", "wc", "touch", "chmod", "sed", "head",
	"tail", "true", "false", "kill", "sync", "ln", "cp", "mv", "tr", "cut", "sort", "whoami", "printf", "find", "df"}

// busyboxLayers writes an Alpine-like image without systemd or a package
// manager: busybox-static for its userland, OpenSSH's sshd with its
// libraries from the Debian base, and a third layer that exercises the
// layer format (a whiteout, an opaque directory, a file replaced by a
// directory, a hard link to a setuid file, links). Its config runs
// sessions as "app" in /home/app with a PATH and a variable of its own.
func busyboxLayers(t testing.TB, dir string) []string {
	t.Helper()
	deb := debianRoot(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		testutil.Unmet(t, "busybox not on PATH: apt-get install busybox-static")
	}
	l1 := newLayer(t, filepath.Join(dir, "bb1.tar"))
	for _, d := range []string{"bin", "sbin", "etc", "dev", "proc", "sys", "run", "var", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin", "home", "data", "opq"} {
		l1.dir(d, 0o755, 0, 0)
	}
	l1.dir("root", 0o700, 0, 0)
	l1.dir("tmp", 0o1777, 0, 0)
	l1.dir("home/app", 0o755, 1000, 1000)
	l1.copy(bb, "bin/busybox", 0o755)
	for _, a := range busyboxApplets {
		l1.symlink("bin/"+a, "/bin/busybox")
	}
	for _, a := range []string{"init", "poweroff", "reboot", "halt"} {
		l1.symlink("sbin/"+a, "/bin/busybox")
	}
	l1.file("etc/passwd", "root:*:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644, 0, 0)
	l1.file("etc/group", "root:x:0:\napp:x:1000:\nwheel:x:10:app\nnogroup:x:65534:\n", 0o644, 0, 0)
	l1.file("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0o644, 0, 0)
	l1.file("etc/os-release", "ID=bangerbox\nNAME=\"banger busybox\"\n", 0o644, 0, 0)
	l1.file("etc/motd", "motd of layer 1\n", 0o644, 0, 0)
	l1.file("data/old1", "old1\n", 0o644, 0, 0)
	l1.file("data/old2", "old2\n", 0o644, 0, 0)
	l1.file("opq/x", "x\n", 0o644, 0, 0)
	l1.file("opq/y", "y\n", 0o644, 0, 0)
	l1.file("replace", "a file in layer 1\n", 0o644, 0, 0)
	paths := []string{l1.close()}

	l2 := newLayer(t, filepath.Join(dir, "bb2.tar"))
	l2.dir("usr/lib", 0o755, 0, 0)
	l2.dir("usr/lib/x86_64-linux-gnu", 0o755, 0, 0)
	l2.dir("lib64", 0o755, 0, 0)
	l2.copy(inRoot(t, deb, "/usr/sbin/sshd"), "usr/sbin/sshd", 0o755)
	for dst, src := range elfClosure(t, deb, "/usr/sbin/sshd") {
		l2.copy(src, strings.TrimPrefix(dst, "/"), 0o755)
	}
	paths = append(paths, l2.close())

	l3 := newLayer(t, filepath.Join(dir, "bb3.tar"))
	l3.file("data/.wh.old1", "", 0o644, 0, 0)
	l3.file("opq/.wh..wh..opq", "", 0o644, 0, 0)
	l3.file("opq/z", "z\n", 0o644, 0, 0)
	l3.dir("replace", 0o755, 0, 0)
	l3.file("replace/inner", "now a directory\n", 0o644, 0, 0)
	l3.file("usr/local/bin/suidtest", "#!/bin/sh\necho suid\n", 0o4755, 0, 0)
	l3.hardlink("usr/local/bin/suidlink", "usr/local/bin/suidtest")
	l3.symlink("usr/local/bin/abs", "/bin/busybox")
	l3.symlink("usr/local/bin/rel", "../../../bin/busybox")
	l3.file("etc/.wh.motd", "", 0o644, 0, 0)
	return append(paths, l3.close())
}

// busyboxEnv is the busybox image's config.
var busyboxEnv = []string{"PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin", "GREETING=hello from the image"}

// debianLayer writes a layer on top of the Debian base that adds a user
// sessions run as, a working directory, and each kind of layer entry:
// a whiteout (/etc/motd), an opaque directory (/etc/update-motd.d), a
// file replaced by a directory (/etc/issue.net), a setuid file and its
// hard link, an absolute symbolic link.
func debianLayer(t testing.TB, dir string) string {
	t.Helper()
	deb := debianRoot(t)
	passwd, err := os.ReadFile(filepath.Join(deb, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	group, _ := os.ReadFile(filepath.Join(deb, "etc/group"))
	l := newLayer(t, filepath.Join(dir, "deb2.tar"))
	l.file("etc/passwd", string(passwd)+"dev:x:1000:1000:dev:/home/dev:/bin/bash\n", 0o644, 0, 0)
	l.file("etc/group", string(group)+"dev:x:1000:\n", 0o644, 0, 0)
	l.dir("home/dev", 0o755, 1000, 1000)
	l.dir("srv/app", 0o755, 1000, 1000)
	l.file("srv/app/README", "the app\n", 0o644, 1000, 1000)
	l.file("etc/.wh.motd", "", 0o644, 0, 0)
	l.file("etc/update-motd.d/.wh..wh..opq", "", 0o644, 0, 0)
	l.file("etc/update-motd.d/99-banger", "#!/bin/sh\necho banger\n", 0o755, 0, 0)
	l.dir("etc/issue.net", 0o755, 0, 0)
	l.file("etc/issue.net/inner", "now a directory\n", 0o644, 0, 0)
	l.file("usr/local/bin/tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0)
	l.hardlink("usr/local/bin/tool-link", "usr/local/bin/tool")
	l.symlink("usr/local/bin/abs-link", "/usr/bin/env")
	return l.close()
}

var debianEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "APP_MODE=test"}
