package cli

import (
	"fmt"

	"banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *App) vmForkCommand() *cobra.Command {
	var asJSON, quiet bool
	var count int
	cmd := &cobra.Command{
		Use:   "fork SRC [NEW...]",
		Short: "Make running copies of a running VM, each its own machine",
		Long: `Fork a running VM into children that carry on from the same moment: its
processes, files and workspaces, each child on its own system disk and /root.
SRC is paused only while its state is saved and its disks are copied (reflink
clones where the filesystem has them), then runs on with its connections.

Each child becomes its own machine before anything can reach it: its own IP,
MAC, hostname, DNS name, SSH host key and /etc/machine-id, a kernel RNG
reseeded with the host's random bytes, the clock set. Until then its network
reaches only the daemon. NAT, egress and idle settings are SRC's.

Name the children, or give --count N for SRC-1 ... SRC-N (the first free
numbers). With neither, one child SRC-1 is made.`,
		Example: `  banger vm fork dev try-a try-b
  banger vm fork dev --count 3`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 0 || count > model.MaxForkChildren {
				return usagef("--count %d: give 1 to %d", count, model.MaxForkChildren)
			}
			if count > 0 && len(args) > 1 && count != len(args)-1 {
				return usagef("give the children's names or --count, not both")
			}
			req := model.VMForkRequest{Names: args[1:], Count: count}
			pp := &progressPrinter{w: a.Stderr, quiet: quiet || asJSON}
			views, err := a.api().ForkVM(cmd.Context(), args[0], req, pp.event)
			if asJSON {
				if jerr := printJSON(a.Stdout, views); jerr != nil && err == nil {
					err = jerr
				}
			} else {
				for _, v := range views {
					fmt.Fprintf(a.Stdout, "vm %s is running (%s, %s), forked from %s\n", v.Name, v.Runtime.GuestIP, v.Runtime.DNSName, args[0])
				}
			}
			return err
		},
	}
	cmd.Flags().IntVarP(&count, "count", "n", 0, "make N children named SRC-1 ... SRC-N")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the children as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}
