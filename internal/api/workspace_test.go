package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"banger/internal/model"
)

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	payload := bytes.Repeat([]byte("0123456789"), maxFrame/5) // two frames' worth
	if _, err := fw.Write(payload); err != nil {
		t.Fatal(err)
	}
	fw.Write([]byte("tail"))
	fw.end()
	got, err := io.ReadAll(&frameReader{r: bytes.NewReader(buf.Bytes())})
	if err != nil || !bytes.Equal(got, append(payload, "tail"...)) {
		t.Fatalf("round trip: %d bytes, %v", len(got), err)
	}

	// Without the end frame, the reader reports an unexpected EOF, both
	// at a frame boundary and inside a frame.
	whole := buf.Bytes()[:buf.Len()-4]
	for _, cut := range [][]byte{whole, whole[:len(whole)-2]} {
		_, err := io.ReadAll(&frameReader{r: bytes.NewReader(cut)})
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut stream: %v, want ErrUnexpectedEOF", err)
		}
	}
	// An oversized frame is refused.
	_, err = io.ReadAll(&frameReader{r: bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 1})})
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized frame: %v", err)
	}
}

func TestWorkspacePrepareRequestQuery(t *testing.T) {
	req := WorkspacePrepareRequest{
		Mode: model.WorkspacePrepareModeFullCopy, Branch: "banger/dev", GuestPath: "/root/my repo", SourcePath: "/home/u/p/src",
		RepoRoot: "/home/u/p", RepoName: "p", HeadCommit: strings.Repeat("a", 40), CurrentBranch: "main",
		UserName: "O'Brien & co", UserEmail: "o@example.com", Force: true,
	}
	got, err := ParseWorkspacePrepareRequest(req.Query())
	if err != nil || !reflect.DeepEqual(got, req) {
		t.Errorf("round trip = %+v, %v", got, err)
	}
	q := req.Query()
	q.Set("evil", "1")
	if _, err := ParseWorkspacePrepareRequest(q); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("unknown parameter: %v", err)
	}
	q = req.Query()
	q.Add("branch", "other")
	if _, err := ParseWorkspacePrepareRequest(q); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("repeated parameter: %v", err)
	}
}

// uploadBackend is a Backend whose workspace methods are scripted; the
// other methods are not used by these tests.
type uploadBackend struct {
	Backend
	mu       sync.Mutex
	received []byte
	readErr  error
	prepare  func(ctx context.Context, req WorkspacePrepareRequest, open OpenFunc, p ProgressFunc) (model.Workspace, error)
	git      func(w io.Writer) error
}

func (b *uploadBackend) PrepareWorkspace(ctx context.Context, ref string, req WorkspacePrepareRequest, open OpenFunc, p ProgressFunc) (model.Workspace, error) {
	return b.prepare(ctx, req, open, p)
}

func (b *uploadBackend) WorkspaceGit(ctx context.Context, ref string, req WorkspaceGitRequest, w io.Writer) error {
	return b.git(w)
}

// readAll is a prepare that reads the whole payload and reports it.
func (b *uploadBackend) readAll(ctx context.Context, req WorkspacePrepareRequest, open OpenFunc, p ProgressFunc) (model.Workspace, error) {
	if req.Mode == model.WorkspacePrepareModeMetadataOnly {
		return model.Workspace{VMName: "no-payload"}, nil
	}
	if req.Branch == "refuse" {
		return model.Workspace{}, model.Errorf(model.ECONFLICT, "refused before the stream")
	}
	r, err := open()
	if err != nil {
		return model.Workspace{}, err
	}
	p(Progress{Step: "receiving"})
	data, err := io.ReadAll(r)
	b.mu.Lock()
	b.received, b.readErr = data, err
	b.mu.Unlock()
	if err != nil {
		return model.Workspace{}, fmt.Errorf("payload: %w", err)
	}
	if req.Branch == "fail-after" {
		return model.Workspace{}, model.Errorf(model.EUNAVAILABLE, "guest said no")
	}
	return model.Workspace{VMName: fmt.Sprintf("got %d bytes", len(data))}, nil
}

