package cli

import (
	"fmt"
	"io"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *App) imageWarmCommand() *cobra.Command {
	var (
		asJSON, quiet, drop bool
		vcpus               int
		memory              string
	)
	cmd := &cobra.Command{
		Use:   "warm NAME",
		Short: "Boot an image once and keep its snapshot, so VMs start from it in seconds",
		Long: `Boot the image once in a hidden VM, wait until it answers SSH, flush its
disks and keep its snapshot (memory, devices and disks) as the image's warm
state, under the image's dir in the daemon's state dir (root's alone). The
hidden VM is then removed: no VM, tap, address or process of it is left.

From then on ` + "`banger vm create`" + ` of this image restores a copy of the warm state
instead of booting, when the VM asks the vCPUs and memory it was made with
(and the default disk sizes): the copy becomes its own machine before anything
can reach it, as a fork's child does (its own IP, MAC, hostname, SSH host key,
machine-id, a reseeded RNG, the clock set), then gets your SSH keys and file
sync as a cold boot would. Any other VM boots cold; ` + "`vm create`" + ` says which it
did (` + "`vm inspect`" + `: "created from"), and ` + "`vm create --cold`" + ` always boots.

A warm state is never used once the daemon's SSH key or the image changes
(a rebuild, a new registration): ` + "`image inspect`" + ` says why; warm the image
again. Warming again replaces it; --rm drops it; ` + "`image rm`" + ` removes it with
the image.`,
		Example: `  banger image warm debian --vcpus 2 --memory 1G
  banger vm create dev --vcpus 2 --memory 1G     # restored from the warm state
  banger image inspect debian                    # warm state: valid, size, when made
  banger image warm debian --rm`,
		Args:              exactArgs(1, "an image NAME"),
		ValidArgsFunction: a.completeImages,
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			if drop {
				if f.Changed("vcpus") || f.Changed("memory") {
					return usagef("--rm takes no --vcpus or --memory")
				}
				if err := a.api().DropWarm(cmd.Context(), args[0]); err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.Stdout, struct{}{})
				}
				fmt.Fprintf(a.Stdout, "warm state of image %s removed\n", args[0])
				return nil
			}
			var req api.ImageWarmRequest
			if f.Changed("vcpus") {
				if err := model.ValidateVCPUCount(vcpus); err != nil {
					return usagef("--vcpus: %v", err)
				}
				req.VCPUCount = vcpus
			}
			if f.Changed("memory") {
				m, err := parseMemory(memory)
				if err != nil {
					return err
				}
				req.MemoryMiB = m
			}
			pp := &progressPrinter{w: a.Stderr, quiet: quiet || asJSON}
			w, err := a.api().WarmImage(cmd.Context(), args[0], req, pp.event)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, w)
			}
			fmt.Fprintf(a.Stdout, "image %s is warm: %s; `banger vm create --image %s --vcpus %d --memory %dM` starts from it\n", args[0], warmSummary(w), args[0], w.VCPUCount, w.MemoryMiB)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&vcpus, "vcpus", 0, "vCPUs of the warm state, 1-32 (default from [vm_defaults], else 2)")
	f.StringVar(&memory, "memory", "", "memory of the warm state, at least 128M (default from [vm_defaults], else 2G)")
	f.BoolVar(&drop, "rm", false, "drop the image's warm state instead")
	f.BoolVar(&asJSON, "json", false, "print the warm state as JSON")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

// warmSummary is one line about a warm state.
func warmSummary(w api.WarmState) string {
	return fmt.Sprintf("%d vCPUs, %s memory, disks %s + %s, %s on disk, made %s",
		w.VCPUCount, model.FormatSizeBytes(int64(w.MemoryMiB)<<20),
		model.FormatSizeBytes(w.SystemOverlaySizeByte), model.FormatSizeBytes(w.WorkDiskSizeBytes),
		humanBytes(w.SizeBytes), w.MadeAt.Local().Format("2006-01-02 15:04:05"))
}

// printWarm is `image inspect`'s warm state line.
func printWarm(w io.Writer, ws *api.WarmState) {
	switch {
	case ws == nil:
		fmt.Fprintf(w, "warm state:  none (`banger image warm` makes one)\n")
	case ws.Valid:
		fmt.Fprintf(w, "warm state:  valid: %s\n", warmSummary(*ws))
	default:
		fmt.Fprintf(w, "warm state:  INVALID, never used (%s): %s\n", ws.Invalid, warmSummary(*ws))
	}
}
