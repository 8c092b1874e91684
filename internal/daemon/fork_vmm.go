package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
	if err := d.forkWorkspaces(ctx, s); err != nil {
		return err
	}
	if err := d.boot.waitAdmitted(ctx, s); err != nil {
		return err
	}
	s.vm.Runtime.ForkOf = ""
	s.vm.UpdatedAt = model.Now()
	return d.store.UpdateVM(ctx, s.vm)
}

// reidentifyScript makes a restored copy of another VM its own machine.
// It runs as the daemon's first command in the child, before anything
// else the daemon does there. Its arguments are the host's random bytes
// (hex), the new machine-id, the old and new hostnames, the new MAC,
// address (CIDR) and gateway; its standard input is the new SSH host
// key (private, OpenSSH PEM), whose public half follows on the command
// line. The kernel RNG gets the host's bytes with RNDADDENTROPY and is
// reseeded at once with RNDRESEEDCRNG (from perl: no C compiler in
// guests), so no two children draw the same numbers from here on. sshd
// is told (SIGHUP) to load the new key. The network change is
// readdressScript's, run last.
const reidentifyScript = `set -eu
seed=$1 mid=$2 old=$3 new=$4 pub=$5
perl -e 'open(my $f, "+<", "/dev/urandom") or die "open /dev/urandom: $!\n"; my $b = pack("H*", $ARGV[0]); ioctl($f, 0x40085203, pack("ii", length($b) * 8, length($b)) . $b) or die "RNDADDENTROPY: $!\n"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n";' "$seed"
rm -f /var/lib/systemd/random-seed
printf '%s\n' "$mid" > /etc/machine-id.new && mv /etc/machine-id.new /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then printf '%s\n' "$mid" > /var/lib/dbus/machine-id; fi
umask 077
cat > /etc/ssh/ssh_host_ed25519_key.new
printf '%s\n' "$pub" > /etc/ssh/ssh_host_ed25519_key.pub.new
chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub.new
mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key
mv /etc/ssh/ssh_host_ed25519_key.pub.new /etc/ssh/ssh_host_ed25519_key.pub
hostname "$new"
printf '%s\n' "$new" > /etc/hostname
if [ -f /etc/hosts ]; then sed -i "s/\(^\|[[:space:]]\)$old\([[:space:]]\|\$\)/\1$new\2/g" /etc/hosts; fi
if [ -f /run/sshd.pid ]; then kill -HUP "$(cat /run/sshd.pid)" 2>/dev/null || true; fi
sync
`

// readdressScript gives the guest its MAC, address (CIDR) and default
// route ($1, $2, $3) from a detached shell, a moment after the session
// that started it has ended: it takes away the address that session
// runs over.
const readdressScript = `setsid -f sh -c 'sleep 0.2; ip link set dev eth0 down; ip link set dev eth0 address "$1"; ip addr flush dev eth0; ip addr add "$2" dev eth0; ip link set dev eth0 up; ip route replace default via "$3" dev eth0' sh "$1" "$2" "$3" </dev/null >/dev/null 2>&1`

// reidentifyArgs are reidentifyScript's arguments for vm; seed and mid
// are the host's random bytes.
func reidentifyArgs(cfg model.DaemonConfig, fork forkIdentity, vm model.VMRecord, seed, mid []byte) ([]string, error) {
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
	return []string{hex.EncodeToString(seed), hex.EncodeToString(mid), fork.srcName, vm.Name, pub,
		vm.Runtime.GuestMAC, netip.PrefixFrom(ip, prefix.Bits()).String(), cfg.BridgeIP}, nil
}

// reidentifyCommands are the command lines running the two scripts with
// args (reidentifyArgs).
func reidentifyCommands(args []string) (identity, readdress string) {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = guest.Quote(a)
	}
	return "sh -c " + guest.Quote(reidentifyScript) + " sh " + strings.Join(q[:5], " "),
		"sh -c " + guest.Quote(readdressScript) + " sh " + strings.Join(q[5:], " ")
}

