package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/api"
	"banger/internal/guest"
	"banger/internal/model"
	"banger/internal/network"
	"banger/internal/workspace"
)

// The guest side of a fork's child (fork.go): the steps a resume runs
// for a child only.

// forkQuarantine shuts a child's tap off from everything but the daemon
// before its VMM has it; a resume of a VM that is not a fork's child
// passes.
func (d *Daemon) forkQuarantine(ctx context.Context, s *startRun) error {
	if s.fork == nil {
		return nil
	}
	return d.net.Quarantine(ctx, s.h.Tap)
}

// forkReidentify gives a child its source's workspaces (each on its own
// branch) and makes it its own machine (reidentify), still behind its
// quarantined tap.
func (d *Daemon) forkReidentify(ctx context.Context, s *startRun) error {
	if err := d.forkWorkspaces(ctx, s); err != nil {
		return err
	}
	return d.boot.reidentify(ctx, s)
}

// forkAdmit puts a child's tap on the bridge once the guest is its own
// machine, checks it answers there, and records that it is no longer
// half made.
func (d *Daemon) forkAdmit(ctx context.Context, s *startRun) error {
	if s.fork == nil {
		return nil
	}
	if err := d.net.Admit(ctx, s.h.Tap); err != nil {
		return err
	}
	if err := d.net.Announce(ctx, s.vm.Runtime.GuestIP, s.vm.Runtime.GuestMAC); err != nil {
		// Only the first packets wait longer.
		s.log.Warn("the host's neighbour entry for the child", "err", err)
	}
	if err := d.boot.waitAdmitted(ctx, s); err != nil {
		return err
	}
	s.vm.Runtime.ForkOf = ""
	s.vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, s.vm)
}

