package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// ent is one entry of a test layer.
type ent struct {
	name, link string
	typ        byte
	mode       int64
	uid, gid   int
	data       string
	xattrs     map[string]string
}

func file(name, data string, mode int64) ent {
	return ent{name: name, typ: tar.TypeReg, data: data, mode: mode}
}
func dir(name string, mode int64) ent { return ent{name: name, typ: tar.TypeDir, mode: mode} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent { return ent{name: name, typ: tar.TypeLink, link: target} }

// layerTar returns a tar of es.
func layerTar(t testing.TB, es ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Size: int64(len(e.data)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testRoot makes <tmp>/root (the image) next to <tmp>/outside, which
// holds a file a hostile layer must not reach.
func testRoot(t *testing.T) (root, outside string) {
	t.Helper()
	dir := t.TempDir()
	root, outside = filepath.Join(dir, "root"), filepath.Join(dir, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, outside
}

func applyLayers(t *testing.T, root string, layers ...[]byte) error {
	t.Helper()
	a, err := OpenApplier(root)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.KeepOwners = os.Geteuid() == 0
	for _, l := range layers {
		if err := a.Apply(context.Background(), bytes.NewReader(l)); err != nil {
			return err
		}
	}
	return nil
}

// tree lists root's entries as "path type mode [-> target] [data]".
func tree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		line := rel
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.IsDir():
			line += "/"
		case fi.Mode()&os.ModeNamedPipe != 0:
			line += " fifo"
		default:
			b, _ := os.ReadFile(p)
			line += " " + strings.TrimSpace(string(b))
		}
		lines = append(lines, line)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func checkOutside(t *testing.T, outside string) {
	t.Helper()
	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Errorf("outside holds %d entries, want only the secret", len(entries))
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "host\n" {
		t.Errorf("outside/secret = %q: a layer wrote through", b)
	}
}

func TestApplyKeepsModesLinksAndAttributes(t *testing.T) {
	root, outside := testRoot(t)
	setuid := file("usr/bin/su", "su", 0o4755)
	setuid.uid, setuid.gid = 0, 0
	owned := file("home/u/notes", "mine", 0o640)
	owned.uid, owned.gid = 1000, 1001
	withAttr := file("usr/bin/ping", "ping", 0o755)
	withAttr.xattrs = map[string]string{"user.banger": "yes", "trusted.overlay.opaque": "y"}
	l1 := layerTar(t,
		dir("usr/", 0o755), dir("usr/bin/", 0o755), setuid, withAttr,
		// A parent never listed is made, as tar does.
		owned,
		symlink("bin", "usr/bin"),
		symlink("etc/alternatives/editor", "/usr/bin/vi"),
		hardlink("usr/bin/su2", "usr/bin/su"),
		ent{name: "run/fifo", typ: tar.TypeFifo, mode: 0o620},
		ent{name: "dev/sda", typ: tar.TypeBlock, mode: 0o666},
		dir("tmp/", 0o1777),
	)
	if err := applyLayers(t, root, l1); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"bin -> usr/bin", "dev/", "etc/", "etc/alternatives/", "etc/alternatives/editor -> /usr/bin/vi",
		"home/", "home/u/", "home/u/notes mine", "run/", "run/fifo fifo", "tmp/",
		"usr/", "usr/bin/", "usr/bin/ping ping", "usr/bin/su su", "usr/bin/su2 su",
	}, "\n")
	if got := tree(t, root); got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
	for p, mode := range map[string]os.FileMode{
		"usr/bin/su": 0o755 | os.ModeSetuid, "tmp": 0o777 | os.ModeSticky | os.ModeDir,
		"home/u/notes": 0o640, "run/fifo": 0o620 | os.ModeNamedPipe,
	} {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), mode)
		}
	}
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(root, "usr/bin/su"), &a)
	unix.Lstat(filepath.Join(root, "usr/bin/su2"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("su2 is not a hard link of su (inodes %d, %d; links %d)", a.Ino, b.Ino, a.Nlink)
	}
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		unix.Lstat(filepath.Join(root, "home/u/notes"), &st)
		if st.Uid != 1000 || st.Gid != 1001 {
			t.Errorf("notes owned by %d:%d, want 1000:1001", st.Uid, st.Gid)
		}
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/ping"), "user.banger", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("user.banger = %q, %v; want yes", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/ping"), "trusted.overlay.opaque", buf); err == nil {
		t.Errorf("a trusted.* attribute was applied")
	}
	if fi, err := os.Lstat(filepath.Join(root, "usr/bin/ping")); err != nil || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("ping's mtime = %v, want the layer's", fi.ModTime())
	}
	checkOutside(t, outside)
}

