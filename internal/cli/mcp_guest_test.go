package cli

import (
	"strings"
	"testing"
)

func TestExecCommandLine(t *testing.T) {
	tests := []struct {
		in      execIn
		want    string
		wantErr string
	}{
		{execIn{Argv: []string{"git", "status"}}, `cd -- '/root' && exec timeout -k 5 60 env -- 'git' 'status'`, ""},
		{execIn{Command: "make test | tail", Cwd: "proj"}, `cd -- '/root/proj' && exec timeout -k 5 60 env -- 'sh' '-c' 'make test | tail'`, ""},
		{execIn{Argv: []string{"echo", "it's"}, Cwd: "/tmp/../etc", Env: map[string]string{"B": "2", "A": "x y"}},
			`cd -- '/etc' && exec timeout -k 5 60 env -- 'A=x y' 'B=2' 'echo' 'it'\''s'`, ""},
		// A hostile argument stays one word.
		{execIn{Argv: []string{"ls", "$(reboot)", "; rm -rf /"}}, `cd -- '/root' && exec timeout -k 5 60 env -- 'ls' '$(reboot)' '; rm -rf /'`, ""},
		{execIn{}, "", "give the command to run"},
		{execIn{Argv: []string{"a"}, Command: "b"}, "", "not both"},
		{execIn{Argv: []string{"X=1", "sh"}}, "", "must name a program"},
		{execIn{Argv: []string{""}}, "", "must name a program"},
		{execIn{Argv: []string{"a\x00b"}}, "", "NUL"},
		{execIn{Argv: []string{"true"}, Env: map[string]string{"A-B": "1"}}, "", `env "A-B"`},
		{execIn{Argv: []string{"true"}, Env: map[string]string{"A": "\x00"}}, "", "NUL"},
		{execIn{Argv: []string{"true"}, Cwd: "a\x00"}, "", "cwd"},
	}
	for _, tt := range tests {
		got, err := execCommandLine(tt.in, 60)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("execCommandLine(%+v) = %q, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("execCommandLine(%+v) =\n  %q, %v\nwant\n  %q", tt.in, got, err, tt.want)
		}
	}
}

func TestCapWriter(t *testing.T) {
	c := &capWriter{max: 8}
	c.Write([]byte("abc"))
	if c.truncated() || c.text() != "abc" {
		t.Errorf("short: %q %v", c.text(), c.truncated())
	}
	for _, s := range []string{"defgh", "ijklmnop", "qrstuvwxyz"} {
		c.Write([]byte(s))
	}
	if !c.truncated() || c.n != 26 || c.text() != "abcd\n[... 18 bytes not shown ...]\nwxyz" {
		t.Errorf("long: %q %v %d", c.text(), c.truncated(), c.n)
	}
	c = &capWriter{max: 8}
	c.Write([]byte("12345678"))
	if c.truncated() || c.text() != "12345678" {
		t.Errorf("exactly the cap: %q", c.text())
	}
	c = &capWriter{max: 4}
	c.Write([]byte{'a', 0xff, 'b'})
	if c.text() != "a\uFFFDb" {
		t.Errorf("invalid UTF-8: %q", c.text())
	}
}

func TestClassifyContent(t *testing.T) {
	tests := []struct {
		b      string
		more   bool
		n      int
		binary bool
	}{
		{"hello", false, 5, false},
		{"h\xc3\xa9", false, 3, false},
		{"h\xc3", true, 1, false},           // é cut at the window's end
		{"h\xe2\x82", true, 1, false},       // € cut
		{"h\xc3", false, 2, true},           // the file ends there: not text
		{"a\x00b", false, 3, true},          // NUL
		{"\xff\xfe\xfd\xfc", true, 4, true}, // not UTF-8 at all
		{"", false, 0, false},
	}
	for _, tt := range tests {
		n, bin := classifyContent([]byte(tt.b), tt.more)
		if n != tt.n || bin != tt.binary {
			t.Errorf("classifyContent(%q, %v) = %d, %v; want %d, %v", tt.b, tt.more, n, bin, tt.n, tt.binary)
		}
	}
}

func TestParseListing(t *testing.T) {
	raw := "f 12 644 1700000000.5\x00b.txt\x00\x00d 4096 755 1700000001.0\x00a\x00\x00l 9 777 1.0\x00a/link\x00../b.txt\x00p 0 600 1.0\x00fifo\x00\x00"
	entries, truncated, err := parseListing([]byte(raw), 10)
	if err != nil || truncated || len(entries) != 4 {
		t.Fatalf("parseListing = %+v, %v, %v", entries, truncated, err)
	}
	if e := entries[0]; e.Name != "a" || e.Type != "dir" || e.Mode != "0755" {
		t.Errorf("first: %+v", e)
	}
	if e := entries[1]; e.Name != "a/link" || e.Type != "symlink" || e.Target != "../b.txt" {
		t.Errorf("link: %+v", e)
	}
	if e := entries[2]; e.Name != "b.txt" || e.Size != 12 || e.MTime != 1700000000.5 {
		t.Errorf("file: %+v", e)
	}
	if _, truncated, _ := parseListing([]byte(raw), 3); !truncated {
		t.Error("4 entries with a cap of 3: not truncated")
	}
	for _, bad := range []string{"f 1 644 1\x00x\x00", "f 1 644\x00x\x00\x00", "f 1 644 1 extra\x00x\x00\x00"} {
		if _, _, err := parseListing([]byte(bad), 10); err == nil {
			t.Errorf("parseListing(%q) accepted a malformed listing", bad)
		}
	}
}

func TestGuestPath(t *testing.T) {
	for in, want := range map[string]string{"": "/root", "a/b": "/root/a/b", "/etc/../tmp/": "/tmp", "../x": "/x"} {
		if got, err := guestPath(in); err != nil || got != want {
			t.Errorf("guestPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := guestPath("a\x00"); err == nil {
		t.Error("a NUL byte accepted")
	}
}