// identityProgram (perl) makes a restored copy of another VM its own
// machine, in one process: in an emulated guest every program started
// costs tens of milliseconds, and a shell script doing this started
// twenty. It runs as the daemon's first command in the child, before
// anything else the daemon does there. Its arguments (identityArgs) are
// the host's random bytes (hex), the new machine-id, the old and new
// hostnames, the new host key's public half, the length of its private
// half, the sync(2) and settimeofday(2) system calls' numbers (0: run
// sync, date), a root directory ("" in a guest; a test's temporary
// directory), whether to add the user's keys (1 or 0), and the ip(8)
// batch that gives the guest its own address ("": none). Every one is
// made or checked by the daemon; none comes from a guest.
//
// Its standard input is the new SSH host key (private, OpenSSH PEM;
// read to its exact length), then the host's time, then, when it adds
// them, the user's keys. The kernel RNG gets the host's bytes with
// RNDADDENTROPY and is reseeded at once with RNDRESEEDCRNG, so no two
// children draw the same numbers from here on; the saved random seed
// goes. Files are replaced by rename, never written in place; sshd is
// told (SIGHUP) to load the new key; everything is synced before the
// program ends or says the marker (a VM killed a moment later must not
// boot with its source's key): once, after the user's keys when it adds
// them (each sync costs tens of milliseconds in an emulated guest). It prints
// "hostname NAME", the name the kernel now has, then "ready" and reads
// the time, which it sets at once (settimeofday; the settimeofday number
// "-" skips the clock, for a test). Then it adds the user's keys
// (perlAddKeys) and, last, says readdressingMarker and hands the batch
// to an ip(8) in a session of its own (setsid): the address the
// daemon's connection runs over goes, so the daemon goes on once it has
// read the marker (guest.ClockRun.Marker). The guest announces its new
// address as its link comes up (arp_notify). Run by a warm state's
// waiter (guest.WaiterCommand), it hands the batch to the ip(8) the
// waiter started before the snapshot (its helper, $main::helper: no
// program starts now).
const identityProgram = `use strict; use Fcntl;
my ($seed, $mid, $old, $new, $pub, $keylen, $nrsync, $nrtime, $root, $keys, $batch) = @ARGV;
$| = 1;
sub put {
	my ($path, $data, $mode) = @_;
	my $tmp = "$root$path.new";
	unlink($tmp);
	sysopen(my $f, $tmp, O_WRONLY | O_CREAT | O_EXCL, $mode) or die "create $tmp: $!\n";
	my $n = syswrite($f, $data);
	die "write $tmp: $!\n" unless defined($n) && $n == length($data);
	close($f) or die "close $tmp: $!\n";
	chmod($mode, $tmp) or die "chmod $tmp: $!\n";
	rename($tmp, "$root$path") or die "rename $tmp: $!\n";
}
` + perlAddKeys + `binmode(STDIN);
my $key = "";
while (length($key) < $keylen) {
	my $n = sysread(STDIN, $key, $keylen - length($key), length($key));
	die "read the host key: $!\n" unless defined $n;
	die "the host key was cut short\n" if $n == 0;
}
open(my $rng, "+<", "$root/dev/urandom") or die "open /dev/urandom: $!\n";
my $b = pack("H*", $seed);
ioctl($rng, 0x40085203, pack("ii", length($b) * 8, length($b)) . $b) or die "RNDADDENTROPY: $!\n";
ioctl($rng, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n";
close($rng);
unlink("$root/var/lib/systemd/random-seed");
put("/etc/machine-id", "$mid\n", 0444);
put("/var/lib/dbus/machine-id", "$mid\n", 0644) if -f "$root/var/lib/dbus/machine-id" && ! -l "$root/var/lib/dbus/machine-id";
put("/etc/ssh/ssh_host_ed25519_key", $key, 0600);
put("/etc/ssh/ssh_host_ed25519_key.pub", "$pub\n", 0644);
open(my $h, ">", "$root/proc/sys/kernel/hostname") or die "set the hostname: $!\n";
print $h $new;
close($h) or die "set the hostname: $!\n";
put("/etc/hostname", "$new\n", 0644);
if (open(my $f, "<", "$root/etc/hosts")) {
	local $/;
	my $t = <$f> // "";
	close($f);
	put("/etc/hosts", $t, 0644) if $t =~ s/(^|[ \t])\Q$old\E(?=[ \t]|$)/$1$new/mg;
}
if (open(my $p, "<", "$root/run/sshd.pid")) {
	my $pid = <$p> // "";
	close($p);
	kill("HUP", $1) if $pid =~ /^(\d+)\s*$/;
}
if (open(my $an, ">", "$root/proc/sys/net/ipv4/conf/eth0/arp_notify")) { print $an "1\n"; close($an); }
# addkeys syncs once more at the end: one sync then does for both.
unless ($keys) { if ($nrsync > 0) { syscall($nrsync + 0); } else { system("sync") == 0 or die "sync failed\n"; } }
open(my $g, "<", "$root/proc/sys/kernel/hostname") or die "read the hostname: $!\n";
my $got = <$g> // "";
close($g);
chomp($got);
print "hostname $got\n";
if ($nrtime ne "-") {
	print "ready\n";
	my $t = <STDIN>;
	die "no time from the host\n" unless defined $t;
	chomp($t);
	die "a time that is not seconds.nanoseconds\n" unless $t =~ /^(\d+)\.(\d{9})$/;
	my ($s, $ns) = ($1, $2);
	unless ($nrtime > 0 && syscall($nrtime + 0, pack("q q", $s, int($ns / 1000)), 0) == 0) {
		system("date -u -s \@$t >/dev/null") == 0 or die "set the clock: date failed\n";
	}
}
addkeys($root, $nrsync) if $keys;
if ($batch ne "") {
	print "` + readdressingMarker + `\n";
	# A waiter started ip ahead (its helper); otherwise, or if that ip
	# is gone, one is started now.
	my $sent = 0;
	if ($main::helper) {
		local $SIG{PIPE} = "IGNORE";
		$sent = print {$main::helper} $batch;
		close($main::helper);
	}
	unless ($sent) {
		my $pid = open(my $ip, "|-") // die "fork: $!\n";
		if ($pid == 0) {
			open(STDOUT, ">", "/dev/null");
			open(STDERR, ">", "/dev/null");
			exec("setsid", "-f", "ip", "-batch", "-") or exit(127);
		}
		print $ip $batch;
		close($ip);
	}
}
`

