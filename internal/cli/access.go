package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/fsutil"
	"banger/internal/model"
	"banger/internal/termsafe"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func (a *App) accessCommands() []*cobra.Command {
	return []*cobra.Command{a.sshCommand(), a.execCommand(), a.cpCommand(), a.logsCommand(), a.sshConfigCommand(), a.sshProxyCommand()}
}

// sshTarget is what ssh needs to reach one VM through the daemon.
type sshTarget struct {
	vm         api.VMView
	key        string
	knownHosts string
	self       string
}

// prepareSSH looks the VM up, makes sure the user's banger key exists, and
// records the VM's host key (learned by the daemon) in banger's
// known_hosts so ssh can verify it.
func (a *App) prepareSSH(ctx context.Context, name string) (*sshTarget, error) {
	vm, err := a.api().GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if vm, err = a.wake(ctx, vm); err != nil {
		return nil, err
	}
	if vm.State != model.VMStateRunning {
		return nil, model.Errorf(model.ECONFLICT, "vm %s is %s; start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	t, err := a.sshFiles()
	if err != nil {
		return nil, err
	}
	t.vm = vm
	if err := updateKnownHosts(t.knownHosts, hostKeyAlias(vm), vm.Runtime.SSHHostKey); err != nil {
		return nil, err
	}
	return t, nil
}

// sshFiles returns the files every ssh invocation needs: the user's banger
// key (made on first use), this binary (for the ProxyCommand) and banger's
// known_hosts.
func (a *App) sshFiles() (*sshTarget, error) {
	key, err := a.bangerKey()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := a.configDir()
	if err != nil {
		return nil, err
	}
	return &sshTarget{key: key, knownHosts: filepath.Join(dir, "known_hosts"), self: self}, nil
}

func hostKeyAlias(vm api.VMView) string { return "banger-" + model.ShortID(vm.ID) }

// updateKnownHosts sets alias's line in a known_hosts file to key.
func updateKnownHosts(path, alias, key string) error {
	if key == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	want := alias + " " + strings.TrimSpace(key)
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l == "" || strings.HasPrefix(l, alias+" ") {
			continue
		}
		lines = append(lines, l)
	}
	lines = append(lines, want)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// sshOptions are the -o options that route ssh through the daemon.
func (a *App) sshOptions(t *sshTarget) []string {
	strict := "yes"
	if t.vm.Runtime.SSHHostKey == "" {
		strict = "accept-new"
	}
	proxy := fmt.Sprintf("%s --socket %s ssh-proxy %s", shellQuote(t.self), shellQuote(a.api().Socket()), t.vm.Name)
	return []string{
		"-o", "ProxyCommand=" + proxy,
		"-o", "HostKeyAlias=" + hostKeyAlias(t.vm),
		"-o", "UserKnownHostsFile=" + t.knownHosts,
		"-o", "StrictHostKeyChecking=" + strict,
		"-o", "IdentityFile=" + t.key,
		"-o", "User=root",
		"-o", "LogLevel=ERROR",
		"-o", "ServerAliveInterval=30",
	}
}

// runSSH runs ssh (or scp) with the terminal attached and returns its exit
// status as an exitError when non-zero.
func (a *App) runSSH(ctx context.Context, bin string, args []string) error {
	path, err := exec.LookPath(bin)
	if err != nil {
		return model.Errorf(model.EUNAVAILABLE, "%s not found; install openssh-client", bin)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = a.Stdin
	cmd.Stdout = a.Stdout
	cmd.Stderr = a.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &exitError{code: ee.ExitCode()}
		}
		return err
	}
	return nil
}

func (a *App) isTerminal() bool {
	f, ok := a.Stdin.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *App) sshCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Open a shell in a VM (or run a command) with the system ssh",
		Long: `Open an interactive shell in a VM with the system ssh, reaching the guest
through bangerd (ssh's ProxyCommand is ` + "`banger ssh-proxy`" + `), so it works from any
network namespace. With a command after --, run it instead.`,
		Example:           "  banger ssh dev\n  banger ssh dev -- uptime",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := a.prepareSSH(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			sshArgs := a.sshOptions(t)
			if len(args) > 1 || a.isTerminal() {
				sshArgs = append(sshArgs, "-t")
			}
			sshArgs = append(sshArgs, t.vm.Name)
			if session, ok := sessionCommand(t.vm, args[1:]); ok {
				sshArgs = append(sshArgs, "--", session)
			} else if len(args) > 1 {
				sshArgs = append(sshArgs, "--", remoteCommand(args[1:]))
			}
			return a.runSSH(cmd.Context(), "ssh", sshArgs)
		},
	}
	return cmd
}

