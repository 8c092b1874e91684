package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/guest"
	"banger/internal/model"

	"golang.org/x/crypto/ssh"
)

// The MCP and port-forward tests run against a real api.Server serving a
// fake backend (testBackend), and "guests" that are SSH servers in this
// process running each command with the host's sh: the guest tools'
// scripts run in a real shell with real coreutils, as in a Debian guest.

// testBackend is the part of the daemon the MCP tools and port-forward
// use, with VMs in a map.
type testBackend struct {
	api.Backend
	t *testing.T

	mu  sync.Mutex
	vms map[string]api.VMView
	// guests are the SSH servers standing in for guests' port 22, by VM
	// name; tcp are other guest ports, by "name:port".
	guests map[string]*fakeGuest
	tcp    map[string]string
	holds  int
	// created is the last create request.
	created model.VMCreateRequest
	// gitText is what WorkspaceGit writes.
	gitText string
}

func newTestBackend(t *testing.T) *testBackend {
	return &testBackend{t: t, vms: map[string]api.VMView{}, guests: map[string]*fakeGuest{}, tcp: map[string]string{}}
}

func (b *testBackend) addVM(name string, state model.VMState, g *fakeGuest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := api.VMView{VMRecord: model.VMRecord{ID: "id-" + name, Name: name, State: state, CreatedAt: time.Unix(1700000000, 0).UTC()}}
	v.Runtime.State = state
	v.Runtime.GuestIP = "172.16.0.9"
	if g != nil {
		v.Runtime.SSHHostKey = g.hostKey
		b.guests[name] = g
	}
	b.vms[name] = v
}

func (b *testBackend) setState(name string, state model.VMState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.vms[name]
	v.State = state
	b.vms[name] = v
}

func (b *testBackend) GetVM(_ context.Context, ref string) (api.VMView, error) {
	if ref == "panic" {
		panic("the backend panicked")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if v, ok := b.vms[ref]; ok {
		return v, nil
	}
	return api.VMView{}, model.Errorf(model.ENOTFOUND, "vm %q not found", ref)
}

func (b *testBackend) ListVMs(context.Context) ([]api.VMView, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []api.VMView
	for _, v := range b.vms {
		out = append(out, v)
	}
	return out, nil
}

func (b *testBackend) FileSyncEntries(context.Context) ([]model.FileSyncEntry, error) {
	return nil, nil
}

func (b *testBackend) CreateVM(_ context.Context, req model.VMCreateRequest, p api.ProgressFunc) (api.VMView, error) {
	if err := model.ValidateVMName(req.Name); err != nil {
		return api.VMView{}, err
	}
	b.mu.Lock()
	b.created = req
	_, taken := b.vms[req.Name]
	b.mu.Unlock()
	if taken {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %q exists", req.Name)
	}
	p(api.Progress{Step: "disks", Message: "made"})
	p(api.Progress{Step: "ready", Message: "SSH answered"})
	b.addVM(req.Name, model.VMStateRunning, nil)
	return b.GetVM(context.Background(), req.Name)
}

func (b *testBackend) StartVM(_ context.Context, ref string, p api.ProgressFunc) (api.VMView, error) {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return api.VMView{}, err
	}
	if v.State == model.VMStateRunning {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %s is already running", ref)
	}
	p(api.Progress{Step: "ready", Message: "SSH answered"})
	b.setState(ref, model.VMStateRunning)
	return b.GetVM(context.Background(), ref)
}

func (b *testBackend) StopVM(_ context.Context, ref string, p api.ProgressFunc) (api.VMView, error) {
	if _, err := b.GetVM(context.Background(), ref); err != nil {
		return api.VMView{}, err
	}
	p(api.Progress{Step: "stop", Message: "Ctrl-Alt-Del sent"})
	b.setState(ref, model.VMStateStopped)
	return b.GetVM(context.Background(), ref)
}

func (b *testBackend) SuspendVM(_ context.Context, ref string, p api.ProgressFunc) (api.VMView, error) {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return api.VMView{}, err
	}
	if v.State != model.VMStateRunning {
		return api.VMView{}, model.Errorf(model.ECONFLICT, "vm %s is %s; only a running VM can be suspended", ref, v.State)
	}
	p(api.Progress{Step: "save", Message: "state saved"})
	b.setState(ref, model.VMStateSuspended)
	return b.GetVM(context.Background(), ref)
}

func (b *testBackend) ForkVM(_ context.Context, ref string, req model.VMForkRequest, p api.ProgressFunc) ([]api.VMView, error) {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return nil, err
	}
	if v.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %s is %s; only a running VM can be forked", ref, v.State)
	}
	names := req.Names
	if len(names) == 0 {
		for i := 1; i <= max(req.Count, 1); i++ {
			names = append(names, fmt.Sprintf("%s-%d", ref, i))
		}
	}
	p(api.Progress{Step: "fork", Message: "source paused"})
	var kids []api.VMView
	for _, n := range names {
		b.addVM(n, model.VMStateRunning, nil)
		k, _ := b.GetVM(context.Background(), n)
		kids = append(kids, k)
	}
	return kids, nil
}

