package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestSuspendCommandsWithoutDaemon: --idle is checked before any
// request; suspend and the resume alias exist and reach for the daemon.
func TestSuspendCommandsWithoutDaemon(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "create", "ok", "--idle", "hibernate"}, 2, `--idle "hibernate": use "suspend"`},
		{[]string{"vm", "create", "ok", "--idle", "default"}, 2, `--idle "default"`},
		{[]string{"vm", "set", "x", "--idle", "pause"}, 2, `--idle "pause"`},
		{[]string{"vm", "suspend", "dev"}, 1, "cannot reach bangerd"},
		{[]string{"vm", "resume", "dev"}, 1, "cannot reach bangerd"},
		{[]string{"vm", "set", "x", "--idle", "default"}, 1, "cannot reach bangerd"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		app := &App{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
			switch k {
			case EnvSocket:
				return filepath.Join(t.TempDir(), "none.sock")
			case "HOME":
				return t.TempDir()
			}
			return ""
		}}
		code := app.Run(context.Background(), tt.args)
		if code != tt.code || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("banger %v: exit %d, stderr %q; want exit %d mentioning %q", tt.args, code, errb.String(), tt.code, tt.want)
		}
	}
}
