package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
	if err := d.boot.waitAdmitted(ctx, s); err != nil {
		return err
	}
	s.vm.Runtime.ForkOf = ""
	s.vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, s.vm)
}

// reidentifyScript makes a restored copy of another VM its own machine,
// in one session: it runs as the daemon's first command in the child,
// before anything else the daemon does there. Its arguments are the
// host's random bytes (hex), the new machine-id, the old and new
// hostnames, the new host key's public half, the length of its private
// half, and the new MAC, address (CIDR) and gateway; every one is made
// or checked by the daemon (reidentifyArgs), none comes from a guest.
// Its standard input is the new SSH host key (private, OpenSSH PEM; read
// to its exact length), then the host's time (guest.ClockStep). The
// kernel RNG gets the host's bytes with RNDADDENTROPY and is reseeded at
// once with RNDRESEEDCRNG (from perl: no C compiler in guests), so no
// two children draw the same numbers from here on. sshd is told
// (SIGHUP) to load the new key. The clock is set, then the network is
// changed last, from a detached shell, a moment after the session has
// ended: it takes away the address the session runs over. The guest
// announces its new address (arp_notify) as its link comes up, so the
// daemon's next connection does not wait for an ARP retry.
const reidentifyScript = `set -eu
seed=$1 mid=$2 old=$3 new=$4 pub=$5 keylen=$6 mac=$7 addr=$8 gw=$9
(umask 077; head -c "$keylen" > /etc/ssh/ssh_host_ed25519_key.new)
if [ "$(wc -c < /etc/ssh/ssh_host_ed25519_key.new)" -ne "$keylen" ]; then echo "the host key was cut short" >&2; exit 1; fi
perl -e 'open(my $f, "+<", "/dev/urandom") or die "open /dev/urandom: $!\n"; my $b = pack("H*", $ARGV[0]); ioctl($f, 0x40085203, pack("ii", length($b) * 8, length($b)) . $b) or die "RNDADDENTROPY: $!\n"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n";' "$seed"
rm -f /var/lib/systemd/random-seed
printf '%s\n' "$mid" > /etc/machine-id.new && mv /etc/machine-id.new /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then printf '%s\n' "$mid" > /var/lib/dbus/machine-id; fi
(umask 077; printf '%s\n' "$pub" > /etc/ssh/ssh_host_ed25519_key.pub.new)
chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub.new
mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key
mv /etc/ssh/ssh_host_ed25519_key.pub.new /etc/ssh/ssh_host_ed25519_key.pub
hostname "$new"
printf '%s\n' "$new" > /etc/hostname
if [ -f /etc/hosts ]; then sed -i "s/\(^\|[[:space:]]\)$old\([[:space:]]\|\$\)/\1$new\2/g" /etc/hosts; fi
if [ -f /run/sshd.pid ]; then kill -HUP "$(cat /run/sshd.pid)" 2>/dev/null || true; fi
sync
` + guest.ClockStep + `
setsid -f sh -c 'sleep 0.2; echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify 2>/dev/null || :; ip link set dev eth0 down; ip link set dev eth0 address "$1"; ip addr flush dev eth0; ip addr add "$2" dev eth0; ip link set dev eth0 up; ip route replace default via "$3" dev eth0' sh "$mac" "$addr" "$gw" </dev/null >/dev/null 2>&1
`

// reidentifyArgs are reidentifyScript's arguments for vm; seed and mid
// are the host's random bytes, keyLen the length of the private host
// key sent on its standard input.
func reidentifyArgs(cfg model.DaemonConfig, fork forkIdentity, vm model.VMRecord, seed, mid []byte, keyLen int) ([]string, error) {
	prefix, err := network.Subnet(cfg.BridgeIP, cfg.CIDR)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil || !prefix.Contains(ip) {
		return nil, fmt.Errorf("guest IP %q is not in %s", vm.Runtime.GuestIP, prefix)
	}
	if _, err := net.ParseMAC(vm.Runtime.GuestMAC); err != nil {
		return nil, fmt.Errorf("guest MAC %q: %w", vm.Runtime.GuestMAC, err)
	}
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
	return []string{hex.EncodeToString(seed), hex.EncodeToString(mid), fork.srcName, vm.Name, pub, strconv.Itoa(keyLen),
		vm.Runtime.GuestMAC, netip.PrefixFrom(ip, prefix.Bits()).String(), cfg.BridgeIP}, nil
}

// reidentifyCommand is the command line running reidentifyScript with
// args (reidentifyArgs).
func reidentifyCommand(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = guest.Quote(a)
	}
	return "sh -c " + guest.Quote(reidentifyScript) + " sh " + strings.Join(q, " ")
}

// reidentify makes a restored child its own machine, reaching it only
// through its quarantined tap: first at the source's address with the
// source's host key (only the child is on that link), where one session
// changes its identity, clock and address; then at its own address with
// its own key, which proves the change took. Over that second
// connection, still before the child is admitted to the bridge, its
// workspace branches are renamed and, for a warm create, the first
// boot's setup (file sync, the user's keys) is done: the admission then
// needs no SSH connection of its own (waitAdmitted). How long each part
// took is logged.
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
	conn, err := dialVia(ctx, s.log, tap, old, signer, s.fork.srcHostKey)
	if err != nil {
		return fmt.Errorf("reach the restored child at %s through %s: %w", old, tap, err)
	}
	mark("reached")
	seed := make([]byte, 64)
	mid := make([]byte, 16)
	rand.Read(seed)
	rand.Read(mid)
	priv, err := os.ReadFile(hostKeyPath(s.vm.Runtime.VMDir))
	if err != nil {
		conn.Close()
		return fmt.Errorf("host key: %w", err)
	}
	args, err := reidentifyArgs(b.cfg, *s.fork, s.vm, seed, mid, len(priv))
	if err != nil {
		conn.Close()
		return err
	}
	err = conn.RunSettingClock(ctx, reidentifyCommand(args), priv, time.Now)
	conn.Close()
	if err != nil {
		return fmt.Errorf("re-identify the child: %w", err)
	}
	mark("identity_clock_address")
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("%s: restored, reseeded and re-identified %dms after its VMM started", s.vm.Name, time.Since(start).Milliseconds())})
	own := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	conn, err = dialVia(ctx, s.log, tap, own, signer, s.vm.Runtime.SSHHostKey)
	if err != nil {
		return fmt.Errorf("the child did not answer at its own address %s with its own key: %w", own, err)
	}
	defer conn.Close()
	mark("own_address")
	out, err := conn.Output(ctx, "hostname")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(out); got != s.vm.Name {
		return fmt.Errorf("the child calls itself %q, not %q", got, s.vm.Name)
	}
	mark("hostname_checked")
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
	s.log.Info("fork child re-identified", append(laps, "total_ms", time.Since(start).Milliseconds())...)
	return nil
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
// reached: a TCP connection to its SSH port at its own address. Its
// identity was proven over the quarantined tap a moment before (its own
// key at its own address, reidentify), and that tap alone carries its
// address on the bridge, so no SSH handshake is made here; every later
// connection to it still accepts only its own host key (guest.Dial).
func (b vmmBooter) waitAdmitted(ctx context.Context, s *startRun) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	addr := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	var d net.Dialer
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := d.DialContext(actx, "tcp", addr)
		acancel()
		if err == nil {
			c.Close()
			s.log.Info("fork child admitted", "answered_ms", time.Since(start).Milliseconds())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the child on the bridge: no answer at %s: %w", addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
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
