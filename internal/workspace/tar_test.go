package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/hostexec"
)

// fakeInfo is an fs.FileInfo for HeaderFor's table.
type fakeInfo struct {
	mode fs.FileMode
	size int64
}

func (f fakeInfo) Name() string       { return "x" }
func (f fakeInfo) Size() int64        { return f.size }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Unix(1700000000, 0) }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

func TestHeaderFor(t *testing.T) {
	tests := []struct {
		name   string
		entry  string
		fi     fakeInfo
		link   string
		modes  Modes
		want   *tar.Header
		errSub string
	}{
		{"regular keeps its mode", "run.sh", fakeInfo{0o755, 12}, "", Modes{},
			&tar.Header{Typeflag: tar.TypeReg, Name: "run.sh", Size: 12, Mode: 0o755}, ""},
		{"regular with an override", "cfg", fakeInfo{0o644, 3}, "", Modes{File: 0o600},
			&tar.Header{Typeflag: tar.TypeReg, Name: "cfg", Size: 3, Mode: 0o600}, ""},
		{"directory", "a/b", fakeInfo{fs.ModeDir | 0o700, 0}, "", Modes{},
			&tar.Header{Typeflag: tar.TypeDir, Name: "a/b/", Mode: 0o700}, ""},
		{"directory with an override", "d", fakeInfo{fs.ModeDir | 0o700, 0}, "", Modes{File: 0o600, Dir: 0o755},
			&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}, ""},
		{"symlink stored as a link", "outside", fakeInfo{fs.ModeSymlink | 0o777, 0}, "/etc/passwd", Modes{File: 0o600},
			&tar.Header{Typeflag: tar.TypeSymlink, Name: "outside", Linkname: "/etc/passwd", Mode: 0o777}, ""},
		{"fifo skipped", "p", fakeInfo{fs.ModeNamedPipe | 0o644, 0}, "", Modes{}, nil, ""},
		{"escaping name refused", "../x", fakeInfo{0o644, 1}, "", Modes{}, nil, "leaves"},
		{"absolute name refused", "/etc/x", fakeInfo{0o644, 1}, "", Modes{}, nil, "absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := HeaderFor(tt.entry, tt.fi, tt.link, tt.modes)
			if tt.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errSub) {
					t.Fatalf("err = %v, want %q", err, tt.errSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if got != nil {
					t.Fatalf("got %+v, want nil", got)
				}
				return
			}
			w := *tt.want
			w.ModTime = tt.fi.ModTime().Truncate(time.Second)
			w.Uname, w.Gname = "root", "root"
			if !reflect.DeepEqual(*got, w) {
				t.Errorf("got %+v\nwant %+v", *got, w)
			}
		})
	}
}

func TestCheckEntryName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"a/b/c", true}, {"dir/", true}, {".git/HEAD", true}, {"a..b", true},
		{"", false}, {".", false}, {"/abs", false}, {"..", false}, {"a/../b", false}, {"../x", false},
		{"a//b", false}, {"./a", false}, {"a/./b", false}, {"a\x00b", false},
	}
	for _, tt := range tests {
		if err := CheckEntryName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckEntryName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

// tarEntry is one entry of a read archive.
type tarEntry struct {
	typ     byte
	mode    int64
	link    string
	content string
}

func readTar(t *testing.T, r io.Reader) (map[string]tarEntry, []string) {
	t.Helper()
	out := map[string]tarEntry{}
	var order []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, order
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
		out[h.Name] = tarEntry{typ: h.Typeflag, mode: h.Mode, link: h.Linkname, content: string(b)}
		order = append(order, h.Name)
	}
}

