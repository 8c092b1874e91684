package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/model"
)

func TestParseForwardSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    forwardSpec
		wantErr string
	}{
		{"8080", forwardSpec{8080, 8080}, ""},
		{"9000:80", forwardSpec{9000, 80}, ""},
		{":5432", forwardSpec{0, 5432}, ""},
		{"0:22", forwardSpec{0, 22}, ""},
		{"0", forwardSpec{}, "remote port \"0\" must be 1-65535"},
		{"80:0", forwardSpec{}, "remote port"},
		{"70000", forwardSpec{}, "remote port"},
		{"http", forwardSpec{}, "remote port"},
		{"-1:80", forwardSpec{}, "local port \"-1\""},
		{"1:2:3", forwardSpec{}, "remote port \"2:3\""},
		{" 80", forwardSpec{}, "remote port"},
		{"+80", forwardSpec{}, "remote port"},
		{"", forwardSpec{}, "remote port"},
	}
	for _, tt := range tests {
		got, err := parseForwardSpec(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseForwardSpec(%q) = %+v, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseForwardSpec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// TestPortForward forwards two local ports to a "guest" web server and a
// guest port nobody listens on, carries many requests at once, and ends
// with the context, releasing the hold.
func TestPortForward(t *testing.T) {
	b := newTestBackend(t)
	app := serveBackend(t, b)
	b.addVM("dev", model.VMStateRunning, nil)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "guest says %s", r.URL.Path)
	}))
	defer web.Close()
	b.tcp["dev:80"] = web.Listener.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan forwardOutput, 1)
	var logMu sync.Mutex
	var logs []string
	done := make(chan error, 1)
	go func() {
		done <- portForward(ctx, app.api(), "dev", "127.0.0.1", []forwardSpec{{0, 80}, {0, 81}}, func(o forwardOutput) error {
			ready <- o
			return nil
		}, func(f string, a ...any) {
			logMu.Lock()
			defer logMu.Unlock()
			logs = append(logs, fmt.Sprintf(f, a...))
		})
	}()
	var out forwardOutput
	select {
	case out = <-ready:
	case err := <-done:
		t.Fatalf("port-forward: %v", err)
	}
	if out.VM != "dev" || len(out.Forwards) != 2 || out.Forwards[0].RemotePort != 80 || strings.HasSuffix(out.Forwards[0].Local, ":0") {
		t.Fatalf("bindings: %+v", out)
	}
	if n := b.heldCount(); n != 1 {
		t.Errorf("%d holds while forwarding; want 1", n)
	}
	// Many requests at once, each on its own connection.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(fmt.Sprintf("http://%s/req%d", out.Forwards[0].Local, i))
			if err != nil {
				errs <- err
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("guest says /req%d", i); string(body) != want {
				errs <- fmt.Errorf("got %q, want %q", body, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A guest port nobody listens on: the local connection is closed and
	// the reason logged.
	c, err := net.Dial("tcp", out.Forwards[1].Local)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read from a forward to a closed guest port: %d, %v; want EOF", n, err)
	}
	c.Close()
	logMu.Lock()
	if len(logs) != 1 || !strings.Contains(logs[0], "dev:81: connect to dev port 81: connection refused") {
		t.Errorf("logs: %q", logs)
	}
	logMu.Unlock()

	cancel()
	if err := <-done; err != nil {
		t.Errorf("port-forward ended with %v; want nil after Ctrl-C", err)
	}
	if _, err := net.Dial("tcp", out.Forwards[0].Local); err == nil {
		t.Error("the local port still listens after the forward ended")
	}
	harnessWait(t, func() bool { return b.heldCount() == 0 }, "the hold to be released")
}

func TestPortForwardRefuses(t *testing.T) {
	b := newTestBackend(t)
	app := serveBackend(t, b)
	b.addVM("off", model.VMStateStopped, nil)
	b.addVM("dev", model.VMStateRunning, nil)
	ready := func(forwardOutput) error { t.Error("ready called"); return nil }
	ctx := context.Background()
	if err := portForward(ctx, app.api(), "ghost", "127.0.0.1", []forwardSpec{{0, 80}}, ready, t.Logf); model.ErrorCode(err) != model.ENOTFOUND {
		t.Errorf("unknown vm: %v", err)
	}
	if err := portForward(ctx, app.api(), "off", "127.0.0.1", []forwardSpec{{0, 80}}, ready, t.Logf); err == nil || !strings.Contains(err.Error(), "start it with") {
		t.Errorf("stopped vm: %v", err)
	}
	// A local port in use: nothing is left listening or held.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	err := portForward(ctx, app.api(), "dev", "127.0.0.1", []forwardSpec{{0, 80}, {port, 80}}, ready, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("port in use: %v", err)
	}
	harnessWait(t, func() bool { return b.heldCount() == 0 }, "the hold to be released")
}

func harnessWait(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Errorf("timed out waiting for %s", what)
}

// TestPortForwardCommandUsage: bad arguments are usage errors.
func TestPortForwardCommandUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"port-forward", "dev"}, "needs a VM NAME and at least one"},
		{[]string{"port-forward", "dev", "x"}, "remote port \"x\""},
		{[]string{"port-forward", "dev", "80", "--address", "example"}, "--address"},
	} {
		var errb strings.Builder
		app := &App{Stdin: eofReader{}, Stdout: io.Discard, Stderr: &errb, Getenv: func(string) string { return "" }}
		if code := app.Run(context.Background(), tt.args); code != 2 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("banger %v: exit %d, %q; want 2 and %q", tt.args, code, errb.String(), tt.want)
		}
	}
}
