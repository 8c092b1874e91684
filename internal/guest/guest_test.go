package guest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testServer is a minimal SSH server: it accepts one client key and runs
// "exec" requests by name: "true", "false", "echo-stdin".
func testServer(t *testing.T, clientKey ssh.PublicKey) (addr string, hostKey ssh.PublicKey) {
	t.Helper()
	_, hpriv, _ := ed25519.GenerateKey(rand.Reader)
	hs, _ := ssh.NewSignerFromKey(hpriv)
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(clientKey.Marshal()) {
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
			go serve(c, cfg)
		}
	}()
	return ln.Addr().String(), hs.PublicKey()
}

// execHooks run other commands by their full text (set by a test before
// it dials); the hook's result is the exit status.
var execHooks = map[string]func(ch ssh.Channel) uint32{}

func serve(c net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				r.Reply(true, nil)
				cmd := string(r.Payload[4:])
				status := uint32(0)
				if hook, ok := execHooks[cmd]; ok {
					status = hook(ch)
				}
				switch cmd {
				case "false":
					io.WriteString(ch.Stderr(), "it failed")
					status = 3
				case "echo-stdin":
					io.Copy(ch, ch)
				}
				var b [4]byte
				binary.BigEndian.PutUint32(b[:], status)
				ch.SendRequest("exit-status", false, b[:])
				return
			}
		}()
	}
}

func TestDialRunAndHostKey(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, hostKey := testServer(t, signer.PublicKey())
	ctx := context.Background()

	c, err := WaitReady(ctx, addr, signer, AuthorizedKey(hostKey), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if AuthorizedKey(c.HostKey) != AuthorizedKey(hostKey) {
		t.Errorf("host key %s; want %s", AuthorizedKey(c.HostKey), AuthorizedKey(hostKey))
	}
	var out strings.Builder
	if err := c.Run(ctx, "echo-stdin", strings.NewReader("hello"), &out, nil); err != nil || out.String() != "hello" {
		t.Errorf("echo-stdin = %q, %v", out.String(), err)
	}
	err = c.Run(ctx, "false", nil, nil, nil)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status != 3 || !strings.Contains(ee.Stderr, "it failed") {
		t.Errorf("false: %v", err)
	}

	// A recorded key must match.
	if c2, err := Dial(ctx, addr, signer, AuthorizedKey(hostKey)); err != nil {
		t.Errorf("dial with the right key: %v", err)
	} else {
		c2.Close()
	}
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewSignerFromKey(otherPriv)
	var mismatch *HostKeyMismatchError
	if _, err := Dial(ctx, addr, signer, AuthorizedKey(other.PublicKey())); !errors.As(err, &mismatch) {
		t.Errorf("dial with a wrong recorded key: %v", err)
	}
	// No trust on first use: without a recorded key nothing is dialled.
	if _, err := Dial(ctx, addr, signer, ""); !errors.Is(err, ErrNoHostKey) {
		t.Errorf("dial without a recorded key: %v", err)
	}
	if _, err := WaitReady(ctx, addr, signer, "", time.Millisecond); !errors.Is(err, ErrNoHostKey) {
		t.Errorf("WaitReady without a recorded key: %v", err)
	}
	// A key the guest does not accept fails.
	if _, err := Dial(ctx, addr, other, AuthorizedKey(hostKey)); err == nil {
		t.Error("dial with an unknown client key succeeded")
	}
}

func TestWaitReadyTimesOut(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := WaitReady(ctx, addr, signer, AuthorizedKey(signer.PublicKey()), 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("WaitReady = %v", err)
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("it's"); got != `'it'\''s'` {
		t.Errorf("Quote = %s", got)
	}
}

// TestWaitReadyNeverTrustsAnImpostor: a server with another key keeps
// being refused until the deadline; the error names the mismatch.
func TestWaitReadyNeverTrustsAnImpostor(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, _ := testServer(t, signer.PublicKey())
	_, real, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	// Long enough for a handshake on a loaded machine; the impostor is
	// refused every time until then.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = WaitReady(ctx, addr, signer, real, 50*time.Millisecond)
	var mismatch *HostKeyMismatchError
	if !errors.As(err, &mismatch) {
		t.Errorf("WaitReady against an impostor = %v", err)
	}
}

func TestNewHostKey(t *testing.T) {
	priv, pub, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if AuthorizedKey(s.PublicKey()) != pub || !strings.HasPrefix(pub, "ssh-ed25519 ") {
		t.Errorf("public %q does not match the private key", pub)
	}
	if !strings.Contains(string(priv), "BEGIN OPENSSH PRIVATE KEY") {
		t.Errorf("private key is not in OpenSSH format:\n%s", priv)
	}
}