func TestWriteRepo(t *testing.T) {
	isolateGit(t)
	ctx := context.Background()
	root, outside := testRepo(t)
	wt, err := ListWorkTree(ctx, hostexec.Real{}, root, false)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var c Counter
	if err := WriteRepo(ctx, &buf, RepoStream{Root: root, Paths: wt.Paths, GitDir: filepath.Join(root, ".git")}, &c, nil); err != nil {
		t.Fatal(err)
	}
	entries, order := readTar(t, &buf)

	// The symlink to a file outside the repository is a link; its
	// target's content is nowhere in the archive.
	if e := entries["outside"]; e.typ != tar.TypeSymlink || e.link != outside {
		t.Errorf("outside = %+v, want a symlink to %s", e, outside)
	}
	for name, e := range entries {
		if strings.Contains(e.content, "OUTSIDE-SECRET") {
			t.Errorf("%s carries the symlink target's content", name)
		}
	}
	// Modes kept; working tree content as on disk.
	if e := entries["run.sh"]; e.mode != 0o755 || e.typ != tar.TypeReg {
		t.Errorf("run.sh = %+v", e)
	}
	if e := entries["private.txt"]; e.mode != 0o600 {
		t.Errorf("private.txt mode %o", e.mode)
	}
	if e := entries["b.txt"]; e.content != "b3 unstaged\n" {
		t.Errorf("b.txt = %q", e.content)
	}
	// Ignored and deleted files are absent; the repository is there.
	for _, absent := range []string{"secret.log", "build/out.bin", "build/", "c.txt"} {
		if _, ok := entries[absent]; ok {
			t.Errorf("%s shipped", absent)
		}
	}
	for _, present := range []string{".git/", ".git/HEAD", ".git/index", "dir/", "dir/new2.txt", "new.txt"} {
		if _, ok := entries[present]; !ok {
			t.Errorf("%s missing", present)
		}
	}
	// A directory comes before what is in it.
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	if pos["dir/"] > pos["dir/new2.txt"] {
		t.Errorf("dir/ after its file: %q", order)
	}
	if c.Files() != int64(len(entries)) || c.Bytes() == 0 {
		t.Errorf("counter: %d files %d bytes, archive has %d entries", c.Files(), c.Bytes(), len(entries))
	}
}

func TestWriteRepoSkipsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "f"), "x", 0o644)
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
		t.Skip("no mkfifo:", err)
	}
	var warned []string
	var buf bytes.Buffer
	err := WriteRepo(context.Background(), &buf, RepoStream{Root: dir, Paths: []string{"f", "pipe"}}, nil, func(s string) { warned = append(warned, s) })
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := readTar(t, &buf)
	if _, ok := entries["pipe"]; ok || len(warned) != 1 {
		t.Errorf("pipe shipped or not warned: %v %q", entries, warned)
	}
	if _, ok := entries["f"]; !ok {
		t.Errorf("f missing")
	}
}

func TestWriteRepoRefusesEscapingPaths(t *testing.T) {
	dir := t.TempDir()
	err := WriteRepo(context.Background(), io.Discard, RepoStream{Root: dir, Paths: []string{"../etc/passwd"}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "leaves") {
		t.Errorf("err = %v", err)
	}
}

// TestWriteRepoPlainHeaders checks that a file with a sub-second mtime
// (as git checkouts write them) costs no PAX record, and that a long
// name still gets one.
func TestWriteRepoPlainHeaders(t *testing.T) {
	root := t.TempDir()
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 60)
	for _, p := range []string{"short.txt", long} {
		write(t, filepath.Join(root, p), "x\n", 0o644)
		if err := os.Chtimes(filepath.Join(root, p), time.Unix(1700000000, 123456789), time.Unix(1700000000, 123456789)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := WriteRepo(context.Background(), &buf, RepoStream{Root: root, Paths: []string{"short.txt", long}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	formats := map[string]tar.Format{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		formats[h.Name] = h.Format
		if h.Typeflag == tar.TypeReg && !h.ModTime.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s: mtime %v, want whole seconds", h.Name, h.ModTime)
		}
	}
	if formats["short.txt"] != tar.FormatUSTAR {
		t.Errorf("short.txt is %v, want a plain USTAR header", formats["short.txt"])
	}
	if _, ok := formats[long]; !ok {
		t.Errorf("long name lost: %v", formats)
	}
}