// reidentify makes a restored child its own machine, reaching it only
// through its quarantined tap: first at the source's address with the
// source's host key (only the child is on that link), then at its own
// address with its own key, which proves the change took.
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
	tap := s.h.Tap
	old := net.JoinHostPort(s.fork.srcIP, "22")
	conn, err := dialVia(ctx, tap, old, signer, s.fork.srcHostKey)
	if err != nil {
		return fmt.Errorf("reach the restored child at %s through %s: %w", old, tap, err)
	}
	reached := time.Since(start)
	seed := make([]byte, 64)
	mid := make([]byte, 16)
	rand.Read(seed)
	rand.Read(mid)
	args, err := reidentifyArgs(b.cfg, *s.fork, s.vm, seed, mid)
	if err != nil {
		conn.Close()
		return err
	}
	priv, err := os.ReadFile(hostKeyPath(s.vm.Runtime.VMDir))
	if err != nil {
		conn.Close()
		return fmt.Errorf("host key: %w", err)
	}
	identity, readdress := reidentifyCommands(args)
	if err := conn.Run(ctx, identity, strings.NewReader(string(priv)), nil, nil); err != nil {
		conn.Close()
		return fmt.Errorf("re-identify the child: %w", err)
	}
	if err := conn.SetClock(ctx, time.Now); err != nil {
		conn.Close()
		return fmt.Errorf("set the child's clock: %w", err)
	}
	err = conn.Run(ctx, readdress, nil, nil, nil)
	conn.Close()
	if err != nil {
		return fmt.Errorf("re-address the child: %w", err)
	}
	s.progress(api.Progress{Step: "fork", Message: fmt.Sprintf("%s: restored, reseeded and re-identified %dms after its VMM started", s.vm.Name, time.Since(start).Milliseconds())})
	own := net.JoinHostPort(s.vm.Runtime.GuestIP, "22")
	conn, err = dialVia(ctx, tap, own, signer, s.vm.Runtime.SSHHostKey)
	if err != nil {
		return fmt.Errorf("the child did not answer at its own address %s with its own key: %w", own, err)
	}
	defer conn.Close()
	out, err := conn.Output(ctx, "hostname")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(out); got != s.vm.Name {
		return fmt.Errorf("the child calls itself %q, not %q", got, s.vm.Name)
	}
	s.log.Info("fork child re-identified", "reached_ms", reached.Milliseconds(), "total_ms", time.Since(start).Milliseconds())
	return nil
}

// dialVia dials addr through tap until it answers with hostKey or ctx
// ends.
func dialVia(ctx context.Context, tap, addr string, signer ssh.Signer, hostKey string) (*guest.Conn, error) {
	var last error
	for {
		conn, err := guest.DialVia(ctx, tap, network.QuarantineAddr, addr, signer, hostKey)
		if err == nil {
			return conn, nil
		}
		if errors.Is(err, guest.ErrNoHostKey) {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitAdmitted checks the child answers on the bridge, as every VM is
// reached, with its own key.
func (b vmmBooter) waitAdmitted(ctx context.Context, s *startRun) error {
	signer, err := guest.LoadSigner(b.cfg.SSHKeyPath)
	if err != nil {
		return model.Errorf(model.EUNAVAILABLE, "the daemon's SSH key: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := guest.WaitReady(ctx, net.JoinHostPort(s.vm.Runtime.GuestIP, "22"), signer, s.vm.Runtime.SSHHostKey, 50*time.Millisecond)
	if err != nil {
		return fmt.Errorf("the child on the bridge: %w", err)
	}
	defer conn.Close()
	for _, r := range s.renames {
		if _, err := guestOutput(ctx, conn, workspace.RenameBranchScript(r.guestPath, r.from, r.to)); err != nil {
			return fmt.Errorf("workspace %s: the child's branch %s: %w", r.guestPath, r.to, err)
		}
	}
	if s.fork.firstBoot {
		return b.firstBoot(ctx, conn, s.vm)
	}
	return nil
}

// branchRename is a workspace's work branch a child renames.
type branchRename struct{ guestPath, from, to string }

// forkWorkspaces gives the child the source's workspaces, each that
// ships work on its own branch banger/<child>, so that `workspace
// fetch` of the child writes refs/remotes/banger-<child>/... only. The
// guest's branches are renamed by waitAdmitted.
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
