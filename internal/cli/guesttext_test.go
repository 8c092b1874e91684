package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

// hostileGuest is a daemon whose guest-facing answers carry what a
// hostile guest would put in them: escape sequences that clear the
// screen, set the title, write the clipboard, and rewrite a line.
type hostileGuest struct {
	api.Backend
}

const hostileText = "booted\n\x1b[2J\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07rm -rf ~\rok\n\x1b[31mred\x1b[0m\u202eevil\n"

func (hostileGuest) GetVM(ctx context.Context, ref string) (api.VMView, error) {
	return api.VMView{}, nil
}

func (hostileGuest) VMLogs(ctx context.Context, ref string, opts api.LogsOptions, w io.Writer) error {
	_, err := io.WriteString(w, hostileText)
	return err
}

func (hostileGuest) WorkspaceGit(ctx context.Context, ref string, req api.WorkspaceGitRequest, w io.Writer) error {
	if req.GuestPath == "fail" {
		return model.Errorf(model.ECONFLICT, "no SSH answer; last console lines:\n\x1b]0;pwned\x07login:")
	}
	_, err := io.WriteString(w, hostileText)
	return err
}

func runWith(t *testing.T, b api.Backend, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	s := api.NewServer(b, slog.New(slog.DiscardHandler))
	if err := s.Listen(sock, ""); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	var out, errb bytes.Buffer
	app := &App{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
		if k == EnvSocket {
			return sock
		}
		return ""
	}}
	code = app.Run(context.Background(), args)
	return out.String(), errb.String(), code
}

func TestGuestTextIsNeutralised(t *testing.T) {
	safe := `booted
\x1b[2J\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07rm -rf ~\rok
\x1b[31mred\x1b[0m\u202eevil
`
	for _, args := range [][]string{{"logs", "dev"}, {"workspace", "diff", "dev"}, {"workspace", "log", "dev"}} {
		out, errb, code := runWith(t, hostileGuest{}, args...)
		if code != 0 || out != safe {
			t.Errorf("banger %v: exit %d, stdout %q, stderr %q; want %q", args, code, out, errb, safe)
		}
		// --raw gives the bytes as they are, for those who want them.
		out, _, code = runWith(t, hostileGuest{}, append(args, "--raw")...)
		if code != 0 || out != hostileText {
			t.Errorf("banger %v --raw: exit %d, stdout %q", args, code, out)
		}
	}
	// An error quoting the guest (a boot failure's console tail).
	_, errb, code := runWith(t, hostileGuest{}, "workspace", "diff", "dev", "--guest-path", "fail")
	if code == 0 || strings.ContainsAny(errb, "\x1b\x07") || !strings.Contains(errb, `\x1b]0;pwned\x07login:`) {
		t.Errorf("error: exit %d, stderr %q", code, errb)
	}
}
