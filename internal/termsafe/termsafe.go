// Package termsafe makes text from an untrusted source (a guest's serial
// console, git output from a guest, error messages quoting either) safe
// to print on a terminal. Terminal escape sequences and control
// characters can move the cursor, rewrite what is already on the screen,
// set the window title, write the clipboard (OSC 52) or, on some
// terminals, answer back with input; the sanitiser renders them as
// visible escapes (\x1b, \r, \u202e) instead. Newline and tab pass
// through, and so does valid UTF-8 text.
package termsafe

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Options say what a sanitiser lets through besides plain text.
type Options struct {
	// AllowSGR passes Select Graphic Rendition sequences (ESC [ digits
	// and semicolons m: colours, bold, reset) through unchanged, for
	// output a tool coloured on purpose, such as git's --color=always.
	// They change how text looks, never where it goes; every other
	// escape sequence is still neutralised.
	AllowSGR bool
}

// maxSGR bounds the length of an SGR sequence let through; a longer one
// is escaped.
const maxSGR = 64

// String returns s with every control character and escape sequence
// rendered visibly.
func String(s string) string {
	return StringWith(s, Options{})
}

// StringWith is String with opts.
func StringWith(s string, opts Options) string {
	var b strings.Builder
	sanitize(&b, []byte(s), opts, true)
	return b.String()
}

// Writer sanitises what is written to it before passing it on. A UTF-8
// sequence or an SGR sequence split across writes is held back until it
// is complete; Flush writes what is held back (escaped, since it is
// incomplete). Writer is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	opts    Options
	pending []byte
	out     strings.Builder
}

// NewWriter returns a Writer that sanitises into w.
func NewWriter(w io.Writer, opts Options) *Writer {
	return &Writer{w: w, opts: opts}
}

// Write sanitises p and writes the result. It reports len(p) on success:
// the escaped text is longer than p, and the caller counts its own bytes.
func (s *Writer) Write(p []byte) (int, error) {
	buf := append(s.pending, p...)
	s.out.Reset()
	used := sanitize(&s.out, buf, s.opts, false)
	s.pending = append(s.pending[:0:0], buf[used:]...)
	if s.out.Len() > 0 {
		if _, err := io.WriteString(s.w, s.out.String()); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes whatever an incomplete sequence held back, escaped.
func (s *Writer) Flush() error {
	if len(s.pending) == 0 {
		return nil
	}
	s.out.Reset()
	sanitize(&s.out, s.pending, s.opts, true)
	s.pending = nil
	_, err := io.WriteString(s.w, s.out.String())
	return err
}

// sanitize writes the safe rendering of p to b and returns how many bytes
// of p it consumed. Unless final, a trailing incomplete UTF-8 sequence or
// SGR sequence is left unconsumed for the next call.
func sanitize(b *strings.Builder, p []byte, opts Options, final bool) int {
	i := 0
	for i < len(p) {
		c := p[i]
		switch {
		case c == '\n' || c == '\t':
			b.WriteByte(c)
			i++
			continue
		case c == 0x1b && opts.AllowSGR:
			n, complete := sgrLen(p[i:])
			if n > 0 {
				b.Write(p[i : i+n])
				i += n
				continue
			}
			if !complete && !final {
				return i
			}
			fmt.Fprintf(b, `\x%02x`, c)
			i++
			continue
		case c == '\r':
			// Shown as itself: CRLF line ends are common in diffs.
			b.WriteString(`\r`)
			i++
			continue
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(b, `\x%02x`, c)
			i++
			continue
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
			continue
		}
		if !final && !utf8.FullRune(p[i:]) {
			return i
		}
		r, size := utf8.DecodeRune(p[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(b, `\x%02x`, c)
			i++
			continue
		case unsafeRune(r):
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			b.Write(p[i : i+size])
		}
		i += size
	}
	return i
}

// sgrLen returns the length of the SGR sequence p starts with (ESC [
// params m), or 0 when p does not start with one; complete is false when
// p ends before it could tell.
func sgrLen(p []byte) (n int, complete bool) {
	if len(p) < 2 {
		return 0, false
	}
	if p[1] != '[' {
		return 0, true
	}
	for i := 2; i < len(p) && i < maxSGR; i++ {
		switch c := p[i]; {
		case c >= '0' && c <= '9' || c == ';':
		case c == 'm':
			return i + 1, true
		default:
			return 0, true
		}
	}
	if len(p) >= maxSGR {
		return 0, true
	}
	return 0, false
}

// unsafeRune reports whether r is a code point a terminal may act on or
// that reorders what is shown: C1 controls (U+0080 to U+009F, which
// include CSI and OSC), the bidirectional formatting controls, and the
// line and paragraph separators.
func unsafeRune(r rune) bool {
	switch {
	case r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f:
		return true
	case r >= 0x202a && r <= 0x202e:
		return true
	case r >= 0x2066 && r <= 0x2069:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}