// perlAddKeys is a perl sub, addkeys(root, nrsync): it adds the keys on
// standard input, one per line, to root's authorized_keys, each once
// (blank lines skipped), then syncs.
const perlAddKeys = `sub addkeys {
	my ($root, $nrsync) = @_;
	my $dir = "$root/root/.ssh";
	my $f = "$dir/authorized_keys";
	umask(077);
	for my $d ("$root/root", $dir) { mkdir($d, 0700) or -d $d or die "mkdir $d: $!\n"; }
	my %have;
	if (open(my $in, "<", $f)) { while (my $l = <$in>) { chomp($l); $have{$l} = 1; } close($in); }
	my $add = "";
	while (my $k = <STDIN>) { chomp($k); next if $k eq "" || $have{$k}; $have{$k} = 1; $add .= "$k\n"; }
	open(my $out, ">>", $f) or die "open $f: $!\n";
	print $out $add or die "write $f: $!\n";
	close($out) or die "write $f: $!\n";
	if ($nrsync > 0) { syscall($nrsync + 0); } else { system("sync") == 0 or die "sync failed\n"; }
}
`

// syscallNumbers are sync(2)'s and settimeofday(2)'s numbers in a guest
// of the host's architecture (banger's guests are), 0 where unknown:
// the programs then run sync and date.
func syscallNumbers() (sync, settimeofday int) {
	switch runtime.GOARCH {
	case "amd64":
		return 162, 164
	case "arm64":
		return 81, 170
	}
	return 0, 0
}

// identityArgs are identityProgram's arguments for vm; seed and mid are
// the host's random bytes, keyLen the length of the private host key
// sent on its standard input, keys whether the user's keys follow the
// time, batch the re-address (readdressBatch; "" for none).
func identityArgs(fork forkIdentity, vm model.VMRecord, seed, mid []byte, keyLen int, keys bool, batch string) ([]string, error) {
	for _, n := range []string{fork.srcName, vm.Name} {
		if err := model.ValidateVMName(n); err != nil {
			return nil, err
		}
	}
	pub := strings.TrimSpace(vm.Runtime.SSHHostKey)
	if pub == "" || strings.ContainsAny(pub, "\n'") {
		return nil, fmt.Errorf("host key %q", pub)
	}
	if keyLen <= 0 || keyLen > 1<<16 {
		return nil, fmt.Errorf("private host key of %d bytes", keyLen)
	}
	nrSync, nrTime := syscallNumbers()
	k := "0"
	if keys {
		k = "1"
	}
	return []string{hex.EncodeToString(seed), hex.EncodeToString(mid), fork.srcName, vm.Name, pub, strconv.Itoa(keyLen),
		strconv.Itoa(nrSync), strconv.Itoa(nrTime), "", k, batch}, nil
}

// identityCommand is the command line running identityProgram with args
// (identityArgs).
func identityCommand(args []string) string {
	return "perl -e " + guest.Quote(identityProgram) + " " + quoteAll(args)
}

// quoteAll quotes each of args for the guest's shell, space-separated.
func quoteAll(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = guest.Quote(a)
	}
	return strings.Join(q, " ")
}

// readdressBatch is the ip(8) batch that gives vm its own MAC, address
// and default route, each value checked: the link goes down, gets its
// MAC, loses its addresses, gets its own, comes up (and announces it:
// arp_notify) and gets its route back.
func readdressBatch(cfg model.DaemonConfig, vm model.VMRecord) (string, error) {
	prefix, err := network.Subnet(cfg.BridgeIP, cfg.CIDR)
	if err != nil {
		return "", err
	}
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil || !prefix.Contains(ip) {
		return "", fmt.Errorf("guest IP %q is not in %s", vm.Runtime.GuestIP, prefix)
	}
	mac, err := net.ParseMAC(vm.Runtime.GuestMAC)
	if err != nil {
		return "", fmt.Errorf("guest MAC %q: %w", vm.Runtime.GuestMAC, err)
	}
	gw, err := netip.ParseAddr(cfg.BridgeIP)
	if err != nil {
		return "", fmt.Errorf("bridge IP %q: %w", cfg.BridgeIP, err)
	}
	return fmt.Sprintf("link set dev eth0 down\nlink set dev eth0 address %s\naddr flush dev eth0\naddr add %s dev eth0\nlink set dev eth0 up\nroute replace default via %s dev eth0\n",
		mac, netip.PrefixFrom(ip, prefix.Bits()), gw), nil
}

