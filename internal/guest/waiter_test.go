package guest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testProgram is a waiter's program for the tests: it says its
// arguments, reads a line (the head), says "ready", reads the time and
// the rest of its input and writes them to the file its first argument
// names, then says "done" (the marker) or dies if its second argument
// is "die".
const testProgram = `my ($file, $how) = @ARGV;
print "args " . join("|", @ARGV) . "\n";
my $head = <STDIN>;
print "ready\n";
my $t = <STDIN>;
local $/; my $rest = <STDIN>;
open(my $f, ">", $file) or die "open $file: $!\n";
print $f "$head$t$rest";
close($f);
die "asked to die\n" if $how eq "die";
if ($how eq "long") { print "x" x 5000; sleep 5; }
if ($main::helper) { print {$main::helper} "from the program\n"; close($main::helper); }
print "done\n";
`

// startWaiter starts the waiter with testProgram on a free port of
// 127.0.0.1 and returns its address and token.
func startWaiter(t *testing.T, helper ...string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	token, err := NewWaiterToken()
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := WaiterCommand(testProgram, "127.0.0.1", port, helper...)
	if err != nil {
		t.Fatal(err)
	}
	in, err := WaiterInput(token)
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command("sh", "-c", cmd)
	c.Stdin = bytes.NewReader(in)
	out, err := c.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "listening" {
		t.Fatalf("start the waiter: %v %q", err, out)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.Cleanup(func() {
		// A waiter a test left waiting: send it its token, with a
		// program that ends at once.
		if c, err := net.Dial("tcp", addr); err == nil {
			h, _ := waiterHeader(token, []string{"/dev/null", "die"})
			c.Write(h)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 512)
			c.Read(b)
			c.Close()
		}
	})
	return addr, token
}

func TestWaiter(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "got")
	// The helper, started before the waiter waits, gets what the
	// program writes to it.
	helped := filepath.Join(dir, "helped")
	addr, token := startWaiter(t, "sh", "-c", "cat > "+helped)
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(waiterHelper(t, addr)) + "/comm"); err != nil || strings.TrimSpace(string(b)) != "sh" {
		t.Fatalf("the helper was not running its own program when the waiter said it listened: %q %v", b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Another token, then a connection that sends nothing: both are
	// closed, and the waiter waits on.
	other, _ := NewWaiterToken()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	err = CallWaiter(ctx, c, other, []string{file, ""}, time.Now, ClockRun{Head: []byte("head\n")})
	if err == nil || !strings.Contains(err.Error(), "the waiter") {
		t.Fatalf("a wrong token: %v", err)
	}
	t.Logf("a wrong token: %v", err)
	if _, err := os.Stat(file); err == nil {
		t.Fatal("the program ran for a wrong token")
	}
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	now := time.Unix(1700000000, 123456789)
	start := time.Now()
	err = CallWaiter(ctx, c, token, []string{file, "", "a b\nc'd"}, func() time.Time { return now },
		ClockRun{Head: []byte("head\n"), Tail: []byte("key1\nkey2\n"), Stdout: &out, Marker: "done"})
	if err != nil {
		t.Fatalf("CallWaiter: %v (said %q)", err, out.String())
	}
	t.Logf("served after the idle connection in %v", time.Since(start))
	if want := "args " + file + "||a b\nc'd\nready\ndone\n"; out.String() != want {
		t.Errorf("said %q, want %q", out.String(), want)
	}
	got, _ := os.ReadFile(file)
	if want := "head\n1700000000.123456789\nkey1\nkey2\n"; string(got) != want {
		t.Errorf("the program read %q, want %q", got, want)
	}
	for i := 0; ; i++ {
		b, _ := os.ReadFile(helped)
		if string(b) == "from the program\n" {
			break
		}
		if i == 50 {
			t.Fatalf("the helper got %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// It is gone: nothing listens there any more.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the waiter still listens after running its program")
	}
}

func TestWaiterProgramFails(t *testing.T) {
	addr, token := startWaiter(t)
	file := filepath.Join(t.TempDir(), "got")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	err = CallWaiter(context.Background(), c, token, []string{file, "die"}, time.Now, ClockRun{Head: []byte("h\n"), Marker: "done"})
	if err == nil || !strings.Contains(err.Error(), "asked to die") || !strings.Contains(err.Error(), "exit ") {
		t.Fatalf("a failing program: %v", err)
	}
}

func TestWaiterArguments(t *testing.T) {
	if _, err := WaiterCommand("1;", "::1", 22); err == nil {
		t.Error("IPv6 accepted")
	}
	if _, err := WaiterCommand("1;", "10.0.0.2", 0); err == nil {
		t.Error("port 0 accepted")
	}
	for _, tok := range []string{"", strings.Repeat("A", 64), strings.Repeat("a", 63), strings.Repeat("g", 64), strings.Repeat("a", 63) + " "} {
		if _, err := WaiterInput(tok); err == nil {
			t.Errorf("token %q accepted", tok)
		}
	}
	// The token is never on the command line, where any process in
	// the guest could read it.
	tok := strings.Repeat("ab", 32)
	if cmd, err := WaiterCommand("1;", "10.0.0.2", 22, "ip", "-batch", "-"); err != nil || strings.Contains(cmd, tok) {
		t.Errorf("command %q %v", cmd, err)
	}
	// A waiter started with no token on its input says so and does not
	// listen.
	if _, err := exec.LookPath("perl"); err == nil {
		cmd, _ := WaiterCommand("1;", "127.0.0.1", 1)
		if out, err := exec.Command("sh", "-c", cmd+" </dev/null").CombinedOutput(); err == nil || !strings.Contains(string(out), "no token") {
			t.Errorf("a waiter without a token: %v %q", err, out)
		}
	}
	if _, err := waiterHeader(strings.Repeat("a", 64), []string{"x\x00y"}); err == nil {
		t.Error("an argument with a NUL accepted")
	}
	h, err := waiterHeader(strings.Repeat("a", 64), []string{"ab", ""})
	if err != nil || string(h) != strings.Repeat("a", 64)+" 00000004\nab\x00\x00" {
		t.Errorf("header %q %v", h, err)
	}
}

// waiterHelper is the PID of the child of the process listening at addr
// (the waiter's helper), found through /proc.
func waiterHelper(t *testing.T, addr string) int {
	t.Helper()
	out, err := exec.Command("sh", "-c", "ss -Htlnp 'sport = :"+addr[strings.LastIndex(addr, ":")+1:]+"' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2").Output()
	if err != nil {
		t.Fatal(err)
	}
	waiter := strings.TrimSpace(string(out))
	kids, err := os.ReadFile("/proc/" + waiter + "/task/" + waiter + "/children")
	if err != nil || len(strings.Fields(string(kids))) != 1 {
		t.Fatalf("the waiter %q's children: %q %v", waiter, kids, err)
	}
	pid, _ := strconv.Atoi(strings.Fields(string(kids))[0])
	return pid
}

// TestWaiterLongLine: a guest that says a line longer than the waiter's
// programs ever do is cut off, not buffered.
func TestWaiterLongLine(t *testing.T) {
	addr, token := startWaiter(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	err = CallWaiter(context.Background(), c, token, []string{filepath.Join(t.TempDir(), "got"), "long"}, time.Now, ClockRun{Head: []byte("h\n"), Marker: "done"})
	if err == nil || !strings.Contains(err.Error(), "longer than expected") {
		t.Fatalf("a long line: %v", err)
	}
}