func TestApplyWhiteoutsAndOpaqueDirectories(t *testing.T) {
	root, outside := testRoot(t)
	l1 := layerTar(t,
		file("a/b", "b", 0o644), file("a/c", "c", 0o644), file("d", "d", 0o644),
		dir("e/", 0o755), file("e/old1", "1", 0o644), dir("e/sub/", 0o755), file("e/sub/old2", "2", 0o644),
		dir("g/", 0o755), file("g/old", "o", 0o644),
		file("same", "s", 0o644),
	)
	l2 := layerTar(t,
		file("a/.wh.b", "", 0o644), file(".wh.d", "", 0o644),
		// The opaque marker after the layer's own entry: the new one stays.
		file("e/new", "n", 0o644), file("e/.wh..wh..opq", "", 0o644),
		// ...and before it.
		file("g/.wh..wh..opq", "", 0o644), file("g/new", "n", 0o644),
		// A whiteout of what this same layer made hides nothing.
		file("x", "x", 0o644), file(".wh.x", "", 0o644),
		// A whiteout of something that never was is fine.
		file(".wh.never", "", 0o644),
		// aufs metadata is not part of the image.
		file(".wh..wh.plnk/123.456", "junk", 0o644),
	)
	if err := applyLayers(t, root, l1, l2); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{"a/", "a/c c", "e/", "e/new n", "g/", "g/new n", "same s", "x x"}, "\n")
	if got := tree(t, root); got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
	checkOutside(t, outside)
}

func TestApplyReplacesAcrossLayers(t *testing.T) {
	root, outside := testRoot(t)
	l1 := layerTar(t, file("x", "file", 0o644), dir("y/", 0o755), file("y/inner", "i", 0o644),
		symlink("z", filepath.Join(outside, "secret")), file("w", "w", 0o644))
	l2 := layerTar(t,
		// A file becomes a directory, a directory a file.
		dir("x/", 0o755), file("x/child", "c", 0o644),
		file("y", "now a file", 0o600),
		// A regular file replaces a link to the host: it is not written
		// through the link.
		file("z", "replaced", 0o644),
		// A symbolic link replaces a file.
		symlink("w", "x/child"),
	)
	if err := applyLayers(t, root, l1, l2); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{"w -> x/child", "x/", "x/child c", "y now a file", "z replaced"}, "\n")
	if got := tree(t, root); got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
	checkOutside(t, outside)
}