// readdressScript runs a re-address batch (readdressBatch, its argument)
// in a session of its own, after saying readdressingMarker, as
// identityProgram does at its end: for a child whose identity session
// could not end with it (workspace branches to rename, files to sync
// first).
const readdressScript = `echo ` + readdressingMarker + `
printf '%s' "$1" | setsid -f ip -batch - >/dev/null 2>&1
`

// readdressingMarker is the line said before the address changes.
const readdressingMarker = "readdressing"

// readdressCommand is the command line running readdressScript with
// batch.
func readdressCommand(batch string) string {
	return "sh -c " + guest.Quote(readdressScript) + " sh " + guest.Quote(batch)
}

// reidentify makes a restored child its own machine, reaching it only
// through its quarantined tap, over one SSH connection at the source's
// address with the source's host key (only the child is on that link).
// One process (identityProgram) changes its identity, sets its clock,
// says the hostname it now has and, for a warm create, adds the user's
// keys; then it changes the address, and the daemon waits until the
// child answers at its own address, still only through the quarantined
// tap. A child with workspace branches to rename, or files to sync
// before the keys, gets those over the same connection between the
// identity and the re-address (readdressScript). Its own host key is
// proven by every later connection (guest.Dial accepts only it). How
// long each part took is logged.
func (b vmmBooter) reidentify(ctx context.Context, s *startRun) error {
	signer, err := guest.LoadSigner(b.cfg.SSHKeyPath)
	if err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, min(b.cfg.BootTimeout, resumeSSHTimeout))
	defer cancel()
	go func() {
		select {
		case <-s.proc.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	lap := start
	var laps []any
	mark := func(name string) {
		now := time.Now()
		laps = append(laps, name+"_ms", now.Sub(lap).Milliseconds())
		lap = now
	}
	tap := s.h.Tap
	old := net.JoinHostPort(s.fork.srcIP, "22")
	seed := make([]byte, 64)
	mid := make([]byte, 16)
	rand.Read(seed)
	rand.Read(mid)
	priv, err := os.ReadFile(hostKeyPath(s.vm.Runtime.VMDir))
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	batch, err := readdressBatch(b.cfg, s.vm)
	if err != nil {
		return err
	}
	// All in one session unless something must come between the
	// identity and the re-address.
	_, syncErr := os.Lstat(fileSyncPath(s.vm.Runtime.VMDir))
	oneSession := len(s.renames) == 0 && (!s.fork.firstBoot || errors.Is(syncErr, fs.ErrNotExist))
	var keys []byte
	keysFile := userKeysPath(s.vm.Runtime.VMDir)
	run := guest.ClockRun{Head: priv}
	inline := ""
	if oneSession {
		inline = batch
		run.Marker = readdressingMarker
		if s.fork.firstBoot {
			if keys, err = os.ReadFile(keysFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("the user's keys: %w", err)
			}
			run.Tail = keys
		}
	}
	args, err := identityArgs(*s.fork, s.vm, seed, mid, len(priv), len(keys) > 0, inline)
	if err != nil {
		return err
	}
	var said boundedBuffer
	run.Stdout = &said
	// The waiter left in a warm state, if it is there, runs the
	// identity without an SSH handshake; otherwise (a fork, an older
	// warm state) an SSH session does, with the source's host key.
	waited, err := callWaiter(ctx, s, args, run, mark)
	if err != nil {
		return err
	}
	var conn *guest.Conn
	if !waited {
		if conn, err = dialVia(ctx, s.log, tap, old, signer, s.fork.srcHostKey); err != nil {
			return fmt.Errorf("reach the restored child at %s through %s: %w", old, tap, err)
		}
		defer conn.Close()
		mark("reached")
		if err := conn.RunClock(ctx, identityCommand(args), time.Now, run); err != nil {
			return fmt.Errorf("re-identify the child: %w", err)
		}
	}
	if got, want := said.hostname(), s.vm.Name; got != want {
		return fmt.Errorf("the child calls itself %q, not %q", got, want)
	}
	if oneSession {
		if len(keys) > 0 {
			os.Remove(keysFile)
		}
		mark("identity_clock_readdress")
	} else {
		mark("identity_clock")
		s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("%s: restored, reseeded and re-identified %dms after its VMM started", s.vm.Name, time.Since(start).Milliseconds())})
		if conn == nil {
			// The waiter gave it its own host key; sshd has it.
			if conn, err = dialVia(ctx, s.log, tap, old, signer, s.vm.Runtime.SSHHostKey); err != nil {
				return fmt.Errorf("reach the re-identified child at %s through %s: %w", old, tap, err)
			}
			defer conn.Close()
			mark("reached")
		}
		for _, r := range s.renames {
			if _, err := guestOutput(ctx, conn, workspace.RenameBranchScript(r.guestPath, r.from, r.to)); err != nil {
				return fmt.Errorf("workspace %s: the child's branch %s: %w", r.guestPath, r.to, err)
			}
		}
		if len(s.renames) > 0 {
			mark("branches_renamed")
		}
		if s.fork.firstBoot {
			if err := b.firstBoot(ctx, conn, s.vm); err != nil {
				return err
			}
			mark("first_boot")
		}
		if err := conn.RunDetaching(ctx, readdressCommand(batch), readdressingMarker); err != nil {
			return fmt.Errorf("give the child its own address: %w", err)
		}
		mark("readdress_sent")
	}
	if conn != nil {
		conn.Close()
	}
	own := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	if err := connectVia(ctx, s.log, tap, own); err != nil {
		return fmt.Errorf("the child did not answer at its own address %s: %w", own, err)
	}
	mark("own_address")
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("%s: restored, reseeded, re-identified and re-addressed %dms after its VMM started", s.vm.Name, time.Since(start).Milliseconds())})
	s.log.Info("fork child re-identified", append(laps, "total_ms", time.Since(start).Milliseconds())...)
	return nil
}