func (b *testBackend) DeleteVM(_ context.Context, ref string, opts api.VMDeleteOptions, p api.ProgressFunc) error {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return err
	}
	if v.State == model.VMStateRunning && !opts.Force {
		return model.Errorf(model.ECONFLICT, "vm %s is running; stop it first or use force", ref)
	}
	b.mu.Lock()
	delete(b.vms, ref)
	b.mu.Unlock()
	return nil
}

func (b *testBackend) Connect(_ context.Context, ref string, port int) (net.Conn, error) {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return nil, err
	}
	if v.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %q is %s; start it with `banger vm start %s`", v.Name, v.State, v.Name)
	}
	b.mu.Lock()
	g, addr := b.guests[ref], b.tcp[ref+":"+itoa(port)]
	b.mu.Unlock()
	switch {
	case port == 22 && g != nil:
		return g.conn()
	case addr != "":
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, model.Errorf(model.EUNAVAILABLE, "connect to %s port %d: %v", ref, port, err)
		}
		return c, nil
	}
	return nil, model.Errorf(model.EUNAVAILABLE, "connect to %s port %d: connection refused", ref, port)
}

func (b *testBackend) Hold(_ context.Context, ref string) (func(), error) {
	v, err := b.GetVM(context.Background(), ref)
	if err != nil {
		return nil, err
	}
	if v.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %q is %s", v.Name, v.State)
	}
	b.mu.Lock()
	b.holds++
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.holds--
			b.mu.Unlock()
		})
	}, nil
}

func (b *testBackend) heldCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holds
}

func (b *testBackend) WorkspaceGit(_ context.Context, ref string, req api.WorkspaceGitRequest, w io.Writer) error {
	if _, err := b.GetVM(context.Background(), ref); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.gitText)
	return err
}

func itoa(n int) string { return strconv.Itoa(n) }

// serveBackend serves b on a socket and returns an App (with a home of its
// own) that talks to it.
func serveBackend(t *testing.T, b api.Backend) *App {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	s := api.NewServer(b, slog.New(slog.DiscardHandler))
	if err := s.Listen(sock, ""); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	home := filepath.Join(dir, "home")
	os.MkdirAll(home, 0o700)
	return &App{Stdin: eofReader{}, Stdout: io.Discard, Stderr: io.Discard, Getenv: func(k string) string {
		switch k {
		case EnvSocket:
			return sock
		case "HOME":
			return home
		}
		return ""
	}}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// fakeGuest is an SSH server that accepts one client key and runs each
// exec request with sh -c on this machine, as root would in a guest.
type fakeGuest struct {
	t       *testing.T
	cfg     *ssh.ServerConfig
	hostKey string
	addr    string
}

// newFakeGuest returns a guest that accepts the banger key of app's user
// (made now if needed).
func newFakeGuest(t *testing.T, app *App) *fakeGuest {
	t.Helper()
	keyPath, err := app.bangerKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := guest.LoadSigner(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	client := signer.PublicKey()
	_, hpriv, _ := ed25519.GenerateKey(rand.Reader)
	hs, _ := ssh.NewSignerFromKey(hpriv)
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(client.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go (&fakeGuest{cfg: cfg}).serve(c)
		}
	}()
	return &fakeGuest{t: t, cfg: cfg, hostKey: guest.AuthorizedKey(hs.PublicKey()), addr: ln.Addr().String()}
}

// conn opens a new connection to the guest's SSH port.
func (g *fakeGuest) conn() (net.Conn, error) {
	return net.Dial("tcp", g.addr)
}

func (g *fakeGuest) serve(c net.Conn) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, g.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go g.session(ch, creqs)
	}
}

func (g *fakeGuest) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for r := range reqs {
		if r.Type != "exec" {
			r.Reply(false, nil)
			continue
		}
		r.Reply(true, nil)
		var payload struct{ Cmd string }
		ssh.Unmarshal(r.Payload, &payload)
		cmd := exec.Command("sh", "-c", payload.Cmd)
		cmd.Stdin = ch
		cmd.Stdout = ch
		cmd.Stderr = ch.Stderr()
		err := cmd.Run()
		status := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				sig := struct {
					Signal     string
					CoreDumped bool
					Error      string
					Lang       string
				}{Signal: signalName(ws.Signal())}
				ch.SendRequest("exit-signal", false, ssh.Marshal(&sig))
				return
			}
			status = ee.ExitCode()
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(status))
		ch.SendRequest("exit-status", false, b[:])
		return
	}
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "KILL"
	case syscall.SIGTERM:
		return "TERM"
	}
	return "USR1"
}
