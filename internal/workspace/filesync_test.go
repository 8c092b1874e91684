package workspace

import (
	"banger/internal/testutil"

	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/model"
)

func TestResolveFileSync(t *testing.T) {
	home := "/home/u"
	tests := []struct {
		name  string
		entry model.FileSyncEntry
		want  SyncItem
		code  string
	}{
		{"tilde", model.FileSyncEntry{Host: "~/.gitconfig", Guest: ".gitconfig"}, SyncItem{Host: "/home/u/.gitconfig", Guest: ".gitconfig"}, ""},
		{"relative host is under home", model.FileSyncEntry{Host: "dots/vimrc", Guest: "~/.vimrc", Mode: "0644"}, SyncItem{Host: "/home/u/dots/vimrc", Guest: ".vimrc", Mode: 0o644}, ""},
		{"absolute host", model.FileSyncEntry{Host: "/etc/motd", Guest: "/root/motd"}, SyncItem{Host: "/etc/motd", Guest: "motd"}, ""},
		{"home itself", model.FileSyncEntry{Host: "~", Guest: "home/"}, SyncItem{Host: "/home/u", Guest: "home"}, ""},
		{"nested guest", model.FileSyncEntry{Host: "~/.config/tool", Guest: ".config/tool/"}, SyncItem{Host: "/home/u/.config/tool", Guest: ".config/tool"}, ""},
		{"guest with ..", model.FileSyncEntry{Host: "~/x", Guest: "../etc/x"}, SyncItem{}, model.EINVALID},
		{"guest escaping midway", model.FileSyncEntry{Host: "~/x", Guest: "a/../../x"}, SyncItem{}, model.EINVALID},
		{"guest outside /root", model.FileSyncEntry{Host: "~/x", Guest: "/etc/x"}, SyncItem{}, model.EINVALID},
		{"guest is /root", model.FileSyncEntry{Host: "~/x", Guest: "/root"}, SyncItem{}, model.EINVALID},
		{"bad mode", model.FileSyncEntry{Host: "~/x", Guest: "x", Mode: "0999"}, SyncItem{}, model.EINVALID},
		{"empty host", model.FileSyncEntry{Host: " ", Guest: "x"}, SyncItem{}, model.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveFileSync([]model.FileSyncEntry{tt.entry}, home)
			if tt.code != "" {
				if model.ErrorCode(err) != tt.code {
					t.Fatalf("err = %v, want %s", err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, []SyncItem{tt.want}) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSyncDirMode(t *testing.T) {
	for in, want := range map[fs.FileMode]fs.FileMode{0o600: 0o700, 0o644: 0o755, 0o640: 0o750, 0o755: 0o755, 0o200: 0o200} {
		if got := SyncDirMode(in); got != want {
			t.Errorf("SyncDirMode(%o) = %o, want %o", in, got, want)
		}
	}
}

func TestWriteFileSync(t *testing.T) {
	home := t.TempDir()
	write(t, filepath.Join(home, ".gitconfig"), "[user]\n", 0o644)
	write(t, filepath.Join(home, "tool", "conf.toml"), "a = 1\n", 0o644)
	write(t, filepath.Join(home, "tool", "sub", "deep.txt"), "deep\n", 0o644)
	os.Symlink("/etc/hostname", filepath.Join(home, "tool", "link"))
	write(t, filepath.Join(home, "bin", "run"), "#!/bin/sh\n", 0o700)
	// A symlink named by an entry is followed.
	os.Symlink(filepath.Join(home, ".gitconfig"), filepath.Join(home, "gc-link"))

	items, err := ResolveFileSync([]model.FileSyncEntry{
		{Host: "~/.gitconfig", Guest: ".gitconfig"},
		{Host: "~/tool", Guest: ".config/tool"},
		{Host: "~/missing", Guest: "missing"},
		{Host: "bin/run", Guest: "bin/run", Mode: "0755"},
		{Host: "~/tool", Guest: "tool-private", Mode: "0640"},
		{Host: "~/gc-link", Guest: "gc"},
	}, home)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var warned []string
	n, err := WriteFileSync(context.Background(), &buf, items, nil, func(s string) { warned = append(warned, s) })
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 || len(warned) != 1 || !strings.Contains(warned[0], filepath.Join(home, "missing")) {
		t.Errorf("copied %d, warned %q", n, warned)
	}
	if _, _, err := CheckFileSyncTar(bytes.NewReader(buf.Bytes())); err != nil {
		t.Errorf("own archive refused: %v", err)
	}
	entries, _ := readTar(t, &buf)
	want := map[string]tarEntry{
		".gitconfig":                {typ: tar.TypeReg, mode: 0o600, content: "[user]\n"},
		".config/tool/":             {typ: tar.TypeDir, mode: 0o755},
		".config/tool/conf.toml":    {typ: tar.TypeReg, mode: 0o600, content: "a = 1\n"},
		".config/tool/link":         {typ: tar.TypeSymlink, mode: 0o777, link: "/etc/hostname"},
		".config/tool/sub/":         {typ: tar.TypeDir, mode: 0o755},
		".config/tool/sub/deep.txt": {typ: tar.TypeReg, mode: 0o600, content: "deep\n"},
		"bin/run":                   {typ: tar.TypeReg, mode: 0o755, content: "#!/bin/sh\n"},
		"tool-private/":             {typ: tar.TypeDir, mode: 0o750},
		"tool-private/conf.toml":    {typ: tar.TypeReg, mode: 0o640, content: "a = 1\n"},
		"tool-private/link":         {typ: tar.TypeSymlink, mode: 0o777, link: "/etc/hostname"},
		"tool-private/sub/":         {typ: tar.TypeDir, mode: 0o750},
		"tool-private/sub/deep.txt": {typ: tar.TypeReg, mode: 0o640, content: "deep\n"},
		"gc":                        {typ: tar.TypeReg, mode: 0o600, content: "[user]\n"},
	}
	if !reflect.DeepEqual(entries, want) {
		t.Errorf("archive:\n%+v\nwant:\n%+v", entries, want)
	}
}

func TestWriteFileSyncUnreadable(t *testing.T) {
	// Root reads everything: check it as an unprivileged user.
	if testutil.RerunAsNobody(t) {
		return
	}
	home := t.TempDir()
	write(t, filepath.Join(home, "secret"), "s", 0o000)
	items, _ := ResolveFileSync([]model.FileSyncEntry{{Host: "~/secret", Guest: "secret"}}, home)
	_, err := WriteFileSync(context.Background(), &bytes.Buffer{}, items, nil, nil)
	if model.ErrorCode(err) != model.EFORBIDDEN {
		t.Errorf("unreadable: %v", err)
	}
}

func TestCheckFileSyncTar(t *testing.T) {
	build := func(hs ...*tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			tw.WriteHeader(h)
			if h.Size > 0 {
				tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	reg := func(name string) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: 1, Mode: 0o600}
	}
	tests := []struct {
		name    string
		archive []byte
		ok      bool
	}{
		{"files and dirs", build(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}, reg("d/f"), &tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "/etc"}), true},
		{"dot dot", build(reg("../etc/passwd")), false},
		{"dot dot inside", build(reg("a/../../x")), false},
		{"absolute", build(reg("/etc/passwd")), false},
		{"beneath a symlink", build(&tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "/etc"}, reg("l/passwd")), false},
		{"hard link", build(&tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "/etc/shadow"}), false},
		{"device", build(&tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 1, Devminor: 1}), false},
		{"garbage", []byte("not a tar at all, really not"), false},
	}
	for _, tt := range tests {
		_, _, err := CheckFileSyncTar(bytes.NewReader(tt.archive))
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && model.ErrorCode(err) != model.EINVALID {
			t.Errorf("%s: code %s", tt.name, model.ErrorCode(err))
		}
	}
}
