// Package guest talks to a running guest over SSH with the daemon's key:
// waiting until it answers, running commands, and streaming data in and
// out. The daemon reaches guests directly on the bridge; users reach them
// through the daemon's connect stream instead.
package guest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// LoadSigner reads a private key file.
func LoadSigner(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ssh key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse ssh key %s: %w", path, err)
	}
	return s, nil
}

// ciphers is the daemon's cipher preference, ChaCha20-Poly1305 first as
// in OpenSSH's own client. A guest without AES instructions (QEMU's TCG
// CPU has none) decrypts AES-GCM in software at a sixth of ChaCha20's
// speed (measured in the guest: 18 MB/s against 108 MB/s), and its sshd
// then limits every workspace upload; with AES instructions both are
// far faster than anything the daemon sends.
var ciphers = []string{
	ssh.CipherChaCha20Poly1305,
	ssh.CipherAES128GCM,
	ssh.CipherAES256GCM,
	ssh.CipherAES128CTR,
	ssh.CipherAES256CTR,
}

// Conn is an SSH connection to a guest as root.
type Conn struct {
	client *ssh.Client
	// HostKey is the key the guest presented.
	HostKey ssh.PublicKey
}

// ErrNoHostKey is returned by Dial when no host key is known: banger
// never trusts a guest's key on first use.
var ErrNoHostKey = errors.New("no recorded host key for the guest (banger does not trust a key on first use)")

// NewHostKey makes an SSH host key pair for a guest: the private key in
// OpenSSH format (as sshd reads it from /etc/ssh) and the public key in
// authorized_keys format (as Dial takes it).
func NewHostKey() (private []byte, public string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, "", fmt.Errorf("marshal host key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("marshal host key: %w", err)
	}
	return pem.EncodeToMemory(block), AuthorizedKey(sshPub), nil
}

// Dial connects once. The guest must present hostKey (authorized_keys
// format), the key the daemon made for it; anything else is refused
// before authentication, so a guest that answers on another VM's address
// never receives the daemon's connection. Only that key's algorithm is
// offered, so a guest cannot present a different key type.
func Dial(ctx context.Context, addr string, signer ssh.Signer, hostKey string) (*Conn, error) {
	return dial(ctx, addr, signer, hostKey, 0)
}

// DialQuiet is Dial without TCP keepalives, for a connection held open
// across a suspend: a guest that sleeps answers no probe, and the host
// would drop the connection it is to use when the guest wakes.
func DialQuiet(ctx context.Context, addr string, signer ssh.Signer, hostKey string) (*Conn, error) {
	return dial(ctx, addr, signer, hostKey, -1)
}

// dial is Dial with the TCP keepalive period keepAlive (0: Go's default,
// negative: none).
func dial(ctx context.Context, addr string, signer ssh.Signer, hostKey string, keepAlive time.Duration) (*Conn, error) {
	return dialWith(ctx, net.Dialer{KeepAlive: keepAlive}, addr, signer, hostKey)
}

// DialVia is Dial through one interface only: the socket is bound to
// device (SO_BINDTODEVICE) and to the local address laddr, so the
// connection reaches whatever answers on that link, never the host's
// route to addr. The daemon uses it to reach a forked guest on its
// quarantined tap while another VM still owns the address.
func DialVia(ctx context.Context, device, laddr, addr string, signer ssh.Signer, hostKey string) (*Conn, error) {
	d, err := viaDialer(device, laddr, addr)
	if err != nil {
		return nil, err
	}
	return dialWith(ctx, d, addr, signer, hostKey)
}

// ConnectVia opens a TCP connection to addr through one interface only,
// as DialVia does, with no SSH on it: whether the guest answers there.
func ConnectVia(ctx context.Context, device, laddr, addr string) (net.Conn, error) {
	d, err := viaDialer(device, laddr, addr)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return d.DialContext(dctx, "tcp", addr)
}

// viaDialer is a dialer bound to device and the local address laddr.
func viaDialer(device, laddr, addr string) (net.Dialer, error) {
	local := net.ParseIP(laddr)
	if local == nil || device == "" {
		return net.Dialer{}, fmt.Errorf("dial %s via %q from %q: need a device and a local address", addr, device, laddr)
	}
	return net.Dialer{
		LocalAddr: &net.TCPAddr{IP: local},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, device)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("bind to %s: %w", device, serr)
			}
			return nil
		},
	}, nil
}

