package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/model"
)

func TestIsAdmin(t *testing.T) {
	db := groupDB{
		gidOf: func(name string) (int, error) {
			if name == "banger-admin" {
				return 900, nil
			}
			return -1, errors.New("no such group")
		},
		groupsOf: func(uid int) ([]int, error) {
			switch uid {
			case 1001:
				return []int{100, 900}, nil
			case 1002:
				return []int{100}, nil
			}
			return nil, errors.New("no such user")
		},
	}
	tests := []struct {
		name  string
		c     Caller
		group string
		want  bool
	}{
		{"member by the group database", Caller{UID: 1001, GID: 100}, "banger-admin", true},
		{"member by its gid", Caller{UID: 1003, GID: 900}, "banger-admin", true},
		{"not a member", Caller{UID: 1002, GID: 100}, "banger-admin", false},
		{"unknown user", Caller{UID: 4242, GID: 100}, "banger-admin", false},
		{"no such group", Caller{UID: 1001, GID: 100}, "wheel", false},
		{"no admin group", Caller{UID: 1001, GID: 900}, "", false},
		{"root is root, not an admin", Caller{UID: 0, GID: 900}, "banger-admin", false},
		{"nobody without credentials", Caller{UID: -1, GID: -1}, "banger-admin", false},
	}
	for _, tt := range tests {
		if got := isAdmin(tt.c, tt.group, db); got != tt.want {
			t.Errorf("%s: isAdmin = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAdminCache(t *testing.T) {
	lookups := 0
	member := true
	db := groupDB{
		gidOf: func(string) (int, error) { return 900, nil },
		groupsOf: func(int) ([]int, error) {
			lookups++
			if member {
				return []int{900}, nil
			}
			return nil, nil
		},
	}
	now := time.Unix(1000, 0)
	a := newAdminCache()
	a.now = func() time.Time { return now }
	c := Caller{UID: 1001, GID: 100}
	for i := 0; i < 100; i++ {
		if !a.isAdmin(c, "banger-admin", db) {
			t.Fatal("not an admin")
		}
	}
	if lookups != 1 {
		t.Errorf("%d lookups for 100 connections; want 1", lookups)
	}
	// Removed from the group: seen once the answer is stale.
	member = false
	now = now.Add(adminTTL + time.Second)
	if a.isAdmin(c, "banger-admin", db) || lookups != 2 {
		t.Errorf("after removal: still an admin, or %d lookups", lookups)
	}
}

func TestJudgeConn(t *testing.T) {
	user, admin, root := Caller{UID: 1000}, Caller{UID: 1001, Admin: true}, Caller{UID: 0}
	tests := []struct {
		c        Caller
		n, limit int
		want     connVerdict
	}{
		{user, 1, 4, connOK}, {user, 4, 4, connOK}, {user, 5, 4, connRefuse}, {user, 8, 4, connRefuse},
		{user, 9, 4, connDrop}, {user, 1000, 0, connOK},
		{admin, 1000, 4, connOK}, {root, 1000, 4, connOK},
	}
	for _, tt := range tests {
		if got := judgeConn(tt.c, tt.n, tt.limit); got != tt.want {
			t.Errorf("judgeConn(%+v, %d, %d) = %v, want %v", tt.c, tt.n, tt.limit, got, tt.want)
		}
	}
}

// limitBackend is a Backend whose CreateVM blocks until released, for
// the limit tests.
type limitBackend struct {
	Backend
	mu       sync.Mutex
	inFlight int
	release  chan struct{}
	hold     time.Duration
	ctxErr   error
}

func (b *limitBackend) ListVMs(context.Context) ([]VMView, error) { return nil, nil }

func (b *limitBackend) CreateVM(ctx context.Context, req model.VMCreateRequest, p ProgressFunc) (VMView, error) {
	b.mu.Lock()
	b.inFlight++
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.inFlight--
		b.mu.Unlock()
	}()
	if b.hold > 0 {
		time.Sleep(b.hold)
		b.mu.Lock()
		b.ctxErr = ctx.Err()
		b.mu.Unlock()
		return VMView{}, nil
	}
	<-b.release
	return VMView{}, nil
}

func (b *limitBackend) UploadImage(ctx context.Context, req ImageUploadRequest, open OpenFunc, p ProgressFunc) (ImageRegisterResponse, error) {
	r, err := open()
	if err != nil {
		return ImageRegisterResponse{}, err
	}
	_, err = io.ReadAll(r)
	return ImageRegisterResponse{}, err
}

func (b *limitBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight
}

// serveAs serves b with access a, every caller being uid 1000.
func serveAs(t *testing.T, b Backend, a Access) (*Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	s := NewServer(b, slog.New(slog.DiscardHandler))
	s.Configure(a)
	s.peer = func(net.Conn) (Caller, error) { return Caller{UID: 1000, GID: 1000}, nil }
	if err := s.Listen(sock, ""); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return NewClient(sock), sock
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestOperationsLimit(t *testing.T) {
	b := &limitBackend{release: make(chan struct{})}
	c, _ := serveAs(t, b, Access{Limits: model.UserLimits{Operations: 2}})
	ctx := context.Background()
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := c.CreateVM(ctx, model.VMCreateRequest{Name: "a"}, nil)
			errs <- err
		}()
	}
	waitFor(t, "two creates in flight", func() bool { return b.count() == 2 })
	_, err := c.CreateVM(ctx, model.VMCreateRequest{Name: "c"}, nil)
	if model.ErrorCode(err) != model.ELIMIT || !strings.Contains(err.Error(), "limits.operations") || !strings.Contains(err.Error(), "uid 1000") {
		t.Errorf("third operation: %v; want ELIMIT naming limits.operations", err)
	}
	// Reads are not operations.
	if _, err := c.ListVMs(ctx); err != nil {
		t.Errorf("a read during the limit: %v", err)
	}
	close(b.release)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Errorf("create: %v", err)
		}
	}
	if _, err := c.CreateVM(ctx, model.VMCreateRequest{Name: "d"}, nil); err != nil {
		t.Errorf("after the others finished: %v", err)
	}
}