// callWaiter runs the identity (args, run) through the waiter the warm
// state left in s's guest, if it has one, and says whether it did. A
// guest whose waiter refuses or does not answer in a few seconds (a
// firewall of its own?) is left to SSH: false, no error.
func callWaiter(ctx context.Context, s *startRun, args []string, run guest.ClockRun, mark func(string)) (bool, error) {
	if s.fork.waiterToken == "" {
		return false, nil
	}
	addr, tap := s.fork.waiterAddr, s.h.Tap
	wctx, cancel := context.WithTimeout(ctx, waiterDialTimeout)
	c, err := dialRetry(wctx, s.log, addr, func(ctx context.Context) (net.Conn, error) {
		return guest.ConnectVia(ctx, tap, network.QuarantineAddr, addr)
	}, func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) })
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("reach the restored VM's waiter at %s through %s: %w", addr, tap, err)
		}
		s.log.Warn("no waiter answers in the restored VM; re-identifying it over SSH", "addr", addr, "err", err)
		return false, nil
	}
	mark("waiter_reached")
	if err := guest.CallWaiter(ctx, c, s.fork.waiterToken, args, time.Now, run); err != nil {
		return false, fmt.Errorf("re-identify the child through the waiter at %s: %w", addr, err)
	}
	return true, nil
}

// waiterDialTimeout bounds the wait for a warm state's waiter to accept
// a connection; a restored guest's waiter answers in milliseconds.
const waiterDialTimeout = 5 * time.Second

// boundedBuffer keeps the first 4 KiB a guest writes to it.
type boundedBuffer struct{ b []byte }

