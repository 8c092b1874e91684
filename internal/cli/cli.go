// Package cli is the banger command line: cobra commands that talk to
// bangerd through internal/api and print tables, JSON or progress.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/model"
	"banger/internal/termsafe"

	"github.com/spf13/cobra"
)

// EnvSocket names the daemon socket for the CLI.
const EnvSocket = "BANGER_SOCKET"

// App is one run of the CLI. Tests build one with their own streams.
type App struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string

	socket string
	client *api.Client
}

// exitError carries a specific exit status (for `banger exec`, doctor).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError marks bad command-line use (exit status 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// Main runs the CLI with args and returns the exit status.
func Main(args []string) int {
	app := &App{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return app.Run(ctx, args)
}

// Run runs one command line.
func (a *App) Run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.Stdin)
	root.SetOut(a.Stdout)
	root.SetErr(a.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	// An error may quote a guest (a boot failure's console lines, a
	// capture's stderr): its control characters are shown, not obeyed.
	fmt.Fprintf(a.Stderr, "banger: %s\n", termsafe.String(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	if model.ErrorCode(err) == model.EINVALID {
		return 2
	}
	return 1
}

func (a *App) getenv(k string) string {
	if a.Getenv != nil {
		return a.Getenv(k)
	}
	return os.Getenv(k)
}

// api returns the daemon client.
func (a *App) api() *api.Client {
	if a.client == nil {
		sock := a.socket
		if sock == "" {
			sock = a.getenv(EnvSocket)
		}
		if sock == "" {
			sock = config.DefaultSocketPath
		}
		a.client = api.NewClient(sock)
	}
	return a.client
}

func (a *App) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "Throwaway developer sandboxes: Firecracker microVMs on this host",
		Long: `banger gives you disposable Linux VMs for development: each has its own
copy-on-write system disk, a persistent /root, an IP and a DNS name, and SSH.

Get started:
  banger doctor                 check this host
  banger kernel build           build a Firecracker-ready kernel (once)
  banger image build            build the default Debian image (once)
  banger vm create dev          create and boot a VM named dev
  banger ssh dev                log in
  banger vm rm --force dev      throw it away

banger talks to bangerd over ` + config.DefaultSocketPath + ` (set --socket or
$` + EnvSocket + ` to use another).`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.PersistentFlags().StringVar(&a.socket, "socket", "", "bangerd socket (default $"+EnvSocket+" or "+config.DefaultSocketPath+")")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usagef("%v (see `%s --help`)", err, c.CommandPath())
	})
	root.AddCommand(
		a.versionCommand(),
		a.doctorCommand(),
		a.imageCommand(),
		a.kernelCommand(),
		a.vmCommand(),
		a.topCommand(),
		a.workspaceCommand(),
	)
	root.AddCommand(a.accessCommands()...)
	root.AddCommand(a.portForwardCommand(), a.mcpCommand())
	return root
}

// group makes cmd a command group: run bare it prints its help; an unknown
// subcommand is a usage error rather than help with exit status 0.
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q for %q (see `%s --help`)", args[0], c.CommandPath(), c.CommandPath())
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	return cmd
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// exactArgs is cobra.ExactArgs with a message that names what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s needs %s (usage: %s)", cmd.CommandPath(), what, cmd.UseLine())
		}
		return nil
	}
}