func (a *App) execCommand() *cobra.Command {
	var tty bool
	cmd := &cobra.Command{
		Use:   "exec NAME -- COMMAND [ARGS...]",
		Short: "Run a command in a VM; stdin, stdout and stderr are streamed and its exit status is banger's",
		Example: `  banger exec dev -- uname -a
  echo hi | banger exec dev -- cat
  banger exec dev -- sh -c 'cd /root/app && make test'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("exec needs a VM NAME and a COMMAND (usage: %s)", cmd.UseLine())
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := a.prepareSSH(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			sshArgs := a.sshOptions(t)
			if tty {
				sshArgs = append(sshArgs, "-t")
			} else {
				sshArgs = append(sshArgs, "-T")
			}
			remote := remoteCommand(args[1:])
			if session, ok := sessionCommand(t.vm, args[1:]); ok {
				remote = session
			}
			sshArgs = append(sshArgs, t.vm.Name, "--", remote)
			return a.runSSH(cmd.Context(), "ssh", sshArgs)
		},
	}
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "allocate a terminal")
	return cmd
}

func (a *App) cpCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between the host and a VM (NAME:PATH names the VM side)",
		Long: `Copy files or directories (recursively) between the host and a VM. Exactly one
side is NAME:PATH; a relative guest path is relative to /root.`,
		Example: `  banger cp ./notes.txt dev:/root/
  banger cp dev:/root/project/out ./out`,
		Args: exactArgs(2, "SRC and DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := args[0], args[1]
			srcVM, srcPath, srcRemote := splitRemote(src)
			dstVM, dstPath, dstRemote := splitRemote(dst)
			if srcRemote == dstRemote {
				return usagef("cp needs exactly one side written as NAME:PATH (got %q and %q)", src, dst)
			}
			name := srcVM
			if dstRemote {
				name = dstVM
			}
			t, err := a.prepareSSH(cmd.Context(), name)
			if err != nil {
				return err
			}
			scpArgs := append(a.sshOptions(t), "-r", "-p", "-q")
			if srcRemote {
				scpArgs = append(scpArgs, t.vm.Name+":"+srcPath, dstPath)
			} else {
				scpArgs = append(scpArgs, srcPath, t.vm.Name+":"+dstPath)
			}
			return a.runSSH(cmd.Context(), "scp", scpArgs)
		},
	}
	return cmd
}

// splitRemote splits NAME:PATH. A path with a slash before the colon, or
// starting with . or /, is local.
func splitRemote(s string) (vm, path string, remote bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsAny(s[:i], "/.") {
		return "", s, false
	}
	path = s[i+1:]
	if path == "" {
		path = "."
	}
	return s[:i], path, true
}

func (a *App) logsCommand() *cobra.Command {
	var (
		opts api.LogsOptions
		raw  bool
	)
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Show a VM's serial console",
		Long: `Show a VM's serial console. The console is written by the guest, so terminal
escape sequences and control characters in it are shown as visible escapes
(\x1b, \r); --raw prints the bytes as they are.`,
		Args:              exactArgs(1, "a VM NAME"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return guestText(a.Stdout, raw, termsafe.Options{}, func(w io.Writer) error {
				return a.api().Logs(cmd.Context(), args[0], opts, w)
			})
		},
	}
	cmd.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVarP(&opts.Tail, "tail", "n", 0, "start with the last N lines")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the console's bytes as they are, escape sequences included")
	return cmd
}

// guestText runs print with a writer to w that shows text from a guest
// safely on a terminal (termsafe), or passes its bytes as they are when
// raw is set.
func guestText(w io.Writer, raw bool, opts termsafe.Options, print func(io.Writer) error) error {
	if raw {
		return print(w)
	}
	sw := termsafe.NewWriter(w, opts)
	err := print(sw)
	if ferr := sw.Flush(); err == nil {
		err = ferr
	}
	return err
}

func (a *App) sshConfigCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ssh-config",
		Short: "Print an ssh_config with one Host per VM, for `Include` in ~/.ssh/config",
		Example: `  banger ssh-config -o ~/.ssh/banger.conf
  echo 'Include ~/.ssh/banger.conf' >> ~/.ssh/config
  ssh dev`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vms, err := a.api().ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			files, err := a.sshFiles()
			if err != nil {
				return err
			}
			key, self, kh := files.key, files.self, files.knownHosts
			var b strings.Builder
			fmt.Fprintf(&b, "# Written by `banger ssh-config`; VMs reach their guests through bangerd.\n")
			for _, v := range vms {
				if err := updateKnownHosts(kh, hostKeyAlias(v), v.Runtime.SSHHostKey); err != nil {
					return err
				}
				hosts := v.Name
				if v.Runtime.DNSName != "" && v.Runtime.DNSName != v.Name {
					hosts += " " + v.Runtime.DNSName
				}
				fmt.Fprintf(&b, "\nHost %s\n", hosts)
				fmt.Fprintf(&b, "  HostName %s\n", v.Runtime.GuestIP)
				fmt.Fprintf(&b, "  User root\n")
				fmt.Fprintf(&b, "  ProxyCommand %s --socket %s ssh-proxy %s\n", shellQuote(self), shellQuote(a.api().Socket()), v.Name)
				fmt.Fprintf(&b, "  HostKeyAlias %s\n", hostKeyAlias(v))
				fmt.Fprintf(&b, "  UserKnownHostsFile %s\n", kh)
				fmt.Fprintf(&b, "  IdentityFile %s\n", key)
			}
			if output == "" || output == "-" {
				_, err := io.WriteString(a.Stdout, b.String())
				return err
			}
			return os.WriteFile(output, []byte(b.String()), 0o600)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file instead of stdout")
	return cmd
}

func (a *App) sshProxyCommand() *cobra.Command {
	var port int
	cmd := &cobra.Command{
		Use:    "ssh-proxy NAME",
		Short:  "Relay stdin/stdout to a VM's SSH port through bangerd (ssh ProxyCommand)",
		Hidden: true,
		Args:   exactArgs(1, "a VM NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := a.api().Connect(cmd.Context(), args[0], port)
			if err != nil {
				return err
			}
			defer conn.Close()
			done := make(chan struct{}, 2)
			go func() {
				io.Copy(conn, a.Stdin)
				if cw, ok := conn.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				done <- struct{}{}
			}()
			go func() {
				io.Copy(a.Stdout, conn)
				done <- struct{}{}
			}()
			// The guest closing its side ends the session.
			<-done
			return nil
		},
	}
	cmd.Flags().IntVar(&port, "port", 22, "guest TCP port")
	return cmd
}

// remoteCommand quotes args into one shell command line for ssh.
func remoteCommand(args []string) string {
	if len(args) == 1 {
		// A single argument is taken as a shell command line, as ssh does.
		return args[0]
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r == '/' || r == ':' || r == '=' || r == '@' || r == ',' || r == '+' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