func (w *boundedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// hostname is the name in the line "hostname NAME" identityProgram said.
func (w *boundedBuffer) hostname() string {
	for _, l := range strings.Split(string(w.b), "\n") {
		if name, ok := strings.CutPrefix(l, "hostname "); ok {
			return strings.TrimSpace(name)
		}
	}
	return ""
}

// connectVia waits until addr accepts a TCP connection through tap
// (guest.ConnectVia), or ctx ends.
func connectVia(ctx context.Context, log *slog.Logger, tap, addr string) error {
	return probeTCP(ctx, log, addr, func(ctx context.Context) (net.Conn, error) {
		return guest.ConnectVia(ctx, tap, network.QuarantineAddr, addr)
	})
}

// probeTCP waits until dial connects, or ctx ends. A guest that has
// just changed its address, or whose tap has just joined the bridge,
// may leave the first SYN unanswered (its link came up a moment before
// its route, or it was still resolving its gateway), and the kernel
// would send it again only a second later. So each attempt gets a short
// time (100 ms for the first second, then doubled on each failure), and
// the next one sends a fresh SYN.
func probeTCP(ctx context.Context, log *slog.Logger, addr string, dial func(context.Context) (net.Conn, error)) error {
	c, err := dialRetry(ctx, log, addr, dial, nil)
	if err == nil {
		c.Close()
	}
	return err
}

// dialRetry is probeTCP's loop, returning the connection: it dials
// until dial connects, ctx ends, or final (if set) says an error is
// the answer (a refused connection, where nothing listens).
func dialRetry(ctx context.Context, log *slog.Logger, addr string, dial func(context.Context) (net.Conn, error), final func(error) bool) (net.Conn, error) {
	var last error
	begin := time.Now()
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		t := time.Now()
		actx, cancel := context.WithTimeout(ctx, wait)
		c, err := dial(actx)
		cancel()
		if err == nil {
			return c, nil
		}
		log.Debug("connect failed", "addr", addr, "attempt", attempt, "took_ms", time.Since(t).Milliseconds(), "err", err)
		if final != nil && final(err) {
			return nil, err
		}
		last = err
		if time.Since(begin) > time.Second {
			wait = min(2*wait, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dialVia dials addr through tap until it answers with hostKey or ctx
// ends. Each failed attempt is logged (debug), with how long it took:
// a restored guest that is slow to answer shows there whether its TCP
// connect or its SSH handshake is what waits.
func dialVia(ctx context.Context, log *slog.Logger, tap, addr string, signer ssh.Signer, hostKey string) (*guest.Conn, error) {
	var last error
	for attempt := 1; ; attempt++ {
		t := time.Now()
		conn, err := guest.DialVia(ctx, tap, network.QuarantineAddr, addr, signer, hostKey)
		if err == nil {
			return conn, nil
		}
		if errors.Is(err, guest.ErrNoHostKey) {
			return nil, err
		}
		log.Debug("dial through the quarantine failed", "addr", addr, "attempt", attempt, "took_ms", time.Since(t).Milliseconds(), "err", err)
		last = err
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitAdmitted checks the child answers on the bridge, as every VM is
// reached: a TCP connection to its SSH port at its own address. It was
// re-identified a moment before over its quarantined tap, where it then
// answered at its own address (reidentify), and that tap alone carries
// its address on the bridge, so no SSH handshake is made here; every
// later connection to it accepts only its own host key (guest.Dial).
func (b vmmBooter) waitAdmitted(ctx context.Context, s *startRun) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	addr := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	var d net.Dialer
	if err := probeTCP(ctx, s.log, addr, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }); err != nil {
		return fmt.Errorf("the child on the bridge: no answer at %s: %w", addr, err)
	}
	s.log.Info("fork child admitted", "answered_ms", time.Since(start).Milliseconds())
	return nil
}

// branchRename is a workspace's work branch a child renames.
type branchRename struct{ guestPath, from, to string }

// forkWorkspaces gives the child the source's workspaces, each that
// ships work on its own branch banger/<child>, so that `workspace
// fetch` of the child writes refs/remotes/banger-<child>/... only. The
// guest's branches are renamed by reidentify.
func (d *Daemon) forkWorkspaces(ctx context.Context, s *startRun) error {
	all, err := d.store.ListWorkspaces(ctx, s.fork.srcID)
	if err != nil {
		return err
	}
	s.renames = nil
	for _, w := range all {
		r := w.WorkspacePrepareResult
		r.VMID = s.vm.ID
		if r.Mode.Ships() && r.BranchName != "" {
			to := workspace.DefaultBranch(s.vm.Name)
			s.renames = append(s.renames, branchRename{guestPath: r.GuestPath, from: r.BranchName, to: to})
			r.BranchName = to
		}
		if err := d.store.PutWorkspace(ctx, r, w.PreparedWIP); err != nil {
			return fmt.Errorf("workspace %s of the child: %w", r.GuestPath, err)
		}
	}
	return nil
}
