package cli

import (
	"fmt"

	"banger/internal/api"
	"banger/internal/buildinfo"

	"github.com/spf13/cobra"
)

func (a *App) versionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the versions of this CLI and of the daemon (exit status 1 if the daemon does not answer)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := buildinfo.Info()
			daemon, err := a.api().Version(cmd.Context())
			out := struct {
				Client      api.VersionInfo  `json:"client"`
				Daemon      *api.VersionInfo `json:"daemon,omitempty"`
				DaemonError string           `json:"daemon_error,omitempty"`
			}{Client: client}
			if err == nil {
				out.Daemon = &daemon
			} else {
				out.DaemonError = err.Error()
			}
			if asJSON {
				if err := printJSON(a.Stdout, out); err != nil {
					return err
				}
				if out.Daemon == nil {
					return &exitError{code: 1}
				}
				return nil
			}
			fmt.Fprintf(a.Stdout, "client: banger %s (%s)\n", client.Version, client.GoVersion)
			if err != nil {
				// Exit 1 so scripts can wait for the daemon with
				// `until banger version; do sleep 0.1; done`.
				fmt.Fprintf(a.Stdout, "daemon: unreachable: %v\n", err)
				return &exitError{code: 1}
			}
			fmt.Fprintf(a.Stdout, "daemon: bangerd %s (%s)\n", daemon.Version, daemon.GoVersion)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