func TestConnectionLimit(t *testing.T) {
	b := &limitBackend{}
	c, sock := serveAs(t, b, Access{Limits: model.UserLimits{Connections: 3}})
	var held []net.Conn
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		h, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	_, err := c.ListVMs(context.Background())
	if model.ErrorCode(err) != model.ELIMIT || !strings.Contains(err.Error(), "limits.connections") {
		t.Fatalf("a fourth connection: %v; want ELIMIT naming limits.connections", err)
	}
	// Far over the limit, connections are closed at once.
	for i := 0; i < 4; i++ {
		h, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	h, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := h.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("a connection far over the limit: read %d, %v; want it closed", n, err)
	}
	h.Close()
	for _, h := range held {
		h.Close()
	}
	held = nil
	waitFor(t, "connections released", func() bool {
		_, err := c.ListVMs(context.Background())
		return err == nil
	})
}

// rawRequest writes req on a fresh connection and returns how long the
// server took to answer and close it, and what it answered.
func rawRequest(t *testing.T, sock, req string) (time.Duration, string) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	out, _ := io.ReadAll(conn)
	return time.Since(start), string(out)
}

func TestSlowRequestsAreCutOff(t *testing.T) {
	b := &limitBackend{hold: 2500 * time.Millisecond}
	c, sock := serveAs(t, b, Access{ReadTimeout: time.Second, IdleTimeout: time.Second})

	// Headers that never end.
	took, _ := rawRequest(t, sock, "POST /v1/vms HTTP/1.1\r\nHost: bangerd\r\n")
	if took > 4*time.Second {
		t.Errorf("unfinished headers held for %s", took)
	}
	// Headers, and a body that never comes.
	took, out := rawRequest(t, sock, "POST /v1/vms HTTP/1.1\r\nHost: bangerd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	if took > 4*time.Second || !strings.Contains(out, "400") {
		t.Errorf("a missing body: answered after %s with %q", took, out)
	}
	// An idle kept-alive connection is closed.
	took, out = rawRequest(t, sock, "GET /v1/vms HTTP/1.1\r\nHost: bangerd\r\n\r\n")
	if took > 4*time.Second || !strings.Contains(out, "200 OK") {
		t.Errorf("an idle connection: closed after %s, %q", took, out)
	}
	// A request whose body came in time runs to its end, however long
	// it takes: the read deadline does not cancel it.
	if _, err := c.CreateVM(context.Background(), model.VMCreateRequest{Name: "slow"}, nil); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	ctxErr := b.ctxErr
	b.mu.Unlock()
	if ctxErr != nil {
		t.Errorf("a long operation's context ended: %v", ctxErr)
	}
}

func TestStalledUploadIsCutOff(t *testing.T) {
	b := &limitBackend{}
	_, sock := serveAs(t, b, Access{ReadTimeout: time.Second})
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	io.WriteString(conn, "POST /v1/images/upload?name=x HTTP/1.1\r\nHost: bangerd\r\nConnection: Upgrade\r\nUpgrade: banger-stream\r\nContent-Length: 0\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	// Send nothing: the daemon gives up on the stream.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	ev, err := br.ReadString('\n')
	if err != nil || !strings.Contains(ev, "api_read_timeout") {
		t.Errorf("stalled upload: %q %v; want an error naming api_read_timeout", ev, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stalled upload held for %s", took)
	}
}
