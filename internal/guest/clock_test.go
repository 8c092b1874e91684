package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSetClockSendsTheTimeWhenTheGuestIsReady: a guest whose shell takes
// a while to start gets the host's time as of its "ready", not as of the
// request; a guest that never says ready is an error.
func TestSetClockSendsTheTimeWhenTheGuestIsReady(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, hostKey := testServer(t, signer.PublicKey())
	ctx := context.Background()

	const startup = 300 * time.Millisecond
	var readyAt time.Time
	got := make(chan string, 1)
	execHooks[clockScript] = func(ch ssh.Channel) uint32 {
		time.Sleep(startup) // the guest's shell starting
		readyAt = time.Now()
		io.WriteString(ch, "ready\n")
		line, _ := bufio.NewReader(ch).ReadString('\n')
		got <- line
		return 0
	}
	t.Cleanup(func() { delete(execHooks, clockScript) })

	c, err := Dial(ctx, addr, signer, AuthorizedKey(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := time.Now()
	if err := c.SetClock(ctx, time.Now); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(<-got)
	secs, nanos, ok := strings.Cut(line, ".")
	if !ok || len(nanos) != 9 {
		t.Fatalf("the guest read %q; want SECONDS.NANOSECONDS", line)
	}
	s, err1 := strconv.ParseInt(secs, 10, 64)
	n, err2 := strconv.ParseInt(nanos, 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("the guest read %q", line)
	}
	at := time.Unix(s, n)
	if at.Before(readyAt) || at.Sub(readyAt) > 200*time.Millisecond {
		t.Errorf("time sent %s; the guest said ready at %s (request at %s): the start-up was counted", at, readyAt, sent)
	}

	// A guest that never says ready.
	execHooks[clockScript] = func(ch ssh.Channel) uint32 {
		io.WriteString(ch, strings.Repeat("noise ", 100)+"\nnot ready\n")
		return 0
	}
	if err := c.SetClock(ctx, time.Now); err == nil || !strings.Contains(err.Error(), "never said") {
		t.Errorf("a guest that never said ready: %v", err)
	}
}

// TestHoldClock: the held shell runs its first command, says ready, and
// sets the clock when the time comes, over the same connection; a hold
// that is closed sends nothing.
func TestHoldClock(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, hostKey := testServer(t, signer.PublicKey())
	ctx := context.Background()
	script := "sync; " + clockScript
	got := make(chan string, 1)
	execHooks[script] = func(ch ssh.Channel) uint32 {
		io.WriteString(ch, "ready\n")
		line, _ := bufio.NewReader(ch).ReadString('\n')
		got <- line
		return 0
	}
	t.Cleanup(func() { delete(execHooks, script) })

	c, err := DialQuiet(ctx, addr, signer, AuthorizedKey(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	h, err := c.HoldClock(ctx, "sync")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the guest sleeps
	at := time.Unix(1800000000, 123456789)
	if err := h.Set(ctx, func() time.Time { return at }); err != nil {
		t.Fatal(err)
	}
	if line := strings.TrimSpace(<-got); line != "1800000000.123456789" {
		t.Errorf("the guest read %q", line)
	}

	// Closed without setting: the shell reads an empty input.
	c2, err := DialQuiet(ctx, addr, signer, AuthorizedKey(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	h2, err := c2.HoldClock(ctx, "sync")
	if err != nil {
		t.Fatal(err)
	}
	h2.Close()
	h2.Close()
	if line := <-got; line != "" {
		t.Errorf("a closed hold sent %q", line)
	}
	// A guest whose shell fails before it is ready.
	execHooks["false; "+clockScript] = func(ch ssh.Channel) uint32 { return 1 }
	c3, _ := Dial(ctx, addr, signer, AuthorizedKey(hostKey))
	if _, err := c3.HoldClock(ctx, "false"); err == nil {
		t.Error("a hold whose shell failed was returned")
	}
}

// TestRunClock: one session gets the head first, then, once it
// says ready, the time; a script that never says ready is an error.
func TestRunClock(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, hostKey := testServer(t, signer.PublicKey())
	ctx := context.Background()
	const script = "identity; " + clockScript + "; readdress"
	head := []byte("-----KEY-----\nsecret\n")
	gotHead, gotTime := make(chan string, 1), make(chan string, 1)
	execHooks[script] = func(ch ssh.Channel) uint32 {
		r := bufio.NewReader(ch)
		b := make([]byte, len(head))
		io.ReadFull(r, b)
		gotHead <- string(b)
		io.WriteString(ch, "ready\n")
		line, _ := r.ReadString('\n')
		gotTime <- line
		return 0
	}
	t.Cleanup(func() { delete(execHooks, script) })
	c, err := Dial(ctx, addr, signer, AuthorizedKey(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	at := time.Unix(1800000000, 5)
	if err := c.RunClock(ctx, script, func() time.Time { return at }, ClockRun{Head: head}); err != nil {
		t.Fatal(err)
	}
	if got := <-gotHead; got != string(head) {
		t.Errorf("head %q, want %q", got, head)
	}
	if got := strings.TrimSpace(<-gotTime); got != "1800000000.000000005" {
		t.Errorf("time %q", got)
	}

	const silent = "identity; readdress"
	execHooks[silent] = func(ch ssh.Channel) uint32 { return 0 }
	t.Cleanup(func() { delete(execHooks, silent) })
	if err := c.RunClock(ctx, silent, time.Now, ClockRun{Head: head}); err == nil || !strings.Contains(err.Error(), "never said") {
		t.Errorf("a script that never said ready: %v", err)
	}
}

// TestRunClockTailAndMarker: the tail follows the time; once the marker
// is said, a session that does not end is left after a second at most,
// and one that never says it and fails is an error.
func TestRunClockTailAndMarker(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(cpriv)
	addr, hostKey := testServer(t, signer.PublicKey())
	ctx := context.Background()
	const script = "identity and readdress"
	gotTail := make(chan string, 1)
	release := make(chan struct{})
	execHooks[script] = func(ch ssh.Channel) uint32 {
		r := bufio.NewReader(ch)
		io.WriteString(ch, "hostname x\nready\n")
		r.ReadString('\n') // the time
		rest, _ := io.ReadAll(r)
		gotTail <- string(rest)
		io.WriteString(ch, "readdressing\n")
		<-release // the guest's network is gone: the session never ends
		return 0
	}
	const failing = "identity that fails"
	execHooks[failing] = func(ch ssh.Channel) uint32 {
		io.WriteString(ch, "ready\n")
		return 1
	}
	t.Cleanup(func() { close(release); delete(execHooks, script); delete(execHooks, failing) })
	c, err := Dial(ctx, addr, signer, AuthorizedKey(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	t0 := time.Now()
	if err := c.RunClock(ctx, script, time.Now, ClockRun{Tail: []byte("key1\nkey2\n"), Stdout: &out, Marker: "readdressing"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("took %v", took)
	}
	if got := <-gotTail; got != "key1\nkey2\n" {
		t.Errorf("tail %q", got)
	}
	if !strings.HasPrefix(out.String(), "hostname x\n") {
		t.Errorf("stdout %q", out.String())
	}
	if err := c.RunClock(ctx, failing, time.Now, ClockRun{Marker: "readdressing"}); err == nil {
		t.Error("a failed session without the marker was no error")
	}
}
