package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"banger/internal/api"
	"banger/internal/termsafe"
)

// printJSON writes v as indented JSON: the one stable schema of every
// --json output is the API's own types.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns. The tabwriter writes each cell and each
// run of padding separately, so its output goes through a buffer: a
// 1,000-row table was 30,000 write system calls to the terminal.
type table struct {
	tw  *tabwriter.Writer
	buf *bufio.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	buf := bufio.NewWriterSize(w, 64<<10)
	t := &table{tw: tabwriter.NewWriter(buf, 0, 4, 2, ' ', 0), buf: buf}
	t.row(headers...)
	return t
}

func (t *table) row(cols ...string) {
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}

// progressPrinter shows streamed progress on stderr, one line per step:
// "[  12.3s] step: message".
type progressPrinter struct {
	w     io.Writer
	quiet bool
	last  api.Event
}

func (p *progressPrinter) event(ev api.Event) {
	p.last = ev
	if ev.Progress == nil {
		return
	}
	pr := ev.Progress
	if p.quiet && !pr.Warning {
		return
	}
	secs := float64(ev.ElapsedMS) / 1000
	line := fmt.Sprintf("[%6.1fs] %s", secs, pr.Step)
	if pr.Message != "" {
		line += ": " + pr.Message
	}
	if pr.LogPath != "" {
		line += " (log: " + pr.LogPath + ")"
	}
	if pr.Warning {
		line = "warning: " + line
	}
	// Progress may quote a guest (a capture's error): shown, not obeyed.
	fmt.Fprintln(p.w, termsafe.String(line))
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "in " + roughDuration(-d)
	case d < time.Minute:
		return "just now"
	}
	return roughDuration(d) + " ago"
}

func until(t time.Time) string {
	d := time.Until(t)
	if d <= 0 {
		return "due"
	}
	return "in " + roughDuration(d)
}

func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// humanBytes prints a byte count with one decimal in the largest unit.
func humanBytes(n int64) string {
	const k = 1024
	switch {
	case n >= k*k*k:
		return fmt.Sprintf("%.1fG", float64(n)/(k*k*k))
	case n >= k*k:
		return fmt.Sprintf("%.1fM", float64(n)/(k*k))
	case n >= k:
		return fmt.Sprintf("%.1fK", float64(n)/k)
	}
	return fmt.Sprintf("%dB", n)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