func dialWith(ctx context.Context, d net.Dialer, addr string, signer ssh.Signer, hostKey string) (*Conn, error) {
	if strings.TrimSpace(hostKey) == "" {
		return nil, ErrNoHostKey
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return DialConn(ctx, raw, addr, signer, hostKey)
}

// DialConn is Dial over a connection the caller opened (a user's stream
// through the daemon's connect, say): the SSH handshake, with the same
// host key check, runs on raw, which the returned Conn owns. On failure
// raw is closed. addr only names the guest in errors.
func DialConn(ctx context.Context, raw net.Conn, addr string, signer ssh.Signer, hostKey string) (*Conn, error) {
	if strings.TrimSpace(hostKey) == "" {
		raw.Close()
		return nil, ErrNoHostKey
	}
	want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("parse known host key: %w", err)
	}
	cfg := &ssh.ClientConfig{
		Config: ssh.Config{Ciphers: ciphers},
		User:   "root",
		Auth:   []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if !bytes.Equal(want.Marshal(), key.Marshal()) {
				return &HostKeyMismatchError{Got: ssh.FingerprintSHA256(key), Want: ssh.FingerprintSHA256(want)}
			}
			return nil
		},
		HostKeyAlgorithms: hostKeyAlgorithms(want.Type()),
		Timeout:           10 * time.Second,
	}
	// The handshake must not outlive ctx.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	raw.SetDeadline(time.Now().Add(15 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(raw, addr, cfg)
	if err != nil {
		raw.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return &Conn{client: ssh.NewClient(c, chans, reqs), HostKey: want}, nil
}

// hostKeyAlgorithms are the signature algorithms a key of type t can
// sign host key proofs with.
func hostKeyAlgorithms(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{t}
}

// HostKeyMismatchError is a guest presenting a key other than its own.
type HostKeyMismatchError struct {
	Got, Want string
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("the guest presented host key %s, not the %s banger made for it: refusing to connect (another machine may be answering on its address)", e.Got, e.Want)
}

// WaitReady dials until the guest answers SSH with hostKey and runs
// `true`, or ctx ends. It returns the last error on timeout. A guest that
// presents another key is retried (the address may still belong to
// someone else for a moment) but never trusted.
func WaitReady(ctx context.Context, addr string, signer ssh.Signer, hostKey string, interval time.Duration) (*Conn, error) {
	var last, impostor error
	for {
		c, err := Dial(ctx, addr, signer, hostKey)
		if errors.Is(err, ErrNoHostKey) {
			return nil, err
		}
		var mismatch *HostKeyMismatchError
		if errors.As(err, &mismatch) {
			impostor = err
		}
		if err == nil {
			if _, err = c.Output(ctx, "true"); err == nil {
				return c, nil
			}
			c.Close()
		}
		last = err
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			if impostor != nil {
				// Say what matters most: something else answered there.
				last = impostor
			}
			return nil, fmt.Errorf("guest ssh at %s not ready: %w", addr, last)
		case <-time.After(interval):
		}
	}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.client.Close() }

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Cmd    string
	Status int
	Stderr string
	// Signal names the signal that ended the command ("KILL"), when one
	// did; Status is then 128 plus its number.
	Signal string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("guest command %q exited %d", e.Cmd, e.Status)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		if len(s) > 1000 {
			s = s[len(s)-1000:]
		}
		msg += ": " + s
	}
	return msg
}

// Run runs cmd in the guest with stdin, stdout and stderr attached (any
// may be nil). A non-zero exit is an *ExitError. Cancelling ctx closes
// the session.
func (c *Conn) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	s, err := c.client.NewSession()
	if err != nil {
		return fmt.Errorf("guest session: %w", err)
	}
	defer s.Close()
	var errBuf bytes.Buffer
	s.Stdin = stdin
	s.Stdout = stdout
	if stderr != nil {
		s.Stderr = io.MultiWriter(stderr, &tailBuffer{b: &errBuf, max: 4096})
	} else {
		s.Stderr = &tailBuffer{b: &errBuf, max: 4096}
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	err = s.Run(cmd)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return &ExitError{Cmd: cmd, Status: ee.ExitStatus(), Stderr: errBuf.String(), Signal: ee.Signal()}
	}
	if err != nil {
		return fmt.Errorf("guest command %q: %w", cmd, err)
	}
	return nil
}

// RunDetaching runs cmd, a command that takes away the connection it
// runs over (a guest changing its address) once it has printed the line
// marker: it returns nil when cmd ended with status 0, or when marker
// was printed and the session then ended or did not end within a
// second; an error when cmd failed or ended without printing marker.
// The session is closed before it returns.
func (c *Conn) RunDetaching(ctx context.Context, cmd, marker string) error {
	return c.runDetaching(ctx, cmd, nil, nil, marker)
}

// runDetaching is RunDetaching with stdin and more writers of stdout.
func (c *Conn) runDetaching(ctx context.Context, cmd string, stdin io.Reader, stdout []io.Writer, marker string) error {
	seen := make(chan struct{})
	w := &lineWriter{want: marker, on: func() { close(seen) }}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, cmd, stdin, io.MultiWriter(append(stdout, w)...), nil) }()
	select {
	case err := <-done:
		if err == nil || w.seen() {
			return nil
		}
		return err
	case <-seen:
	}
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return nil
}

// Output runs cmd and returns its standard output.
func (c *Conn) Output(ctx context.Context, cmd string) (string, error) {
	var out bytes.Buffer
	err := c.Run(ctx, cmd, nil, &out, nil)
	return out.String(), err
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	b   *bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b.Write(p)
	if t.b.Len() > t.max {
		rest := t.b.Bytes()[t.b.Len()-t.max:]
		nb := append([]byte(nil), rest...)
		t.b.Reset()
		t.b.Write(nb)
	}
	return len(p), nil
}

// AuthorizedKey renders a public key in authorized_keys form.
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// Quote quotes s for the guest's POSIX shell.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