func serveTest(t *testing.T, b Backend) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	s := NewServer(b, slog.New(slog.DiscardHandler))
	if err := s.Listen(sock, ""); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return NewClient(sock)
}

func TestUpload(t *testing.T) {
	b := &uploadBackend{}
	b.prepare = b.readAll
	c := serveTest(t, b)
	ctx := context.Background()
	payload := bytes.Repeat([]byte("tar bytes "), 500_000)

	// A payload streams through; progress arrives on the way.
	var steps []string
	var mu sync.Mutex
	ws, err := c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeFullCopy}, func(w io.Writer) error {
		_, err := w.Write(payload)
		return err
	}, func(ev Event) {
		mu.Lock()
		steps = append(steps, ev.Progress.Step)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if ws.VMName != fmt.Sprintf("got %d bytes", len(payload)) || !bytes.Equal(b.received, payload) {
		t.Errorf("result %q, received %d bytes", ws.VMName, len(b.received))
	}
	if !reflect.DeepEqual(steps, []string{"receiving"}) {
		t.Errorf("progress %q", steps)
	}

	// A result that needs no payload: body is never called.
	ws, err = c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeMetadataOnly}, func(io.Writer) error {
		t.Error("body called without an upgrade")
		return nil
	}, nil)
	if err != nil || ws.VMName != "no-payload" {
		t.Errorf("no payload: %+v %v", ws, err)
	}

	// Refused before the stream: a plain error with its code.
	_, err = c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{Branch: "refuse"}, func(io.Writer) error {
		t.Error("body called for a refused request")
		return nil
	}, nil)
	if model.ErrorCode(err) != model.ECONFLICT || !strings.Contains(err.Error(), "refused before") {
		t.Errorf("refused: %v", err)
	}

	// Failing after the stream: the error event, with its code.
	_, err = c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{Branch: "fail-after"}, func(w io.Writer) error {
		_, err := w.Write([]byte("x"))
		return err
	}, nil)
	if model.ErrorCode(err) != model.EUNAVAILABLE {
		t.Errorf("failure after upload: %v", err)
	}

	// The client failing part way: its own error comes back, and the
	// daemon sees a cut stream, never a complete one.
	_, err = c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{}, func(w io.Writer) error {
		w.Write(payload[:1000])
		return errors.New("file vanished")
	}, nil)
	if err == nil || err.Error() != "file vanished" {
		t.Errorf("client failure: %v", err)
	}
	b.mu.Lock()
	readErr := b.readErr
	b.mu.Unlock()
	if !errors.Is(readErr, io.ErrUnexpectedEOF) {
		t.Errorf("daemon read %v, want ErrUnexpectedEOF", readErr)
	}
}

func TestWorkspaceGitErrors(t *testing.T) {
	b := &uploadBackend{}
	c := serveTest(t, b)
	ctx := context.Background()

	b.git = func(w io.Writer) error { return model.Errorf(model.ECONFLICT, "vm is stopped") }
	var out bytes.Buffer
	err := c.WorkspaceGit(ctx, "dev", WorkspaceGitRequest{Kind: "diff"}, &out)
	if model.ErrorCode(err) != model.ECONFLICT || out.Len() != 0 {
		t.Errorf("error before output: %v %q", err, out.String())
	}

	b.git = func(w io.Writer) error {
		io.WriteString(w, "diff --git a/x b/x\n")
		return errors.New("ssh went away")
	}
	out.Reset()
	err = c.WorkspaceGit(ctx, "dev", WorkspaceGitRequest{Kind: "log"}, &out)
	if err != nil || !strings.HasPrefix(out.String(), "diff --git") || !strings.Contains(out.String(), "banger: log failed: ssh went away") {
		t.Errorf("error after output: %v %q", err, out.String())
	}
}
