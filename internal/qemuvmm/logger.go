package qemuvmm

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// levelOff is above every level slog emits, for Firecracker's "Off".
const levelOff = slog.Level(100)

// parseLevel maps Firecracker's logger levels (case-insensitive) to slog.
// Trace has no slog level of its own and logs as Debug.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "error":
		return slog.LevelError, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "info":
		return slog.LevelInfo, nil
	case "debug", "trace":
		return slog.LevelDebug, nil
	case "off":
		return levelOff, nil
	}
	return 0, fmt.Errorf("unknown level %q", s)
}

// newLogger returns the VMM's logger writing text lines to w, tagged with
// the instance id as Firecracker tags its lines.
func newLogger(w io.Writer, id string, level slog.Level, showLevel, showOrigin bool) *slog.Logger {
	opts := &slog.HandlerOptions{
		Level:     level,
		AddSource: showOrigin,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.LevelKey && !showLevel {
				return slog.Attr{}
			}
			return a
		},
	}
	return slog.New(slog.NewTextHandler(w, opts)).With("id", id)
}
