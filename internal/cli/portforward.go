package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/spf13/cobra"
)

// forwardSpec is one [LOCAL:]REMOTE argument of port-forward: a local TCP
// port (0: any free one) forwarded to a guest port.
type forwardSpec struct {
	Local  int
	Remote int
}

// parseForwardSpec reads REMOTE (the same port locally), LOCAL:REMOTE, or
// :REMOTE (any free local port).
func parseForwardSpec(s string) (forwardSpec, error) {
	port := func(what, v string, zeroOK bool) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 || (n == 0 && !zeroOK) || strings.TrimSpace(v) != v || strings.HasPrefix(v, "+") {
			allowed := "1-65535"
			if zeroOK {
				allowed = "0-65535 (0: any free port)"
			}
			return 0, usagef("port-forward %q: %s port %q must be %s; write REMOTE, LOCAL:REMOTE or :REMOTE", s, what, v, allowed)
		}
		return n, nil
	}
	local, remote, ok := strings.Cut(s, ":")
	if !ok {
		r, err := port("remote", s, false)
		return forwardSpec{Local: r, Remote: r}, err
	}
	r, err := port("remote", remote, false)
	if err != nil {
		return forwardSpec{}, err
	}
	if local == "" {
		return forwardSpec{Local: 0, Remote: r}, nil
	}
	l, err := port("local", local, true)
	return forwardSpec{Local: l, Remote: r}, err
}

// forwardBinding is one forward as it is listening (`port-forward
// --json` prints them).
type forwardBinding struct {
	Local      string `json:"local"`
	RemotePort int    `json:"remote_port"`
}

// forwardOutput is `port-forward --json`'s one document.
type forwardOutput struct {
	VM       string           `json:"vm"`
	Forwards []forwardBinding `json:"forwards"`
}

// portForward forwards local TCP ports on address to a VM's ports through
// the daemon (a connect stream per connection, so it works whatever
// network namespace the daemon runs in) until ctx ends. It holds the VM
// in use meanwhile; when the daemon ends the hold (the VM stopped) it
// returns an error. ready receives the bindings once every port listens;
// problems with single connections go to logf and do not stop the
// others.
func portForward(ctx context.Context, c *api.Client, ref, address string, specs []forwardSpec, ready func(forwardOutput) error, logf func(string, ...any)) error {
	vm, err := c.GetVM(ctx, ref)
	if err != nil {
		return err
	}
	// The hold resumes a suspended VM.
	if vm.State != model.VMStateRunning && vm.State != model.VMStateSuspended {
		return model.Errorf(model.ECONFLICT, "vm %s is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	hold, err := c.Hold(ctx, vm.Name)
	if err != nil {
		return err
	}
	defer hold.Close()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	out := forwardOutput{VM: vm.Name}
	for _, sp := range specs {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(address, strconv.Itoa(sp.Local)))
		if err != nil {
			return model.Errorf(model.EUNAVAILABLE, "port-forward: %v (choose another local port, or :%d for any free one)", err, sp.Remote)
		}
		lns = append(lns, ln)
		out.Forwards = append(out.Forwards, forwardBinding{Local: ln.Addr().String(), RemotePort: sp.Remote})
	}
	if err := ready(out); err != nil {
		return err
	}

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	track := func(cs ...net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if fctx.Err() != nil {
			return false
		}
		for _, c := range cs {
			conns[c] = true
		}
		return true
	}
	untrack := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			delete(conns, c)
			c.Close()
		}
	}
	for i, ln := range lns {
		b := out.Forwards[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				local, err := ln.Accept()
				if err != nil {
					return
				}
				if !track(local) {
					local.Close()
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					guest, err := c.Connect(fctx, vm.Name, b.RemotePort)
					if err != nil {
						if fctx.Err() == nil {
							logf("port-forward %s -> %s:%d: %v", b.Local, vm.Name, b.RemotePort, err)
						}
						untrack(local)
						return
					}
					if !track(guest) {
						guest.Close()
						untrack(local)
						return
					}
					relay(local, guest)
					untrack(local, guest)
				}()
			}
		}()
	}
	var ended error
	select {
	case <-ctx.Done():
	case <-hold.Done():
		ended = model.Errorf(model.ECONFLICT, "port-forward: bangerd ended the forward: vm %s is no longer running (or the daemon stopped)", vm.Name)
	}
	cancel()
	for _, ln := range lns {
		ln.Close()
	}
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return ended
}

// relay copies both ways between two connections until both directions
// end, passing each side's end of data on as a half-close.
func relay(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	one := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			cw.CloseWrite()
			return
		}
		// A broken side ends both.
		a.Close()
		b.Close()
	}
	go one(a, b)
	go one(b, a)
	wg.Wait()
}

func (a *App) portForwardCommand() *cobra.Command {
	var (
		address string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "port-forward NAME [LOCAL:]REMOTE...",
		Short: "Forward local TCP ports to a VM's ports until Ctrl-C",
		Long: `Forward local TCP ports to ports of a VM until interrupted (Ctrl-C); a
suspended VM is resumed first.

Each argument is REMOTE (the same port number locally), LOCAL:REMOTE, or
:REMOTE (any free local port; the one chosen is printed). Connections go
through bangerd's socket, so this works whatever network namespace the
daemon runs in; any number may be open at once. The VM counts as in use while
the forward runs: no idle stop or suspend happens meanwhile. The forward ends
by itself when the VM stops or is suspended.`,
		Example: `  banger port-forward dev 8080              # localhost:8080 -> dev:8080
  banger port-forward dev 3000:80 :5432     # localhost:3000 -> dev:80, a free port -> dev:5432
  banger port-forward dev :8080 --json      # prints {"vm": ..., "forwards": [{"local": ..., "remote_port": ...}]}`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("port-forward needs a VM NAME and at least one [LOCAL:]REMOTE port (usage: %s)", cmd.UseLine())
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var specs []forwardSpec
			for _, s := range args[1:] {
				sp, err := parseForwardSpec(s)
				if err != nil {
					return err
				}
				specs = append(specs, sp)
			}
			if ip := net.ParseIP(address); ip == nil && address != "localhost" {
				return usagef("--address %q: must be an IP address (127.0.0.1, ::1, 0.0.0.0) or localhost", address)
			}
			var mu sync.Mutex
			logf := func(format string, args ...any) {
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(a.Stderr, "banger: "+format+"\n", args...)
			}
			ready := func(out forwardOutput) error {
				if asJSON {
					return printJSON(a.Stdout, out)
				}
				for _, f := range out.Forwards {
					fmt.Fprintf(a.Stdout, "forwarding %s -> %s:%d\n", f.Local, out.VM, f.RemotePort)
				}
				fmt.Fprintln(a.Stderr, "press Ctrl-C to stop")
				return nil
			}
			err := portForward(cmd.Context(), a.api(), args[0], address, specs, ready, logf)
			if err != nil && errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "local address to listen on")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the bound addresses as JSON once listening")
	return cmd
}
