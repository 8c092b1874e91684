package termsafe

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		sgr            bool
	}{
		{name: "plain", in: "hello, world\n\tindented\n", want: "hello, world\n\tindented\n"},
		{name: "utf-8 text", in: "héllo — ünïcode 日本\n", want: "héllo — ünïcode 日本\n"},
		{name: "clear screen", in: "a\x1b[2Jb", want: `a\x1b[2Jb`},
		{name: "title", in: "\x1b]0;pwned\x07", want: `\x1b]0;pwned\x07`},
		{name: "clipboard write", in: "\x1b]52;c;ZXZpbA==\x1b\\", want: `\x1b]52;c;ZXZpbA==\x1b\`},
		{name: "carriage return overwrite", in: "rm -rf /\rls      \n", want: `rm -rf /\rls      ` + "\n"},
		{name: "backspace, bell, nul, del", in: "a\bb\x07c\x00d\x7fe", want: `a\x08b\x07c\x00d\x7fe`},
		{name: "8-bit CSI byte", in: "x\x9b2Jy", want: `x\x9b2Jy`},
		{name: "C1 CSI as UTF-8", in: "x\u009b2Jy", want: `x\u009b2Jy`},
		{name: "bidi override", in: "access\u202e\u2066 // admin\u2069\u2066", want: `access\u202e\u2066 // admin\u2069\u2066`},
		{name: "invalid utf-8", in: "\xff\xfe ok \xe6\x97", want: `\xff\xfe ok \xe6\x97`},
		{name: "sgr refused by default", in: "\x1b[31mred\x1b[m", want: `\x1b[31mred\x1b[m`},
		{name: "sgr allowed", in: "\x1b[1;31mred\x1b[m\n", want: "\x1b[1;31mred\x1b[m\n", sgr: true},
		{name: "non-sgr csi with sgr allowed", in: "\x1b[2J\x1b[10;10H\x1b[?1049h", want: `\x1b[2J\x1b[10;10H\x1b[?1049h`, sgr: true},
		{name: "osc with sgr allowed", in: "\x1b]0;t\x07", want: `\x1b]0;t\x07`, sgr: true},
		{name: "overlong sgr", in: "\x1b[" + strings.Repeat("1;", 40) + "m", want: `\x1b[` + strings.Repeat("1;", 40) + "m", sgr: true},
		{name: "truncated sgr at the end", in: "a\x1b[31", want: `a\x1b[31`, sgr: true},
		{name: "lone escape at the end", in: "a\x1b", want: `a\x1b`, sgr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := StringWith(tc.in, Options{AllowSGR: tc.sgr})
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			// The same through a Writer, fed one byte at a time and all
			// at once.
			for _, step := range []int{1, 2, 3, len(tc.in) + 1} {
				var buf bytes.Buffer
				w := NewWriter(&buf, Options{AllowSGR: tc.sgr})
				for i := 0; i < len(tc.in); i += step {
					end := min(i+step, len(tc.in))
					n, err := w.Write([]byte(tc.in[i:end]))
					if err != nil || n != end-i {
						t.Fatalf("Write: %d, %v", n, err)
					}
				}
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
				if buf.String() != tc.want {
					t.Errorf("writer in steps of %d: got %q, want %q", step, buf.String(), tc.want)
				}
			}
		})
	}
}

// checkSafe fails when s holds anything a terminal could act on.
func checkSafe(t *testing.T, in, s string, sgr bool) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("output of %q is not valid UTF-8: %q", in, s)
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b && sgr:
			n, _ := sgrLen([]byte(s[i:]))
			if n == 0 {
				t.Fatalf("output of %q has an escape that is not SGR at %d: %q", in, i, s)
			}
			i += n
			continue
		case r == '\n' || r == '\t':
		case r < 0x20 || r == 0x7f || unsafeRune(r):
			t.Fatalf("output of %q has %U at %d: %q", in, r, i, s)
		}
		i += size
	}
}

func FuzzString(f *testing.F) {
	for _, s := range []string{"plain\n", "\x1b[31mx\x1b[0m", "\x1b]52;c;x\x07", "\xe2\x80\xae", "\xc2\x9b", "\r\b\x00"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, sgr bool) {
		out := StringWith(in, Options{AllowSGR: sgr})
		checkSafe(t, in, out, sgr)
		var buf bytes.Buffer
		w := NewWriter(&buf, Options{AllowSGR: sgr})
		for i := 0; i < len(in); i++ {
			w.Write([]byte{in[i]})
		}
		w.Flush()
		if buf.String() != out {
			t.Fatalf("byte-at-a-time %q differs from %q for %q", buf.String(), out, in)
		}
	})
}