// TestApplyRefusesHostileLayers feeds layers that try to reach outside
// the root: each is refused with EINVALID, naming the layer, and nothing
// outside changes.
func TestApplyRefusesHostileLayers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers func(outside string) [][]byte
		want   string
	}{
		{"dotdot", func(string) [][]byte {
			return [][]byte{layerTar(t, file("../outside/secret", "pwned", 0o644))}
		}, `layer 1: entry "../outside/secret": climbs out`},
		{"dotdot-inside", func(string) [][]byte {
			return [][]byte{layerTar(t, file("a/../../outside/new", "pwned", 0o644))}
		}, "climbs out"},
		{"absolute-link-then-write", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("etc", outside), file("etc/secret", "pwned", 0o644))}
		}, `entry "etc/secret": etc goes through a symbolic link`},
		{"relative-link-escape", func(string) [][]byte {
			return [][]byte{layerTar(t, symlink("up", "../../../../../../outside"), file("up/new", "pwned", 0o644))}
		}, "symbolic link"},
		{"link-from-lower-layer", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("l", outside)), layerTar(t, file("l/new", "pwned", 0o644))}
		}, `layer 2: entry "l/new": l goes through a symbolic link`},
		{"whiteout-through-link", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("l", outside)), layerTar(t, file("l/.wh.secret", "", 0o644))}
		}, "symbolic link"},
		{"opaque-through-link", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("l", outside)), layerTar(t, file("l/.wh..wh..opq", "", 0o644))}
		}, "symbolic link"},
		{"hardlink-escape", func(string) [][]byte {
			return [][]byte{layerTar(t, hardlink("h", "../outside/secret"))}
		}, "climbs out"},
		{"hardlink-through-link", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("l", outside), hardlink("h", "l/secret"))}
		}, "symbolic link"},
		{"hardlink-host-path", func(outside string) [][]byte {
			// An absolute target is inside the image, where it is missing.
			return [][]byte{layerTar(t, hardlink("h", filepath.Join(outside, "secret")))}
		}, "is not in the image"},
		{"dir-through-link", func(outside string) [][]byte {
			return [][]byte{layerTar(t, symlink("l", outside), dir("l/sub/", 0o755))}
		}, "symbolic link"},
		{"not-a-tar", func(string) [][]byte {
			return [][]byte{bytes.Repeat([]byte("this is not a tar "), 64)}
		}, "not a tar stream"},
		{"truncated-file", func(string) [][]byte {
			l := layerTar(t, file("big", strings.Repeat("x", 4096), 0o644))
			return [][]byte{l[:512+100]}
		}, "ends inside this file"},
		{"root-not-dir", func(string) [][]byte {
			return [][]byte{layerTar(t, file(".", "x", 0o644))}
		}, "root of an image must be a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, outside := testRoot(t)
			err := applyLayers(t, root, tc.layers(outside)...)
			if err == nil {
				t.Fatalf("applied; want a refusal. tree:\n%s", tree(t, root))
			}
			if model.ErrorCode(err) != model.EINVALID {
				t.Errorf("code %s, want EINVALID: %v", model.ErrorCode(err), err)
			}
			var le *LayerError
			if !errors.As(err, &le) {
				t.Errorf("not a *LayerError: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			checkOutside(t, outside)
		})
	}
}

func TestApplyLimits(t *testing.T) {
	root, _ := testRoot(t)
	a, err := OpenApplier(root)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.MaxBytes = 1000
	err = a.Apply(context.Background(), bytes.NewReader(layerTar(t, file("a", strings.Repeat("x", 600), 0o644), file("b", strings.Repeat("x", 600), 0o644))))
	if model.ErrorCode(err) != model.ELIMIT {
		t.Errorf("over MaxBytes: %v, want ELIMIT", err)
	}
	root2, _ := testRoot(t)
	b, _ := OpenApplier(root2)
	defer b.Close()
	b.MaxEntries = 2
	err = b.Apply(context.Background(), bytes.NewReader(layerTar(t, file("a", "", 0o644), file("b", "", 0o644), file("c", "", 0o644))))
	if model.ErrorCode(err) != model.ELIMIT {
		t.Errorf("over MaxEntries: %v, want ELIMIT", err)
	}
}

func TestCleanName(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"./usr/bin/", "usr/bin", ""},
		{"/etc//passwd", "etc/passwd", ""},
		{".", "", ""},
		{"a/./b", "a/b", ""},
		{"..", "", "climbs out"},
		{"a/../b", "", "climbs out"},
		{"a\x00b", "", "NUL"},
		{strings.Repeat("a/", 2048), "", "over the 4095"},
	} {
		got, err := cleanName(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cleanName(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
