package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// A waiter is a perl program left listening in a guest that is about to
// be snapshotted (an image's warm state): every VM restored from that
// snapshot has it already running, so the daemon's first command there
// costs one TCP connection instead of an SSH handshake, a session and a
// program's start (together about 1.5 s in an emulated guest). It runs
// one program, compiled into it when it was started, for the first
// connection that sends its token, with its standard input, output and
// error on that connection; then it is gone. Connections without the
// token are closed and it waits on. The token is random, made by the
// daemon and kept in root's files: another guest that can reach the
// snapshotted VM while it is made cannot start the program, and every
// VM restored from it is quarantined (only the host reaches it) until
// the program has run.
//
// The wire: the daemon sends the token (64 hex digits), a space, the
// length of the arguments (8 hex digits) and a newline, then the
// arguments, each ended by a NUL. From then on the connection is the
// program's standard input and output; when the program ends, the
// waiter says "exit N" with its exit status.

// WaiterTokenLen is the length of a waiter's token: 32 random bytes in
// hex.
const WaiterTokenLen = 64

// NewWaiterToken makes a waiter's token.
func NewWaiterToken() (string, error) {
	b := make([]byte, WaiterTokenLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("waiter token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ValidWaiterToken says whether s has a waiter token's form.
func ValidWaiterToken(s string) bool {
	if len(s) != WaiterTokenLen {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// waiterPrelude is the waiter's perl before the program it runs. Its
// arguments are the address and port to listen on and the helper's
// command line, if any; the token is the first line of its standard
// input (never an argument: any process in the guest can read another's
// arguments). It listens, then forks: the child
// leaves the session, starts the helper (and waits until the helper runs
// its own program), and waits for connections; the parent says
// "listening" once the child is that far, and ends (so the command
// starting it returns).
// A connection gets 8 reads of at most 2 s each to send its header; one
// that does not, or sends another token (compared in constant time), is
// closed.
const waiterPrelude = `use strict; use Socket; use POSIX ();
{
	my ($ip, $port, @helper) = @ARGV;
	my $token = <STDIN> // "";
	chomp($token);
	die "no token on the standard input\n" unless $token =~ /^[0-9a-f]{64}$/;
	my $addr = inet_aton($ip) // die "address $ip\n";
	socket(my $l, PF_INET, SOCK_STREAM, getprotobyname("tcp")) or die "socket: $!\n";
	setsockopt($l, SOL_SOCKET, SO_REUSEADDR, 1) or die "setsockopt: $!\n";
	bind($l, sockaddr_in($port, $addr)) or die "listen on $ip:$port: $!\n";
	listen($l, 16) or die "listen: $!\n";
	$| = 1;
	pipe(my $up, my $said) or die "pipe: $!\n";
	my $pid = fork() // die "fork: $!\n";
	if ($pid) {
		close($said);
		my $n = sysread($up, my $x, 1);
		die "the waiter did not start\n" unless $n;
		print "listening\n";
		POSIX::_exit(0);
	}
	close($up);
	POSIX::setsid();
	open(STDIN, "<", "/dev/null"); open(STDOUT, ">", "/dev/null"); open(STDERR, ">", "/dev/null");
	if (@helper) {
		my $me = readlink("/proc/self/exe") // "";
		my $hp = open($main::helper, "|-", @helper) or POSIX::_exit(1);
		# Until the helper runs its own program (2 s at most).
		for (my $i = 0; $i < 100 && (readlink("/proc/$hp/exe") // $me) eq $me; $i++) { select(undef, undef, undef, 0.02); }
	}
	syswrite($said, "1");
	close($said);
	my ($c, $argv);
	while (1) {
		accept($c, $l) or next;
		my $h = "";
		for (my $i = 0; $i < 8 && length($h) < 74; $i++) {
			my $r = ""; vec($r, fileno($c), 1) = 1;
			last unless select($r, undef, undef, 2) > 0;
			my $n = sysread($c, $h, 74 - length($h), length($h));
			last unless $n;
		}
		if (length($h) == 74 && $h =~ /^([0-9a-f]{64}) ([0-9a-f]{8})\n$/) {
			my ($t, $len) = ($1, hex($2));
			my $d = 0;
			$d |= ord(substr($t, $_, 1)) ^ ord(substr($token, $_, 1)) for 0 .. 63;
			if ($d == 0 && $len <= 1 << 20) {
				$argv = "";
				while (length($argv) < $len) {
					my $n = sysread($c, $argv, $len - length($argv), length($argv));
					last unless $n;
				}
				last if length($argv) == $len;
			}
		}
		close($c);
	}
	close($l);
	open(STDIN, "<&", $c) or POSIX::_exit(1);
	open(STDOUT, ">&", $c) or POSIX::_exit(1);
	open(STDERR, ">&", $c) or POSIX::_exit(1);
	close($c);
	select(STDERR); $| = 1; select(STDOUT); $| = 1;
	@ARGV = split(/\0/, $argv, -1);
	pop(@ARGV);
}
END { print STDOUT "exit $?\n"; }
`

// WaiterCommand is the command line that starts a waiter running
// program (perl) in the guest, listening on ip:port for the token on
// its standard input (WaiterInput). It prints "listening" once it is. helper, if set, is a command the
// waiter starts before it waits, its standard input a pipe the program
// finds open as $main::helper (its output goes nowhere): a program
// started ahead, in the snapshot, costs nothing when the waiter runs.
// The helper reads nothing until the program writes; if the program
// does not, it gets the end of its input when the waiter ends.
func WaiterCommand(program, ip string, port int, helper ...string) (string, error) {
	if net.ParseIP(ip).To4() == nil {
		return "", fmt.Errorf("waiter address %q is not IPv4", ip)
	}
	if port <= 0 || port > 65535 {
		return "", fmt.Errorf("waiter port %d", port)
	}
	cmd := "perl -e " + Quote(waiterPrelude+program) + " " + Quote(ip) + " " + strconv.Itoa(port)
	for _, h := range helper {
		cmd += " " + Quote(h)
	}
	return cmd, nil
}

// WaiterInput is the standard input of WaiterCommand's command: the
// token.
func WaiterInput(token string) ([]byte, error) {
	if !ValidWaiterToken(token) {
		return nil, errors.New("malformed waiter token")
	}
	return []byte(token + "\n"), nil
}

// waiterHeader is what the daemon sends a waiter first: the token, the
// arguments' length, the arguments.
func waiterHeader(token string, args []string) ([]byte, error) {
	if !ValidWaiterToken(token) {
		return nil, errors.New("malformed waiter token")
	}
	var b bytes.Buffer
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errors.New("a waiter's argument with a NUL in it")
		}
		b.WriteString(a)
		b.WriteByte(0)
	}
	if b.Len() > 1<<20 {
		return nil, fmt.Errorf("waiter arguments of %d bytes", b.Len())
	}
	return append([]byte(fmt.Sprintf("%s %08x\n", token, b.Len())), b.Bytes()...), nil
}

// maxWaiterLine is the longest line read from a waiter: its programs
// say short lines; a guest cannot make the daemon buffer more.
const maxWaiterLine = 4096

// CallWaiter runs the waiter's program over c, a connection to it, as
// RunClock runs a command over SSH: it sends the token and args, then
// r.Head; when the program says "ready", the time now() gives and
// r.Tail, and ends its input. It returns once the program has said
// r.Marker (if set; the connection may be gone after it) or has ended
// with status 0. c is closed when it returns.
func CallWaiter(ctx context.Context, c net.Conn, token string, args []string, now func() time.Time, r ClockRun) error {
	defer c.Close()
	head, err := waiterHeader(token, args)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(append(head, r.Head...))
		werr <- err
	}()
	fail := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("the waiter: %w", ctx.Err())
		}
		return err
	}
	var tail tailBuffer
	tail.b, tail.max = &bytes.Buffer{}, 512
	said := func() string { return strings.TrimSpace(tail.b.String()) }
	ready := false
	br := bufio.NewReaderSize(c, maxWaiterLine)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fail(errors.New("the waiter said a line longer than expected"))
		}
		if err != nil {
			if err == io.EOF {
				err = errors.New("it ended without an exit status")
			}
			return fail(fmt.Errorf("the waiter: %w (it said: %q)", err, said()))
		}
		text := strings.TrimSpace(string(line))
		if st, ok := strings.CutPrefix(text, "exit "); ok {
			if st == "0" {
				if !ready {
					return errors.New("the waiter's program ended without asking for the time")
				}
				return nil
			}
			return fmt.Errorf("the waiter's program failed (exit %s): %s", st, said())
		}
		tail.Write(line)
		if r.Stdout != nil {
			r.Stdout.Write(line)
		}
		switch {
		case text == "ready" && !ready:
			ready = true
			if err := <-werr; err != nil {
				return fail(fmt.Errorf("send to the waiter: %w", err))
			}
			t := now()
			msg := append([]byte(fmt.Sprintf("%d.%09d\n", t.Unix(), t.Nanosecond())), r.Tail...)
			if _, err := c.Write(msg); err != nil {
				return fail(fmt.Errorf("send the time to the waiter: %w", err))
			}
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		case r.Marker != "" && text == r.Marker:
			if !ready {
				return errors.New("the waiter's program went on without asking for the time")
			}
			return nil
		}
	}
}
